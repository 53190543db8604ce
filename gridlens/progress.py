"""Progress of a command through its stages (loading the model, each computation, the
figures): a tqdm bar on stderr, so that a command is never silent for long even where one stage
is a single call that cannot report on itself. Shown on a terminal only, like tqdm's
`disable=None`, so that logs and captured output hold just the results."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO


class Stages:
    """`stage = Stages("direct", 4)`, then `with stage("logit lens"): ...` for each stage."""

    def __init__(self, desc: str, total: int, file: TextIO | None = None):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="stage", file=file, disable=None, leave=False)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.bar.set_postfix_str(name)
        try:
            yield
        except BaseException:
            self.bar.close()  # clear the bar before the error's one line
            raise
        self.bar.update()
        if self.bar.n >= self.bar.total:
            self.bar.close()
