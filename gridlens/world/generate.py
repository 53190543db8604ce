"""Batched quiz generation over a task mix, with structures, prompt noise and ground truth."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from gridlens.errors import ConfigError, TokenError
from gridlens.resources import check_fits
from gridlens.world import structures as st
from gridlens.world.tasks import get_task, resolve_tasks
from gridlens.world.tokens import MARKER_TOKENS, grid_size_from_length, tokens_to_grids

SHOWN = 8  # quizzes a notebook draws of a batch


@dataclass
class QuizBatch:
    """Generated quizzes and everything the world knows about them.

    tokens:     long [n, 4 * (1 + H*W)], each quiz in its own structure, noise applied.
    task:       [n] task name per quiz.        structure: [n] structure name per quiz.
    grids:      [n, 4, H, W] int8 clean grids in canonical order (A, f_A, B, f_B).
    objects:    [n, 4, H, W] object index per cell (-1 background), canonical order.
    roles:      [n, 4, H, W] index into `role_names` (task-qualified, e.g. "contact/anchor").
    noise:      [n, 4, H, W] True where prompt noise replaced a cell (canonical order).
    params:     task -> (quiz indices, parameter arrays for those quizzes).
    """

    tokens: torch.Tensor
    task: np.ndarray
    structure: np.ndarray
    grids: np.ndarray
    objects: np.ndarray
    roles: np.ndarray
    noise: np.ndarray
    role_names: tuple[str, ...]
    params: dict[str, tuple[np.ndarray, dict[str, np.ndarray]]] = field(default_factory=dict)
    height: int = 10
    width: int = 10

    def __len__(self) -> int:
        return len(self.tokens)

    def _repr_html_(self) -> str:
        """A notebook shows a batch as its first quizzes drawn as grids."""
        from gridlens.notebook import image_html
        from gridlens.world.render import render_image

        shown = self if len(self) <= SHOWN else self.subset(np.arange(SHOWN))
        note = f"<p>{len(self)} quizzes; the first {SHOWN} drawn</p>" if shown is not self else ""
        return f"<div>{image_html(render_image(shown), 'quizzes')}{note}</div>"

    @property
    def changes(self) -> np.ndarray:
        """[n, 4, H, W] True where X and f(X) differ, set on both grids of the pair."""
        return np.repeat(self.grids[:, 0::2] != self.grids[:, 1::2], 2, axis=1)

    def params_of(self, i: int) -> dict[str, np.ndarray]:
        """The transform parameters of quiz i."""
        idx, arrays = self.params[str(self.task[i])]
        row = int(np.searchsorted(idx, i))
        return {k: v[row] for k, v in arrays.items()}

    def token_annotations(self, which: str = "changes") -> np.ndarray:
        """Per-token view [n, L] of a cell annotation ('objects', 'roles', 'changes', 'noise'),
        laid out in each quiz's structure; marker positions hold -1."""
        cells = np.asarray(getattr(self, which)).astype(np.int64)
        n, hw = len(self), self.height * self.width
        out = np.full((n, 4, 1 + hw), -1, dtype=np.int64)
        for name in np.unique(self.structure):
            rows = np.flatnonzero(self.structure == name)
            slots = st.reorder(cells[rows], st.get_structure(str(name)))
            out[rows, :, 1:] = slots.reshape(len(rows), 4, hw)
        return out.reshape(n, -1)

    def subset(self, index: np.ndarray | Sequence[int]) -> QuizBatch:
        """The quizzes at `index` (distinct indices or a bool mask), metadata included."""
        idx = np.asarray(index)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        if len(np.unique(idx)) != len(idx):
            raise ConfigError("subset indices must be distinct")
        inverse = np.full(len(self), -1)
        inverse[idx] = np.arange(len(idx))
        params = {}
        for task, (rows, arrays) in self.params.items():
            new_rows = inverse[rows]
            keep = np.flatnonzero(new_rows >= 0)
            keep = keep[np.argsort(new_rows[keep])]
            if len(keep):
                params[task] = (new_rows[keep], {k: v[keep] for k, v in arrays.items()})
        return QuizBatch(
            tokens=self.tokens[torch.as_tensor(idx)],
            task=self.task[idx],
            structure=self.structure[idx],
            grids=self.grids[idx],
            objects=self.objects[idx],
            roles=self.roles[idx],
            noise=self.noise[idx],
            role_names=self.role_names,
            params=params,
            height=self.height,
            width=self.width,
        )


def _rows(mask: np.ndarray) -> np.ndarray | slice:
    """Indices where `mask` holds, or a whole-batch slice (no copying) when it always does."""
    return slice(None) if mask.all() else np.flatnonzero(mask)


def _empty(rows: np.ndarray | slice) -> bool:
    return not isinstance(rows, slice) and len(rows) == 0


def _count(rows: np.ndarray | slice, n: int) -> int:
    return n if isinstance(rows, slice) else len(rows)


def resolve_structures(structure: str | Sequence[str] | None) -> tuple[str, ...]:
    """None -> forward only; "mix"/"all" -> the five training structures; names -> validated."""
    if structure is None:
        return ("forward",)
    if structure in ("mix", "all"):
        return st.TRAINING_STRUCTURES
    names = [structure] if isinstance(structure, str) else list(structure)
    for name in names:
        st.get_structure(name)
    if not names:
        raise ConfigError("structure must name at least one structure")
    return tuple(names)


#: Memory per grid cell while generating: grids, objects, roles, changes, noise and tokens.
_BYTES_PER_CELL = 16


def generate(
    tasks: str | Sequence[str] | None = None,
    n: int = 1,
    seed: int | np.random.Generator = 0,
    structure: str | Sequence[str] | None = None,
    noise: float = 0.0,
    height: int = 10,
    width: int = 10,
) -> QuizBatch:
    """Generate `n` quizzes, each of a task drawn uniformly from `tasks`.

    tasks: a name, comma-separated names, a list, "default" (the 8 released tasks) or None/"all".
    structure: None (canonical A, f_A, B, f_B), a structure name, a list of names, or "mix"
    (uniform over the five original structures). noise: prompt-noise probability per cell.
    """
    names = resolve_tasks(tasks)
    structures = resolve_structures(structure)
    if n < 0:
        raise ConfigError(f"n must be >= 0, got {n}")
    if not 0.0 <= noise <= 1.0:
        raise ConfigError(f"noise must be a probability in [0, 1], got {noise}")
    check_fits(
        n * 4 * height * width * _BYTES_PER_CELL, f"generating {n} quizzes of {height}x{width}"
    )
    for name in names:
        get_task(name).validate_size(height, width)
    if not isinstance(seed, np.random.Generator) and (
        isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0
    ):
        raise ConfigError(f"seed must be a non-negative integer or a numpy Generator, got {seed!r}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    task_index = rng.integers(0, len(names), size=n)
    grids = np.zeros((n, 4, height, width), dtype=np.int8)
    objects = np.full(grids.shape, -1, dtype=np.int8)
    roles = np.zeros(grids.shape, dtype=np.int16)
    role_names: list[str] = ["background"]
    params: dict[str, tuple[np.ndarray, dict[str, np.ndarray]]] = {}
    for t, name in enumerate(names):
        rows = _rows(task_index == t)
        if _empty(rows):
            continue
        task = get_task(name)
        sample = task.generate(_count(rows, n), rng, height, width)
        grids[rows] = sample.grids
        if sample.objects is not None:
            objects[rows] = sample.objects
        if sample.roles is not None:
            local = sample.roles.astype(np.int16)
            local[local > 0] += len(role_names) - 1
            roles[rows] = local
            role_names.extend(f"{name}/{r}" for r in task.roles[1:])
        params[name] = (np.arange(n) if isinstance(rows, slice) else rows, sample.params)

    structure_index = rng.integers(0, len(structures), size=n)
    cells = height * width
    layout = np.empty((n, 4, 1 + cells), dtype=np.int8)
    noise_cells = np.zeros(grids.shape, dtype=bool)
    for s, sname in enumerate(structures):
        rows = _rows(structure_index == s)
        if _empty(rows):
            continue
        spec = st.get_structure(sname)
        slots = grids[rows] if spec.permutation == [0, 1, 2, 3] else st.reorder(grids[rows], spec)
        if noise > 0 and any(spec.noise_mask):
            hit, colours = st.noise_cells(rng, _count(rows, n), spec, height, width, noise)
            slots = np.where(hit, colours, slots).astype(np.int8)
            noise_cells[rows] = st.to_canonical(hit, spec)
        layout[rows, :, 0] = [MARKER_TOKENS[g] for g in spec.order]
        layout[rows, :, 1:] = slots.reshape(-1, 4, cells)
    tokens = torch.from_numpy(layout.reshape(n, -1)).long()

    return QuizBatch(
        tokens=tokens,
        task=np.asarray(names, dtype=object)[task_index].astype(str),
        structure=np.asarray(structures, dtype=object)[structure_index].astype(str),
        grids=grids,
        objects=objects,
        roles=roles,
        noise=noise_cells,
        role_names=tuple(role_names),
        params=params,
        height=height,
        width=width,
    )


def check(
    task: str,
    tokens: torch.Tensor | np.ndarray,
    height: int | None = None,
    width: int | None = None,
) -> torch.Tensor:
    """[n] bool: which quizzes (tokens in structure A, f_A, B, f_B) are instances of `task`."""
    t = torch.as_tensor(tokens)
    if t.ndim != 2:
        raise TokenError(f"tokens must have shape [n, length], got {list(t.shape)}")
    if height is None or width is None:
        height, width = grid_size_from_length(t.shape[1])
    grids, order = tokens_to_grids(t, height, width)
    if order != st.STRUCTURES["forward"].order:
        raise TokenError(
            f"check expects quizzes in structure A, f_A, B, f_B; got {', '.join(order)} "
            "(reorder them to the forward structure first)"
        )
    return torch.from_numpy(np.asarray(get_task(task).check(grids), dtype=bool))
