"""Clean/corrupted quiz pairs for patching: the same quiz with one thing changed, so that the
difference between the two runs isolates where the model uses that thing.

Kinds (every quiz in structure A, f_A, B, f_B, without prompt noise):

- "parameter": the same rectangles and colours, another value of the task's shared parameter;
  A and B are identical and only f_A and f_B change, except for grow. Per task: replace_color
  the replacement colour (another unused colour); translate the direction; grow grow <-> shrink
  (X and f(X) exchanged in both pairs, so A and B change too: with A and B kept, the other
  direction is drawable for about 1 quiz in 1000); half_fill the fill side (the opposite side
  on the same line, so only quizzes whose six lines coincide for both sides, i.e. rectangles of
  odd size across the line); frame which rectangle is framed; detect which two colours are
  tagged (the untagged one swaps with a tagged one); contact which rectangle is the anchor.
  corners is not supported: its only parameter (the corner polarity) changes A and B and leaves
  the answer unchanged. Other non-default tasks are not supported either; both are listed in
  `PairSet.skipped`.
- "colour": two colours of the answer grid swapped consistently in all four grids (a colour
  role permuted: the rule is unchanged, the answer recoloured).
- "task": the same A and B under another task's rule (the rectangle of colour c2 framed, or for
  frame, recoloured to an unused colour) where the inputs are three solid rectangles
  (replace_color, translate, grow, detect, contact, frame); otherwise (half_fill, corners and
  non-default tasks) an unrelated quiz of the frame task.

Every corrupted quiz is checked by the world's checker of its task and kept only when it is a
valid instance whose answer differs from the clean one; candidates are drawn until
`n_per_task` pairs per task exist (at most 2^15 quizzes per task, then a GridlensError).
The corrupted QuizSet keeps the clean quiz's per-cell annotations (objects, roles; exchanged
with the grids for grow), which are exact for A and B; its `params` are updated for
"parameter" and "colour" pairs and empty for "task" pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from gridlens.analysis.core import QuizSet, predicted_cells
from gridlens.errors import ConfigError, GridlensError, unknown_name
from gridlens.world import QuizBatch, generate, shapes
from gridlens.world.tasks import get_task, resolve_tasks
from gridlens.world.tasks.contact import contact_rule, rec_dist
from gridlens.world.tasks.detect import tag
from gridlens.world.tasks.half_fill import _line_and_half
from gridlens.world.tasks.translate import DIRECTIONS
from gridlens.world.tokens import GRID_NAMES, grids_to_tokens

PAIR_KINDS = ("parameter", "colour", "task")
MAX_CANDIDATES = 1 << 15
INNER = np.array([1, 1, -1, -1])  # a rectangle [i1, j1, i2, j2] shrunk by one cell
SWAP_XF = [1, 0, 3, 2]  # (A, f_A, B, f_B) -> (f_A, A, f_B, B)


class PairError(GridlensError, ValueError):
    """Clean/corrupted pairs that cannot be made or do not match."""


@dataclass
class PairSet:
    """Matched quizzes: row i of `corrupted` is row i of `clean` with one thing changed."""

    clean: QuizSet
    corrupted: QuizSet
    kind: str
    skipped: dict[str, str] = field(default_factory=dict)  # task -> why it has no pairs

    def __post_init__(self) -> None:
        validate_pairs(self.clean, self.corrupted)

    @property
    def tasks(self) -> np.ndarray:
        """The clean quiz's task per pair (results are grouped by it)."""
        return self.clean.tasks

    def __len__(self) -> int:
        return len(self.clean)


def validate_pairs(clean: QuizSet, corrupted: QuizSet) -> None:
    """Raise PairError unless the two sets are non-empty and of identical token shapes."""
    a, b = tuple(clean.tokens.shape), tuple(corrupted.tokens.shape)
    if a != b:
        raise PairError(f"clean tokens {list(a)} and corrupted tokens {list(b)} differ in shape")
    if len(clean) == 0:
        raise PairError("the pair set is empty (no clean/corrupted quizzes)")


# ---------------------------------------------------------------- per-task changes
# Each takes the candidate quizzes of one task (grids [m, 4, H, W], params for those rows, rng)
# and returns corrupted grids [m, 4, H, W] and updated params.

Params = dict[str, np.ndarray]
Change = Callable[[np.ndarray, Params, np.random.Generator], tuple[np.ndarray, Params]]


def _unused_colour(colours: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[m] a random non-background colour absent from each row of colours [m, k]."""
    m = len(colours)
    free = np.ones((m, 11), dtype=bool)
    free[:, 0] = False
    free[np.arange(m)[:, None], colours] = False
    return np.argmax(rng.random((m, 11)) * free, axis=1)


def _swap_columns(a: np.ndarray, i: int, j: np.ndarray) -> np.ndarray:
    """a [m, k, ...] with column i swapped with column j[m] in each row."""
    out = a.copy()
    rows = np.arange(len(a))
    out[rows, i], out[rows, j] = a[rows, j], a[rows, i]
    return out


def _replace_color(grids, params, rng):
    colours = params["colors"]
    new = _unused_colour(colours, rng)
    out = grids.copy()
    f = out[:, 1::2]
    out[:, 1::2] = np.where(f == colours[:, 3, None, None, None], new[:, None, None, None], f)
    cols = colours.copy()
    cols[:, 3] = new
    return out, {**params, "colors": cols}


def _translate(grids, params, rng):
    m, _, h, w = grids.shape
    direction = (params["direction"] + rng.integers(1, len(DIRECTIONS), m)) % len(DIRECTIONS)
    colour = params["colors"][:, 2]
    out = grids.copy()
    for pair, key in ((0, "rects_A"), (1, "rects_B")):
        x = grids[:, 2 * pair]
        f = np.where(x == colour[:, None, None], 0, x)
        moved = params[key][:, 2] + np.tile(DIRECTIONS[direction], 2)
        shapes.paint(f, shapes.rectangle_masks(moved, h, w), colour)
        out[:, 2 * pair + 1] = f
    return out, {**params, "direction": direction, "shift": DIRECTIONS[direction]}


def _grow(grids, params, rng):
    # With A and B fixed, the other direction is rarely drawable (a shrunk rectangle must stay
    # >= 4 x 4, a grown one must fit); exchanging X and f(X) in both pairs is always valid.
    return grids[:, SWAP_XF], {**params, "direction": 1 - params["direction"]}


def _half_fill(grids, params, rng):
    h, w = grids.shape[-2:]
    direction = params["direction"] ^ 1  # the other side on the same axis
    colours = params["colors"]
    out = grids.copy()
    for pair, key in ((0, "rects_A"), (1, "rects_B")):
        rects = params[key]
        line_old, _ = _line_and_half(rects, params["direction"][:, None])
        line_new, _ = _line_and_half(rects, direction[:, None])
        same = (line_old == line_new).all(axis=(1, 2))
        _, half = _line_and_half(rects[:, 2], direction)
        f = grids[:, 2 * pair].copy()
        shapes.paint(f, shapes.rectangle_masks(rects[:, 2], h, w), colours[:, 4])
        shapes.paint(f, shapes.rectangle_masks(half, h, w), colours[:, 5])
        # where the lines would move, A or B would change: make the quiz invalid (rejected)
        out[:, 2 * pair + 1] = np.where(same[:, None, None], f, -1)
    return out, {**params, "direction": direction}


def _frame(grids, params, rng):
    m, _, h, w = grids.shape
    k = rng.integers(0, 2, m)
    out = grids.copy()
    new = dict(params, colors=_swap_columns(params["colors"], 2, k))
    for pair, key in ((0, "rects_A"), (1, "rects_B")):
        rect = params[key][np.arange(m), k]
        inner = shapes.rectangle_masks(rect + INNER, h, w)
        out[:, 2 * pair + 1] = np.where(inner, 0, grids[:, 2 * pair])
        new[key] = _swap_columns(params[key], 2, k)
    return out, new


def _detect(grids, params, rng):
    m = len(grids)
    colours = _swap_columns(params["colors"], 2, rng.integers(0, 2, m))  # untagged <-> tagged
    tagged = np.zeros((m, 11), dtype=bool)
    tagged[np.arange(m), colours[:, 0]] = True
    tagged[np.arange(m), colours[:, 1]] = True
    out = grids.copy()
    for x in (0, 2):
        out[:, x + 1] = tag(grids[:, x], tagged, colours[:, 3])
    return out, {**params, "colors": colours}


def _contact(grids, params, rng):
    m = len(grids)
    k = rng.integers(1, 3, m)
    new = dict(params, colors=_swap_columns(params["colors"], 0, k))
    out = grids.copy()
    for x, key in ((0, "rects_A"), (2, "rects_B")):
        out[:, x + 1] = contact_rule(grids[:, x], new["colors"][:, 0])
        rects = _swap_columns(params[key], 0, k)
        new[key] = rects
        new[f"touching_{key[-1]}"] = rec_dist(rects[:, :1], rects[:, 1:]) == 0
    return out, new


PARAMETER_CHANGES: dict[str, Change] = {
    "replace_color": _replace_color,
    "translate": _translate,
    "grow": _grow,
    "half_fill": _half_fill,
    "frame": _frame,
    "detect": _detect,
    "contact": _contact,
}
UNSUPPORTED_PARAMETER = {
    "corners": "its only parameter (corner polarity) changes A and B, not the answer",
}


def _colour_swap(grids, params, rng):
    """Swap two distinct colours of the answer grid f_B in all four grids."""
    m = len(grids)
    present = np.zeros((m, 11), dtype=bool)
    present[np.arange(m)[:, None], grids[:, 3].reshape(m, -1)] = True
    present[:, 0] = False
    keys = rng.random((m, 11)) + present  # present colours rank first, in random order
    order = np.argsort(-keys, axis=1)
    a, b = order[:, 0], order[:, 1]
    ok = present.sum(1) >= 2
    lut = np.tile(np.arange(11), (m, 1))
    lut[np.arange(m), a], lut[np.arange(m), b] = b, a
    out = np.take_along_axis(lut, grids.reshape(m, -1), axis=1).reshape(grids.shape)
    out = np.where(ok[:, None, None, None], out, -1)
    new = dict(params)
    if "colors" in params:
        flat = params["colors"].reshape(m, -1)
        new["colors"] = np.take_along_axis(lut, flat, axis=1).reshape(params["colors"].shape)
    return out, new


SOLID_INPUT_TASKS = ("replace_color", "translate", "grow", "detect", "contact", "frame")


def _other_rule(task: str) -> str:
    return "replace_color" if task == "frame" else "frame"


def _task_rule(task: str) -> Change:
    """Apply another task's rule to the same A and B (grids of three solid rectangles)."""

    def change(grids, params, rng):
        h, w = grids.shape[-2:]
        colour = params["colors"][:, 2]
        out = grids.copy()
        if _other_rule(task) == "frame":
            _, boxes = shapes.colour_boxes(grids[:, 0::2])  # [m, 2, 11, 4]
            for pair in (0, 1):
                box = boxes[np.arange(len(grids)), pair, colour]
                inner = shapes.rectangle_masks(box + INNER, h, w)
                out[:, 2 * pair + 1] = np.where(inner, 0, grids[:, 2 * pair])
        else:
            new = _unused_colour(params["colors"], rng)
            x = grids[:, 0::2]
            out[:, 1::2] = np.where(x == colour[:, None, None, None], new[:, None, None, None], x)
        return out, {}

    return change


# ---------------------------------------------------------------- assembly


def _corrupt(
    kind: str, task: str, grids: np.ndarray, params: Params, rng: np.random.Generator
) -> tuple[np.ndarray, Params, str]:
    """Corrupted grids, params and the corrupted quizzes' task, for candidates of `task`."""
    if kind == "parameter":
        return (*PARAMETER_CHANGES[task](grids, params, rng), task)
    if kind == "colour":
        return (*_colour_swap(grids, params, rng), task)
    return (*_task_rule(task)(grids, params, rng), _other_rule(task))


def _valid(task: str, clean: np.ndarray, corrupted: np.ndarray) -> np.ndarray:
    """Corrupted quizzes that are instances of `task` and whose answer differs from clean."""
    ok = (corrupted >= 0).all(axis=(1, 2, 3))
    ok &= (corrupted[:, 3] != clean[:, 3]).any(axis=(1, 2))
    if ok.any():
        ok[ok] &= np.asarray(get_task(task).check(corrupted[ok]), dtype=bool)
    return ok


def make_pairs(
    kind: str,
    tasks: str | Sequence[str] | None = "default",
    n_per_task: int = 8,
    seed: int = 0,
) -> PairSet:
    """`n_per_task` clean/corrupted pairs of each task (grouped by task), deterministic in seed.

    kind: "parameter" | "colour" | "task" (see the module docstring). Tasks a kind cannot serve
    are left out and named in `PairSet.skipped`; if none is left, PairError.
    """
    if kind not in PAIR_KINDS:
        raise unknown_name("pair kind", kind, PAIR_KINDS)
    if n_per_task < 1:
        raise ConfigError(f"n_per_task must be >= 1, got {n_per_task}")
    names = resolve_tasks(tasks)
    skipped: dict[str, str] = {}
    if kind == "parameter":
        for t in names:
            if t not in PARAMETER_CHANGES:
                skipped[t] = UNSUPPORTED_PARAMETER.get(t, "no parameter change is implemented")
    usable = [t for t in names if t not in skipped]
    if not usable:
        raise PairError(
            f"no pairs of kind {kind!r} for tasks {', '.join(names)}: "
            + "; ".join(f"{t}: {why}" for t, why in skipped.items())
        )
    total = 16 * n_per_task
    while True:
        rng = np.random.default_rng([seed, total])
        mix = list(dict.fromkeys([*usable, "frame"])) if kind == "task" else usable
        batch = generate(mix, total * len(mix), seed=rng)
        picked = _pick(kind, usable, batch, n_per_task, rng)
        if picked is not None:
            break
        if total >= MAX_CANDIDATES:
            raise PairError(
                f"could not make {n_per_task} pairs of kind {kind!r} per task from "
                f"{MAX_CANDIDATES} candidates; ask for fewer"
            )
        total *= 2
    rows, grids, task_c, annotated, params = picked
    clean = batch.subset(rows)
    objects, roles = batch.objects[annotated], batch.roles[annotated]
    if kind == "parameter":  # grow's pairs exchange X and f(X): so do their annotations
        swap = clean.task == "grow"
        objects[swap], roles[swap] = objects[swap][:, SWAP_XF], roles[swap][:, SWAP_XF]
    corrupted = QuizBatch(
        tokens=grids_to_tokens(grids, GRID_NAMES),
        task=task_c,
        structure=clean.structure.copy(),
        grids=grids.astype(np.int8),
        objects=objects,
        roles=roles,
        noise=np.zeros_like(clean.noise),
        role_names=batch.role_names,
        params=params,
        height=batch.height,
        width=batch.width,
    )
    return PairSet(QuizSet(clean), QuizSet(corrupted), kind, skipped)


def _pick(kind, usable, batch, n_per_task, rng):
    """(clean rows of `batch`, corrupted grids, corrupted tasks, rows whose annotations the
    corrupted quizzes keep, corrupted params), or None when there are too few candidates."""
    found: dict[str, tuple] = {}
    for t in usable:
        if kind == "task" and t not in SOLID_INPUT_TASKS:
            continue
        idx, arrays = batch.params[t]
        grids = batch.grids[idx].astype(np.int64)
        new, params, task_c = _corrupt(kind, t, grids, arrays, rng)
        ok = np.flatnonzero(_valid(task_c, grids, new))[:n_per_task]
        if len(ok) < n_per_task:
            return None
        found[t] = (idx[ok], new[ok], task_c, idx[ok], {k: v[ok] for k, v in params.items()})
    used = np.concatenate([f[0] for f in found.values()]) if found else np.array([], int)
    spare = np.setdiff1d(np.flatnonzero(batch.task == "frame"), used)
    for t in usable:
        if t in found:
            continue
        rows = np.flatnonzero(batch.task == t)
        if len(rows) < n_per_task or len(spare) < n_per_task:
            return None
        other, spare = spare[:n_per_task], spare[n_per_task:]
        found[t] = (rows[:n_per_task], batch.grids[other].astype(np.int64), "frame", other, {})
    params: dict[str, tuple[np.ndarray, dict[str, np.ndarray]]] = {}
    if kind != "task":
        for i, t in enumerate(usable):
            params[t] = (np.arange(i * n_per_task, (i + 1) * n_per_task), found[t][4])
    parts = [found[t] for t in usable]
    return (
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
        np.concatenate([np.full(n_per_task, p[2]) for p in parts]).astype(str),
        np.concatenate([p[3] for p in parts]),
        params,
    )


def as_tokens(pairs: PairSet) -> tuple[torch.Tensor, torch.Tensor]:
    """(clean run tokens, corrupted run tokens): the corrupted run is the corrupted prompt
    followed by the CLEAN answer grid, so both runs score the same answer."""
    clean = pairs.clean.tokens
    cells = predicted_cells(clean).start
    corrupted = torch.cat([pairs.corrupted.tokens[:, :cells], clean[:, cells:]], dim=1)
    return clean, corrupted
