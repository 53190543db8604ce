"""Vectorised building blocks shared by the task generators and checkers: rejection sampling,
the rectangle table and an exact joint sampler of disjoint rectangles, distinct colours,
painting and per-quiz lookups, per-colour statistics and checker input validation. Every
random function takes an explicit numpy Generator."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, lru_cache

import numpy as np

from gridlens.errors import GridSizeError
from gridlens.resources import check_fits

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
    r = count_rectangles(height, width, min_height, min_width, max_area)
    check_fits(r * r + r * height * width, f"the rectangle table of a {height}x{width} grid",
               GridSizeError)  # fmt: skip
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


def count_rectangles(
    height: int, width: int, min_height: int, min_width: int, max_area: int
) -> int:
    """How many rectangles `rectangle_table` holds (without listing them)."""
    total = 0
    for h in range(min_height, height + 1):
        widest = min(width, max_area // h)
        if widest < min_width:
            break
        ws = widest - min_width + 1  # sum over w of (width - w + 1), w = min_width..widest
        total += (height - h + 1) * (ws * (width + 1) - (min_width + widest) * ws // 2)
    return total


@cache
def disjoint_neighbours(
    height: int, width: int, min_height: int = 3, min_width: int = 3, max_area: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For `rectangle_table(...)`: (offsets [R], degrees [R], flat [P]), the rectangles
    disjoint from rectangle r being flat[offsets[r] : offsets[r] + degrees[r]]."""
    return neighbour_lists(~rectangle_table(height, width, min_height, min_width, max_area).overlap)


def neighbour_lists(adjacent: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR lists (offsets [R], degrees [R], flat [P] int32) of the True columns of each row of
    an [R, R] bool matrix."""
    degree = adjacent.sum(1)
    offsets = np.concatenate([[0], np.cumsum(degree)[:-1]])
    index = np.int32 if degree.sum() < 2**31 else np.int64
    degree, offsets = degree.astype(index), offsets.astype(index)
    chunks = [  # by blocks of rows: np.nonzero's int64 outputs are large on big grids
        np.nonzero(adjacent[start : start + 256])[1].astype(np.int32)
        for start in range(0, len(adjacent), 256)
    ]
    flat = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int32)
    for a in (offsets, degree, flat):
        a.setflags(write=False)
    return offsets, degree, flat


def alias_table(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walker/Vose alias table (accept [R] float, alias [R] int) for sampling indices with
    probability proportional to `weights` (non-negative, not all zero) in O(1) each."""
    w = np.asarray(weights, dtype=np.float64)
    r = len(w)
    scaled = w * (r / w.sum())
    accept = np.ones(r)
    alias = np.arange(r, dtype=np.int32)
    small = [i for i in range(r) if scaled[i] < 1.0]
    large = [i for i in range(r) if scaled[i] >= 1.0]
    while small and large:
        s, g = small.pop(), large.pop()
        accept[s], alias[s] = scaled[s], g
        scaled[g] -= 1.0 - scaled[s]
        (small if scaled[g] < 1.0 else large).append(g)
    for i in small:  # float rounding leftovers, scaled[i] ~ 1: keep themselves
        if w[i] > 0:
            accept[i] = 1.0
        else:
            accept[i], alias[i] = 0.0, int(np.argmax(w))
    for a in (accept, alias):
        a.setflags(write=False)
    return accept, alias


def pick_weighted(
    rng: np.random.Generator, table: tuple[np.ndarray, np.ndarray], m: int
) -> np.ndarray:
    """[m] indices drawn from an `alias_table`."""
    accept, alias = table
    j = rng.integers(0, len(accept), m, dtype=np.int32)
    return np.where(rng.random(m) < accept[j], j, alias[j])


def pick_neighbour(
    rng: np.random.Generator, lists: tuple[np.ndarray, np.ndarray, np.ndarray], i: np.ndarray
) -> np.ndarray:
    """[m] one uniform neighbour of each rectangle i (which must have at least one)."""
    offsets, degree, flat = lists
    d = degree[i]
    k = np.minimum((rng.random(len(i)) * d).astype(d.dtype), d - 1)
    return flat[offsets[i] + k]


def pair_index(i: np.ndarray, j: np.ndarray, r: int) -> np.ndarray:
    """i * r + j, the flat index into an [r, r] table, without int32 overflow."""
    if r * r >= 2**31:
        i = i.astype(np.int64)
    return i * r + j


@lru_cache(maxsize=64)
def _star_proposal(
    k: int, size: tuple[int, int, int, int, int | None], last: bytes | None
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]] | None:
    """The alias table of the centre rectangle (weight deg^(k-2) x deg_last) and the neighbour
    lists of the last rectangle (disjoint from the centre and allowed by the `last` mask), or
    None when no centre has both."""
    lists = disjoint_neighbours(*size)
    if last is None:
        last_lists = lists
    else:
        allowed = np.frombuffer(last, dtype=bool)
        last_lists = neighbour_lists(~rectangle_table(*size).overlap & allowed[None, :])
    weight = lists[1].astype(np.float64) ** (k - 2) * last_lists[1]
    return (alias_table(weight), last_lists) if weight.any() else None


def sample_rectangles(
    rng: np.random.Generator,
    n: int,
    k: int,
    height: int,
    width: int,
    what: str,
    disjoint: bool = True,
    accept: Callable[[np.ndarray], np.ndarray] | None = None,
    last: np.ndarray | None = None,
    min_height: int = 3,
    min_width: int = 3,
    max_area: int | None = None,
) -> np.ndarray:
    """[n, k] indices into `rectangle_table(...)` of k rectangles per row, uniform over the
    ordered k-tuples that are pairwise disjoint (if `disjoint`), whose last rectangle is one of
    the indices `last` (any when None) and that pass `accept(rects [m, k, 4]) -> [m] bool`:
    the original's `rec_coo(k, prevent_overlap)` redrawn until the tuple is accepted.

    Disjoint tuples (k >= 2) are proposed as a star: rectangle 0 with probability proportional
    to deg(r0)^(k-2) x deg_last(r0) (deg: rectangles disjoint from it; deg_last: those also
    allowed last), the others uniform among the rectangles disjoint from r0 (the last among the
    allowed ones), kept when they are pairwise disjoint too. Every valid tuple has proposal
    probability 1 / Z, so kept tuples are uniform; for k = 3 on 10x10, 22% are kept against
    1.8% for independent uniform rectangles, and k = 2 needs no rejection at all.
    """
    size = (height, width, min_height, min_width, max_area)
    table = rectangle_table(*size)
    r = len(table.rects)
    pool = None
    if last is not None:
        allowed = np.zeros(r, dtype=bool)
        allowed[np.asarray(last, dtype=np.int64)] = True
        pool = np.flatnonzero(allowed)
        if not len(pool):
            raise GridSizeError(f"no rectangle is allowed last in {what} on {height}x{width}")
    overlap = table.overlap.ravel()
    star = disjoint and k >= 2
    if star:
        proposal = _star_proposal(k, size, None if pool is None else allowed.tobytes())
        if proposal is None:
            raise GridSizeError(
                f"could not generate {what}: no {k} disjoint rectangles fit a {height}x{width} grid"
            )
        first, last_lists = proposal
        lists = disjoint_neighbours(*size)

    def propose(m: int):
        if star:
            idx = np.empty((m, k), dtype=np.int64)
            idx[:, 0] = pick_weighted(rng, first, m)
            for a in range(1, k - 1):
                idx[:, a] = pick_neighbour(rng, lists, idx[:, 0])
            idx[:, k - 1] = pick_neighbour(rng, last_lists, idx[:, 0])
        else:
            idx = rng.integers(0, r, size=(m, k))
            if pool is not None:
                idx[:, k - 1] = pool[rng.integers(0, len(pool), m)]
        ok = np.ones(m, dtype=bool)
        if disjoint:
            for a in range(1, k):
                for b in range(a + 1, k):
                    ok &= ~overlap[idx[:, a] * r + idx[:, b]]
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
    boxes [..., 11, 4] (i1, j1, i2, j2); an absent colour has count 0 and an empty box, values
    outside 0..10 are ignored. Two bincounts over (grid, row, colour) and (grid, column,
    colour) instead of an 11-way one-hot: about 3x faster on 10x10 batches."""
    lead, (h, w) = grids.shape[:-2], grids.shape[-2:]
    g = grids.reshape(-1, h, w)
    g = np.where((g < 0) | (g > 10), 11, g).astype(np.int64, copy=False)  # 11: ignored
    m = len(g)
    base = np.arange(m)[:, None, None]
    by_row = np.bincount(
        ((base * h + np.arange(h)[None, :, None]) * 12 + g).ravel(), minlength=m * h * 12
    ).reshape(m, h, 12)[..., :11]
    by_col = np.bincount(
        ((base * w + np.arange(w)[None, None, :]) * 12 + g).ravel(), minlength=m * w * 12
    ).reshape(m, w, 12)[..., :11]
    counts = by_row.sum(1)
    rows_any, cols_any = by_row > 0, by_col > 0
    present = counts > 0
    i1 = np.where(present, rows_any.argmax(1), 0)
    i2 = np.where(present, h - rows_any[:, ::-1].argmax(1), 0)
    j1 = np.where(present, cols_any.argmax(1), 0)
    j2 = np.where(present, w - cols_any[:, ::-1].argmax(1), 0)
    boxes = np.stack([i1, j1, i2, j2], axis=-1)
    return counts.reshape(*lead, 11), boxes.reshape(*lead, 11, 4)


def colour_counts(grids: np.ndarray) -> np.ndarray:
    """[n, 11] cells of each colour in grids [n, H, W] (values outside 0..10 ignored)."""
    n, h, w = grids.shape
    flat = np.where((grids < 0) | (grids > 10), 11, grids).reshape(n, h * w)
    flat = flat + 12 * np.arange(n)[:, None]
    return np.bincount(flat.ravel(), minlength=12 * n).reshape(n, 12)[:, :11]


def is_filled_box(counts: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """[..., 11] True where a present colour exactly fills its bounding box."""
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    return (counts > 0) & (counts == area)


def rectangle_colours_ok(
    counts: np.ndarray, boxes: np.ndarray, h: int, w: int, k: int = 3
) -> np.ndarray:
    """[...] True where a grid (colour_boxes stats [..., 11], [..., 11, 4]) holds exactly k
    colours, each a filled rectangle of at least 3x3 and area at most h*w//2."""
    present = counts[..., 1:] > 0
    filled = is_filled_box(counts, boxes)[..., 1:]
    hh = boxes[..., 1:, 2] - boxes[..., 1:, 0]
    ww = boxes[..., 1:, 3] - boxes[..., 1:, 1]
    good = ~present | (filled & (hh >= 3) & (ww >= 3) & (hh * ww <= h * w // 2))
    return good.all(-1) & (present.sum(-1) == k)


def colour_grids(grids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Checker input: (int64 grids [n, 4, H, W] with values outside 0..10 replaced by 0,
    [n] True where a quiz has only colours 0..10); quizzes with other values are invalid."""
    grids = np.asarray(grids)
    if grids.ndim != 4 or grids.shape[1] != 4:
        raise ValueError(f"expected grids [n, 4, H, W], got shape {list(grids.shape)}")
    valid = (grids >= 0) & (grids <= 10)
    ok = valid.all(axis=(1, 2, 3))
    return np.where(valid, grids, 0).astype(np.int64, copy=False), ok


def per_cell(values: np.ndarray, grids: np.ndarray) -> np.ndarray:
    """values [n, 11] (one per colour), grids [n, H, W] -> values[n, grids[n, i, j]]."""
    n, h, w = grids.shape
    return np.take_along_axis(values, grids.reshape(n, h * w), axis=1).reshape(grids.shape)


def check_room(what: str, height: int, width: int, k: int = 3) -> None:
    """k disjoint 3x3 squares fit an H x W grid iff (H // 3) * (W // 3) >= k: every 3x3 square
    holds exactly one cell with both coordinates = 2 (mod 3), and aligned squares reach that
    bound."""
    room = (height // 3) * (width // 3)
    if room < k:
        raise GridSizeError(
            f"task {what!r} needs room for {k} disjoint 3x3 rectangles; a {height}x{width} grid "
            f"holds at most {room} (e.g. 9x9, 6x9 or 3x9 and larger hold 3)"
        )


@cache
def uint8_masks(height: int, width: int) -> np.ndarray:
    """`rectangle_table(H, W).masks` as uint8 0/1, for painting by multiplication."""
    m = rectangle_table(height, width).masks.astype(np.uint8)
    m.setflags(write=False)
    return m


def label_lookup(lut: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-quiz table lookup: lut [n, K] indexed by labels [n, ...] in 0..K-1."""
    n, k = lut.shape
    offsets = (np.arange(n, dtype=np.intp) * k).reshape(n, *([1] * (labels.ndim - 1)))
    return lut.ravel()[labels + offsets]


def colour_labels(labels: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """int64 grids from uint8 labels [n, ...] (0 background, k + 1 the k-th colour) and the
    colours [n, K] of each quiz."""
    n, k = colours.shape
    lut = np.zeros((n, k + 1), dtype=np.int64)
    lut[:, 1:] = colours
    return label_lookup(lut, labels)
