"""Algorithmic tasks with known high-level algorithms (the InterpBench-style ground truth).

Every task has a token vocabulary (``BOS`` = 0, ``PAD`` = 1, then its own tokens), a context of
``n_ctx`` positions (``BOS`` then ``n_ctx - 1`` content tokens), a seeded vectorised dataset
generator, and a high-level model (:class:`HighLevelModel`): a small program whose named
intermediate variables are computed per position, can be interchanged between inputs, and all
feed the output. Labels are per position; position 0 (``BOS``) carries no label.

The four tasks (after Anders & Garriga-Alonso 2024):

- ``parenthesis``: "balanced so far": elevation (running count of "(" minus ")") -> ``below``
  (elevation < 0 here) -> ``dipped`` (elevation was below zero somewhere so far) ->
  ``balanced`` = elevation == 0 and not dipped. Dataset: 25% each of balanced strings,
  horizon-failing (ends at 0 but dips), count-failing (never dips, ends above 0) and
  both-failing strings.
- ``left_greater``: elevation -> ``greater`` = more "(" than ")" so far. Uniform random strings.
- ``duplicate_remover``: ``prev`` (previous token) -> ``is_dup`` -> ``out`` (PAD if the token
  equals the previous one, else the token). Uniform random strings over a, b, c.
- ``unique_extractor``: ``seen`` (set of tokens seen before, as a 3-bit mask) -> ``is_repeat``
  -> ``out`` (PAD if already seen, else the token).

Four more, after the RASP programs behind InterpBench (hist, reverse, sort) and a modular sum; all
are causal, so a task that needs a whole input reads the first half and answers in the second:

- ``histogram``: ``count`` (occurrences of this token so far, itself included) -> ``out``
  (1, 2, 3 or 4+). Uniform strings over a, b, c.
- ``reversal``: ``mirror`` (the token at the mirrored position ``n - p`` when that is earlier,
  else none) -> ``out`` (a copy of it). Uniform strings over a, b, c.
- ``sort``: ``n_a``, ``n_ab`` (how many of the first half's tokens are a, and a or b) -> ``out``:
  rank k of the second half gets the k-th smallest token of the first half (none elsewhere).
- ``modular_sum``: ``prev`` (the previous digit, 0 after BOS) -> ``out`` = (digit + prev) mod 3.
  Uniform strings over 0, 1, 2.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from gridlens.errors import ConfigError, GridlensError, unknown_name

BOS, PAD = 0, 1


@dataclass(frozen=True)
class Variable:
    """One named intermediate (or output) variable of a high-level model.

    ``fn(values)`` receives a dict holding ``tokens`` [batch, pos] (already mapped into the
    task's vocabulary) and the values of ``parents``; it returns a long tensor [batch, pos] with
    values in ``range(n_values)``. ``value_names`` label the values in figures.
    """

    name: str
    parents: tuple[str, ...]
    fn: Callable[[dict[str, torch.Tensor]], torch.Tensor]
    n_values: int
    value_names: tuple[str, ...] = ()

    def value_name(self, v: int) -> str:
        return self.value_names[v] if v < len(self.value_names) else str(v)


class HighLevelModel:
    """A DAG of :class:`Variable` s in topological order; the ``output`` variable is the label.

    Construction checks that parents exist and come first, and that every variable feeds the
    output (a variable that never reaches the output cannot be tested by interchange).
    """

    def __init__(self, name: str, variables: Sequence[Variable], output: str, n_classes: int):
        self.name = name
        self.variables = list(variables)
        self.output = output
        self.n_classes = n_classes
        names = [v.name for v in self.variables]
        if len(set(names)) != len(names):
            raise ConfigError(f"high-level model {name!r}: duplicate variable names in {names}")
        if output not in names:
            raise unknown_name(f"output variable of high-level model {name!r}", output, names)
        seen: set[str] = {"tokens"}
        for v in self.variables:
            for p in v.parents:
                if p not in seen:
                    raise ConfigError(
                        f"high-level model {name!r}: variable {v.name!r} reads {p!r}, which is "
                        "not the input 'tokens' or an earlier variable"
                    )
            seen.add(v.name)
        # every variable must reach the output
        children: dict[str, set[str]] = {n: set() for n in names}
        for v in self.variables:
            for p in v.parents:
                if p in children:
                    children[p].add(v.name)
        reaches = {output}
        for v in reversed(self.variables):
            if children[v.name] & reaches:
                reaches.add(v.name)
        dead = [n for n in names if n not in reaches]
        if dead:
            raise ConfigError(
                f"high-level model {name!r}: variable(s) {dead} never feed the output {output!r}"
            )
        self.by_name = {v.name: v for v in self.variables}

    @property
    def variable_names(self) -> list[str]:
        return [v.name for v in self.variables]

    def run(
        self,
        tokens: torch.Tensor,
        patches: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> dict[str, torch.Tensor]:
        """All variables on ``tokens`` [batch, pos]. ``patches[name] = (mask [batch], values
        [batch, pos])`` replaces the variable's value where ``mask`` is true (an interchange
        intervention when ``values`` were computed on the source inputs); downstream variables
        are recomputed from the patched value."""
        values: dict[str, torch.Tensor] = {"tokens": tokens}
        patches = patches or {}
        for name in patches:
            if name not in self.by_name:
                raise unknown_name(f"variable of {self.name!r}", name, self.variable_names)
        for v in self.variables:
            out = v.fn({p: values[p] for p in ("tokens", *v.parents)})
            if v.name in patches:
                mask, patched = patches[v.name]
                out = torch.where(mask[:, None], patched, out)
            values[v.name] = out
        return values


@dataclass(frozen=True)
class Task:
    """A task: vocabulary, context, dataset generator, high-level model, output class names."""

    name: str
    tokens: tuple[str, ...]  # content tokens; ids 2, 3, ...
    n_ctx: int
    high_level: HighLevelModel
    class_names: tuple[str, ...]
    generator: Callable[[int, np.random.Generator, int], np.ndarray] = field(repr=False)

    @property
    def vocab(self) -> tuple[str, ...]:
        return ("BOS", "PAD", *self.tokens)

    @property
    def vocab_size(self) -> int:
        return 2 + len(self.tokens)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def generate(self, n: int, rng: np.random.Generator) -> torch.Tensor:
        """``n`` sequences [n, n_ctx] (BOS then content), seeded by ``rng``."""
        content = self.generator(n, rng, self.n_ctx - 1)
        out = np.empty((n, self.n_ctx), dtype=np.int64)
        out[:, 0] = BOS
        out[:, 1:] = content
        return torch.from_numpy(out)

    def to_vocab(self, tokens: torch.Tensor) -> torch.Tensor:
        """Deterministically map foreign tokens into this task's vocabulary: BOS and PAD stay,
        a content id outside the task becomes ``2 + (id - 2) mod n_tokens``. Used when another
        task's input is run through this task's high-level model (cross-task interchanges)."""
        n = len(self.tokens)
        mapped = 2 + (tokens - 2).remainder(n)
        return torch.where(tokens < 2, tokens, mapped)

    def labels(self, tokens: torch.Tensor) -> torch.Tensor:
        """Per-position class labels [batch, pos]; -1 at position 0 (no label)."""
        out = self.high_level.run(self.to_vocab(tokens))[self.high_level.output].clone()
        out[:, 0] = -1
        return out


# ----------------------------------------------------------------------------- generators


def _rejection(
    n: int,
    rng: np.random.Generator,
    propose: Callable[[int], np.ndarray],
    accept: Callable[[np.ndarray], np.ndarray],
    what: str,
    max_rounds: int = 200,
) -> np.ndarray:
    """Vectorised rejection sampling: propose batches until ``n`` accepted rows."""
    kept: list[np.ndarray] = []
    have = 0
    for _ in range(max_rounds):
        cand = propose(max(64, 2 * (n - have)))
        cand = cand[accept(cand)]
        kept.append(cand)
        have += len(cand)
        if have >= n:
            return np.concatenate(kept)[:n]
    raise GridlensError(f"could not sample {n} {what} strings in {max_rounds} rounds")


def _paren_generator(n: int, rng: np.random.Generator, length: int) -> np.ndarray:
    """25% balanced, 25% dip-but-end-at-zero, 25% never-dip-but-end-above-zero, 25% both fail."""
    open_, close = 2, 3
    counts = [n // 4 + (1 if i < n % 4 else 0) for i in range(4)]

    def stats(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        elev = np.cumsum(np.where(s == open_, 1, -1), axis=1)
        return elev.min(axis=1), elev[:, -1]

    def shuffled(k: int) -> np.ndarray:
        half = (length + 1) // 2
        base = np.array([open_] * half + [close] * (length - half), dtype=np.int64)
        return rng.permuted(np.tile(base, (k, 1)), axis=1)

    def biased(k: int) -> np.ndarray:
        p = rng.uniform(0.5, 0.8, size=(k, 1))
        return np.where(rng.random((k, length)) < p, open_, close).astype(np.int64)

    def uniform(k: int) -> np.ndarray:
        return rng.choice(np.array([open_, close]), size=(k, length))

    balanced_end = length % 2  # an odd length cannot end at zero: closest is one
    parts = [
        _rejection(
            counts[0],
            rng,
            shuffled,
            lambda s: (stats(s)[0] >= 0) & (stats(s)[1] == balanced_end),
            "balanced",
        ),
        _rejection(counts[1], rng, shuffled, lambda s: stats(s)[0] < 0, "horizon-failing"),
        _rejection(
            counts[2],
            rng,
            biased,
            lambda s: (stats(s)[0] >= 0) & (stats(s)[1] > 0),
            "count-failing",
        ),
        _rejection(
            counts[3],
            rng,
            uniform,
            lambda s: (stats(s)[0] < 0) & (stats(s)[1] != 0),
            "both-failing",
        ),
    ]
    out = np.concatenate(parts)
    return out[rng.permutation(n)]


def _uniform_generator(n_tokens: int) -> Callable[[int, np.random.Generator, int], np.ndarray]:
    def gen(n: int, rng: np.random.Generator, length: int) -> np.ndarray:
        return rng.integers(2, 2 + n_tokens, size=(n, length), dtype=np.int64)

    return gen


# ----------------------------------------------------------------------------- high-level models

_BOOL = ("False", "True")


def _not_bos(t: torch.Tensor) -> torch.Tensor:
    return (t != BOS) & (t != PAD)


def _elevation(d: dict[str, torch.Tensor], max_len: int) -> torch.Tensor:
    t = d["tokens"]
    step = torch.where(t == 2, 1, torch.where(t == 3, -1, 0))
    return step.cumsum(1) + max_len  # shifted so that values are >= 0


def parenthesis_task(n_ctx: int = 15) -> Task:
    m = n_ctx - 1
    variables = [
        Variable(
            "elevation",
            (),
            lambda d: _elevation(d, m),
            2 * m + 1,
            tuple(str(i - m) for i in range(2 * m + 1)),
        ),
        Variable("below", ("elevation",), lambda d: (d["elevation"] < m).long(), 2, _BOOL),
        Variable("dipped", ("below",), lambda d: d["below"].cummax(1).values, 2, _BOOL),
        Variable(
            "balanced",
            ("elevation", "dipped"),
            lambda d: ((d["elevation"] == m) & (d["dipped"] == 0)).long(),
            2,
            _BOOL,
        ),
    ]
    hl = HighLevelModel("parenthesis", variables, "balanced", 2)
    return Task("parenthesis", ("(", ")"), n_ctx, hl, _BOOL, _paren_generator)


def left_greater_task(n_ctx: int = 15) -> Task:
    m = n_ctx - 1
    variables = [
        Variable(
            "elevation",
            (),
            lambda d: _elevation(d, m),
            2 * m + 1,
            tuple(str(i - m) for i in range(2 * m + 1)),
        ),
        Variable("greater", ("elevation",), lambda d: (d["elevation"] > m).long(), 2, _BOOL),
    ]
    hl = HighLevelModel("left_greater", variables, "greater", 2)
    return Task("left_greater", ("(", ")"), n_ctx, hl, _BOOL, _uniform_generator(2))


_ABC_CLASSES = ("PAD", "a", "b", "c")


def _token_class(t: torch.Tensor) -> torch.Tensor:
    """a, b, c -> 1, 2, 3; BOS/PAD -> 0."""
    return torch.where(t >= 2, t - 1, 0)


def duplicate_remover_task(n_ctx: int = 15) -> Task:
    def prev(d: dict[str, torch.Tensor]) -> torch.Tensor:
        c = _token_class(d["tokens"])
        return torch.cat([torch.zeros_like(c[:, :1]), c[:, :-1]], 1)

    variables = [
        Variable("prev", (), prev, 4, ("none", "a", "b", "c")),
        Variable(
            "is_dup",
            ("prev",),
            lambda d: ((_token_class(d["tokens"]) == d["prev"]) & _not_bos(d["tokens"])).long(),
            2,
            _BOOL,
        ),
        Variable(
            "out",
            ("is_dup",),
            lambda d: torch.where(d["is_dup"] == 1, 0, _token_class(d["tokens"])),
            4,
            _ABC_CLASSES,
        ),
    ]
    hl = HighLevelModel("duplicate_remover", variables, "out", 4)
    return Task(
        "duplicate_remover", ("a", "b", "c"), n_ctx, hl, _ABC_CLASSES, _uniform_generator(3)
    )


def unique_extractor_task(n_ctx: int = 15) -> Task:
    def seen(d: dict[str, torch.Tensor]) -> torch.Tensor:
        c = _token_class(d["tokens"])
        bits = torch.where(c > 0, 1 << (c - 1).clamp(min=0), 0)
        # bitwise OR over strictly earlier positions: cumulative max of each bit
        acc = torch.stack([((bits >> b) & 1).cummax(1).values for b in range(3)], -1)
        acc = (acc * torch.tensor([1, 2, 4])).sum(-1)
        return torch.cat([torch.zeros_like(acc[:, :1]), acc[:, :-1]], 1)

    def is_repeat(d: dict[str, torch.Tensor]) -> torch.Tensor:
        c = _token_class(d["tokens"])
        bit = (d["seen"] >> (c - 1).clamp(min=0)) & 1
        return (bit.bool() & (c > 0)).long()

    variables = [
        Variable(
            "seen",
            (),
            seen,
            8,
            tuple(
                "{" + ",".join(x for i, x in enumerate("abc") if s >> i & 1) + "}" for s in range(8)
            ),
        ),
        Variable("is_repeat", ("seen",), is_repeat, 2, _BOOL),
        Variable(
            "out",
            ("is_repeat",),
            lambda d: torch.where(d["is_repeat"] == 1, 0, _token_class(d["tokens"])),
            4,
            _ABC_CLASSES,
        ),
    ]
    hl = HighLevelModel("unique_extractor", variables, "out", 4)
    return Task("unique_extractor", ("a", "b", "c"), n_ctx, hl, _ABC_CLASSES, _uniform_generator(3))


def histogram_task(n_ctx: int = 15) -> Task:
    def count(d: dict[str, torch.Tensor]) -> torch.Tensor:
        c = _token_class(d["tokens"])
        same = (c[:, :, None] == c[:, None, :]) & (c[:, None, :] > 0)
        return (same & _causal(c.shape[1])).sum(-1)

    classes = ("1", "2", "3", "4+")
    variables = [
        Variable("count", (), count, n_ctx),
        Variable("out", ("count",), lambda d: (d["count"].clamp(1, 4) - 1), 4, classes),
    ]
    hl = HighLevelModel("histogram", variables, "out", 4)
    return Task("histogram", ("a", "b", "c"), n_ctx, hl, classes, _uniform_generator(3))


def _causal(n: int) -> torch.Tensor:
    """[n, n] mask of the positions j <= p each position p sees."""
    return torch.ones(n, n, dtype=torch.bool).tril()


def reversal_task(n_ctx: int = 15) -> Task:
    def mirror(d: dict[str, torch.Tensor]) -> torch.Tensor:
        c = _token_class(d["tokens"])
        p = torch.arange(n_ctx)
        src = (n_ctx - p).clamp(max=n_ctx - 1)  # content positions 1..n-1 mirrored
        return torch.where(src < p, c[:, src], 0)

    variables = [
        Variable("mirror", (), mirror, 4, ("none", "a", "b", "c")),
        Variable("out", ("mirror",), lambda d: d["mirror"], 4, _ABC_CLASSES),
    ]
    hl = HighLevelModel("reversal", variables, "out", 4)
    return Task("reversal", ("a", "b", "c"), n_ctx, hl, _ABC_CLASSES, _uniform_generator(3))


def sort_task(n_ctx: int = 15) -> Task:
    half = (n_ctx - 1) // 2  # positions 1..half are sorted into half+1..2*half

    def counts_of(classes: tuple[int, ...]) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
        def fn(d: dict[str, torch.Tensor]) -> torch.Tensor:
            c = _token_class(d["tokens"])
            hit = torch.zeros_like(c, dtype=torch.bool)
            for k in classes:
                hit |= c == k
            hit[:, half + 1 :] = False
            return hit.long().cumsum(1)

        return fn

    def out(d: dict[str, torch.Tensor]) -> torch.Tensor:
        k = torch.arange(n_ctx) - half - 1  # rank answered at each position
        val = torch.where(k < d["n_a"], 1, torch.where(k < d["n_ab"], 2, 3))
        return torch.where((k >= 0) & (k < half), val, 0)

    variables = [
        Variable("n_a", (), counts_of((1,)), half + 1),
        Variable("n_ab", (), counts_of((1, 2)), half + 1),
        Variable("out", ("n_a", "n_ab"), out, 4, _ABC_CLASSES),
    ]
    hl = HighLevelModel("sort", variables, "out", 4)
    return Task("sort", ("a", "b", "c"), n_ctx, hl, _ABC_CLASSES, _uniform_generator(3))


def modular_sum_task(n_ctx: int = 15) -> Task:
    digits = ("0", "1", "2")

    def prev(d: dict[str, torch.Tensor]) -> torch.Tensor:
        v = (_token_class(d["tokens"]) - 1).clamp(min=0)
        return torch.cat([torch.zeros_like(v[:, :1]), v[:, :-1]], 1)

    def out(d: dict[str, torch.Tensor]) -> torch.Tensor:
        return ((_token_class(d["tokens"]) - 1).clamp(min=0) + d["prev"]) % 3

    variables = [
        Variable("prev", (), prev, 3, digits),
        Variable("out", ("prev",), out, 3, digits),
    ]
    hl = HighLevelModel("modular_sum", variables, "out", 3)
    return Task("modular_sum", digits, n_ctx, hl, digits, _uniform_generator(3))


TASKS: dict[str, Callable[..., Task]] = {
    "parenthesis": parenthesis_task,
    "left_greater": left_greater_task,
    "duplicate_remover": duplicate_remover_task,
    "unique_extractor": unique_extractor_task,
    "histogram": histogram_task,
    "reversal": reversal_task,
    "sort": sort_task,
    "modular_sum": modular_sum_task,
}


def get_task(name: str, n_ctx: int = 15) -> Task:
    if name not in TASKS:
        raise unknown_name("ground-truth task", name, TASKS)
    if n_ctx < 3:
        raise ConfigError(f"n_ctx must be >= 3 (BOS and at least two tokens), got {n_ctx}")
    return TASKS[name](n_ctx)
