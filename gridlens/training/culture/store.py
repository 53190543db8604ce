"""Culture quizzes on disk, with where each came from.

Each culture round that keeps quizzes writes one file, `culture/round_{r:05d}.safetensors`
(imports of original files: `culture/import_{r:05d}_{i}.safetensors`):
canonical tokens plus provenance (split: 0 train / 1 test, the generating model, every model's
score, the checker label) and JSON metadata. A round file is committed only once the population
state names it (see loop.py), so an interrupted round never duplicates or loses quizzes.
`save_original` / `load_original` read and write the original `c_quizzes.pth` = (train list,
test list) of [n, 404] token tensors in the (A, f_A, B, f_B) order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load

from gridlens.errors import CheckpointError, GridlensError
from gridlens.integrity import load_pickle, seal_safetensors, verify_safetensors_bytes
from gridlens.io import atomic_write
from gridlens.world.tasks import TASKS
from gridlens.world.tokens import validate_tokens

NOVEL = "novel"
LABELS: tuple[str, ...] = (*TASKS, NOVEL)


@dataclass
class CultureSet:
    """Culture quizzes and their provenance, one row per quiz."""

    tokens: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0, dtype=torch.long))
    split: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    generator: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    round: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    probas: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0))
    label: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))

    def __len__(self) -> int:
        return len(self.split)

    @property
    def train(self) -> torch.Tensor:
        return self.tokens[self.split == 0] if len(self) else self.tokens

    @property
    def test(self) -> torch.Tensor:
        return self.tokens[self.split == 1] if len(self) else self.tokens

    def labels(self) -> list[str]:
        return [LABELS[i] for i in self.label.tolist()]

    def extend(self, other: CultureSet) -> CultureSet:
        if not len(self):
            return other
        if not len(other):
            return self
        return CultureSet(
            *(torch.cat([a, b]) for a, b in zip(self._tensors(), other._tensors(), strict=True))
        )

    def _tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.tokens, self.split, self.generator, self.round, self.probas, self.label)


_FIELDS = ("tokens", "split", "generator", "round", "probas", "label")


def culture_path(population: Path, name: str) -> Path:
    """Where a culture part lives: `round_RRRRR` (made by the loop) or `import_RRRRR_I`."""
    return Path(population) / "culture" / f"{name}.safetensors"


def save_part(population: Path, name: str, quizzes: CultureSet, meta: dict) -> Path:
    """Write one part of the culture (a round's kept quizzes, or an import) atomically."""
    path = culture_path(population, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.contiguous() for name, t in zip(_FIELDS, quizzes._tensors(), strict=True)}
    blob = seal_safetensors(tensors, {"meta": json.dumps(meta), "labels": json.dumps(LABELS)})
    return atomic_write(path, lambda handle: handle.write(blob))


def load_part(path: Path, k: int, height: int, width: int) -> CultureSet:
    """Read and validate one culture part file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: culture round file missing (the population state names it)")
    try:
        blob = path.read_bytes()
        tensors = st_load(blob)
    except (SafetensorError, ValueError, OSError) as error:
        raise CheckpointError(f"{path}: corrupted culture round file ({error})") from None
    verify_safetensors_bytes(blob, path)
    missing = [name for name in _FIELDS if name not in tensors]
    if missing:
        raise CheckpointError(f"{path}: culture round file lacks {missing}")
    out = CultureSet(*(tensors[name] for name in _FIELDS))
    n = len(out.split)
    if out.tokens.ndim != 2 or len(out.tokens) != n:
        raise CheckpointError(f"{path}: tokens {list(out.tokens.shape)} for {n} quizzes")
    validate_tokens(out.tokens, height, width)
    if out.probas.shape != (n, k):  # NaN rows: imported quizzes nobody here scored
        raise CheckpointError(
            f"{path}: probas {list(out.probas.shape)}, expected [{n}, {k}] (k={k} models)"
        )
    if n and (int(out.label.max()) >= len(LABELS) or int(out.label.min()) < 0):
        raise CheckpointError(f"{path}: checker label out of range")
    return out


def save_original(path: str | Path, culture: CultureSet) -> Path:
    """The original layout: torch.save((train list, test list)) of [n, L] long tensors."""
    train, test = [culture.train.clone()], [culture.test.clone()]
    return atomic_write(Path(path), lambda handle: torch.save((train, test), handle))


def load_original(path: str | Path, height: int = 10, width: int = 10):
    """(train [n, L], test [m, L]) from an original `c_quizzes.pth` (read weights-only)."""
    path = Path(path)
    data = load_pickle(path, "c_quizzes.pth")
    if not (isinstance(data, tuple | list) and len(data) == 2):
        raise CheckpointError(
            f"{path}: expected (train list, test list), got {type(data).__name__}"
        )
    parts = []
    for name, part in zip(("train", "test"), data, strict=True):
        if not isinstance(part, list | tuple) or not all(
            torch.is_tensor(t) and t.ndim == 2 and not t.is_floating_point() for t in part
        ):
            raise CheckpointError(
                f"{path}: the {name} entry must be a list of integer token tensors [n, L]"
            )
        tokens = torch.cat([t.long().reshape(len(t), -1) for t in part]) if part else None
        if tokens is None:
            tokens = torch.zeros(0, 4 * (1 + height * width), dtype=torch.long)
        validate_tokens(tokens, height, width)
        parts.append(tokens)
    return parts[0], parts[1]


def checker_labels(canonical: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[n] index into LABELS: the first task whose checker accepts the quiz, else `novel`."""
    from gridlens.world import check

    label = torch.full((len(canonical),), LABELS.index(NOVEL), dtype=torch.long)
    open_ = np.ones(len(canonical), dtype=bool)
    for t, task in enumerate(TASKS):
        if not open_.any():
            break
        rows = np.flatnonzero(open_)
        try:
            ok = check(task, canonical[rows], height, width).numpy()
        except GridlensError:  # a task that cannot exist at this grid size accepts nothing
            continue
        label[rows[ok]] = t
        open_[rows[ok]] = False
    return label
