"""Vectorised building blocks shared by the task generators: rejection sampling, rectangles,
distinct colours and painting. Every function takes an explicit numpy Generator."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np

from gridlens.errors import GridSizeError

Proposal = Callable[[int], tuple[np.ndarray, dict[str, np.ndarray]]]


def rejection_sample(
    n: int, propose: Proposal, what: str, give_up_after: int = 2_000_000
) -> dict[str, np.ndarray]:
    """Collect `n` accepted items from repeated batched proposals.

    `propose(m)` returns (accepted [m] bool, arrays each with leading dimension m). The batch
    size adapts to the observed acceptance rate. When `give_up_after` proposals brought nothing,
    or the observed rate says the rest would need over a billion proposals, the task cannot be
    generated under these settings and a GridSizeError says so instead of looping forever.
    """
    chunks: dict[str, list[np.ndarray]] = {}
    have, proposed, accepted_total = 0, 0, 0
    while True:
        rate = (accepted_total + 1) / (proposed + 1)
        if (accepted_total == 0 and proposed >= give_up_after) or (n - have) / rate > 1e9:
            raise GridSizeError(
                f"could not generate {what}: only {have} of {n} samples accepted after "
                f"{proposed} proposals (the grid is probably too small for this task)"
            )
        m = int(min(max((n - have) / max(rate, 1e-3) * 1.2, 64), 1_000_000))
        ok, arrays = propose(m)
        proposed += m
        idx = np.flatnonzero(ok)[: n - have]
        accepted_total += int(ok.sum())
        for key, value in arrays.items():
            chunks.setdefault(key, []).append(value[idx])
        have += len(idx)
        if have >= n:
            return {k: np.concatenate(v) for k, v in chunks.items()}


def distinct_colours(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """[n, k] distinct non-background colours 1..10 per row, uniformly (randperm(10)[:k] + 1)."""
    return np.argsort(rng.random((n, 10)), axis=1)[:, :k] + 1


@dataclass(frozen=True)
class RectangleTable:
    """Every rectangle the original `rec_coo` can draw on an H x W grid.

    The original sorts two uniform draws per axis and keeps rectangles of at least
    min_height x min_width and area at most max_area; since min sizes >= 2 force distinct draws,
    every valid rectangle is equally likely, so sampling uniformly from this table (then
    rejecting overlapping tuples) reproduces its distribution. Lookups replace geometry.
    """

    rects: np.ndarray  # [R, 4] half-open (i1, j1, i2, j2)
    overlap: np.ndarray  # [R, R] True where two rectangles share a cell
    masks: np.ndarray  # [R, H, W] cells of each rectangle


@cache
def rectangle_table(
    height: int, width: int, min_height: int = 3, min_width: int = 3, max_area: int | None = None
) -> RectangleTable:
    max_area = height * width // 2 if max_area is None else max_area
    rows = [(a, b) for a in range(height) for b in range(a + min_height, height + 1)]
    cols = [(a, b) for a in range(width) for b in range(a + min_width, width + 1)]
    rects = np.array(
        [
            (i1, j1, i2, j2)
            for i1, i2 in rows
            for j1, j2 in cols
            if (i2 - i1) * (j2 - j1) <= max_area
        ],
        dtype=np.int64,
    ).reshape(-1, 4)
    if not len(rects):
        raise GridSizeError(
            f"no rectangle of at least {min_height}x{min_width} and area <= {max_area} "
            f"fits a {height}x{width} grid"
        )
    masks = rectangle_masks(rects, height, width)
    a, b = rects[:, None, :], rects[None, :, :]
    overlap = (
        (a[..., 0] < b[..., 2])
        & (b[..., 0] < a[..., 2])
        & (a[..., 1] < b[..., 3])
        & (b[..., 1] < a[..., 3])
    )
    for a in (rects, masks, overlap):
        a.setflags(write=False)
    return RectangleTable(rects, overlap, masks)


def sample_rectangles(
    rng: np.random.Generator,
    n: int,
    k: int,
    height: int,
    width: int,
    what: str,
    disjoint: bool = True,
    accept: Callable[[np.ndarray], np.ndarray] | None = None,
    min_height: int = 3,
    min_width: int = 3,
    max_area: int | None = None,
) -> np.ndarray:
    """[n, k] indices into `rectangle_table(...)` of k rectangles per row, drawn like the
    original: uniform valid rectangles, rows with overlaps (if `disjoint`) or failing
    `accept(rects [m, k, 4]) -> [m] bool` rejected."""
    table = rectangle_table(height, width, min_height, min_width, max_area)

    def propose(m: int):
        idx = rng.integers(0, len(table.rects), size=(m, k))
        ok = np.ones(m, dtype=bool)
        if disjoint:
            for a in range(k):
                for b in range(a + 1, k):
                    ok &= ~table.overlap[idx[:, a], idx[:, b]]
        if accept is not None:
            ok &= accept(table.rects[idx])
        return ok, {"idx": idx}

    return rejection_sample(n, propose, what)["idx"]


def rectangle_masks(rects: np.ndarray, height: int, width: int) -> np.ndarray:
    """Boolean cell masks [..., H, W] of half-open rectangles [..., 4]; out-of-grid parts clip."""
    rows = np.arange(height)
    cols = np.arange(width)
    r = rects[..., None]
    in_rows = (rows >= r[..., 0, :]) & (rows < r[..., 2, :])
    in_cols = (cols >= r[..., 1, :]) & (cols < r[..., 3, :])
    return in_rows[..., :, None] & in_cols[..., None, :]


def paint(grid: np.ndarray, mask: np.ndarray, colour: np.ndarray | int) -> None:
    """In place: grid[n, H, W] takes `colour` ([n] or scalar) where mask[n, H, W]."""
    c = np.asarray(colour)
    if c.ndim:
        c = c[:, None, None]
    np.copyto(grid, np.broadcast_to(c, grid.shape).astype(grid.dtype), where=mask)


def colour_boxes(grids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per colour statistics of grids [..., H, W]: cell counts [..., 11] and half-open bounding
    boxes [..., 11, 4] (i1, j1, i2, j2); an absent colour has count 0 and an empty box."""
    h, w = grids.shape[-2:]
    onehot = grids[..., None] == np.arange(11)  # [..., H, W, 11]
    counts = onehot.sum(axis=(-3, -2))
    rows_any = onehot.any(axis=-2)  # [..., H, 11]
    cols_any = onehot.any(axis=-3)  # [..., W, 11]
    i1 = np.where(rows_any.any(-2), rows_any.argmax(-2), 0)
    i2 = np.where(rows_any.any(-2), h - rows_any[..., ::-1, :].argmax(-2), 0)
    j1 = np.where(cols_any.any(-2), cols_any.argmax(-2), 0)
    j2 = np.where(cols_any.any(-2), w - cols_any[..., ::-1, :].argmax(-2), 0)
    return counts, np.stack([i1, j1, i2, j2], axis=-1)


def is_filled_box(counts: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """[..., 11] True where a present colour exactly fills its bounding box."""
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    return (counts > 0) & (counts == area)
