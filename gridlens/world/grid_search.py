"""Batched breadth-first search on grids: flood fill and shortest-path cells for a whole batch
of quizzes at once.

Bit-sliced cell sets: a batch of n boolean grids [n, H, W] stored as [H, W, ceil(n / 8)] uint8,
bit b of byte k of cell (i, j) being quiz 8k + b. A grid shift is then a slice over H or W and
every set operation handles eight quizzes per byte, whatever the grid size.
"""

from __future__ import annotations

import numpy as np


def pack_cells(mask: np.ndarray) -> np.ndarray:
    """Bool [n, H, W] -> bit-sliced [H, W, ceil(n/8)] uint8."""
    return np.packbits(np.moveaxis(mask, 0, -1), axis=-1, bitorder="little")


def unpack_cells(bits: np.ndarray, n: int) -> np.ndarray:
    """Bit-sliced [H, W, ceil(n/8)] uint8 -> bool [n, H, W]."""
    out = np.unpackbits(bits, axis=-1, count=n, bitorder="little").view(bool)
    return np.ascontiguousarray(np.moveaxis(out, -1, 0))


def unpack_quizzes(bits: np.ndarray, n: int) -> np.ndarray:
    """Per-quiz bits [ceil(n/8)] uint8 -> bool [n]."""
    return np.unpackbits(bits, count=n, bitorder="little").view(bool)


def dilate(bits: np.ndarray) -> np.ndarray:
    """Bit-sliced cells plus their 4-neighbours."""
    out = bits.copy()
    out[1:] |= bits[:-1]
    out[:-1] |= bits[1:]
    out[:, 1:] |= bits[:, :-1]
    out[:, :-1] |= bits[:, 1:]
    return out


def any_cell(bits: np.ndarray) -> np.ndarray:
    """Per-quiz bits [ceil(n/8)]: does the quiz have any cell in the set?"""
    return np.bitwise_or.reduce(bits.reshape(bits.shape[0] * bits.shape[1], -1), axis=0)


def flood(free: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """Bool [n, H, W]: the cells of `free` 4-connected to `seed` (seed cells must be free).

    Relaxation over the whole batch, stopping when nothing changes; at most H*W steps."""
    n, h, w = free.shape
    f, r = pack_cells(free), pack_cells(seed)
    for _ in range(h * w):
        nxt = dilate(r) & f
        if np.array_equal(nxt, r):
            break
        r = nxt
    return unpack_cells(r, n)


def shortest_path_cells(
    free: np.ndarray, start: np.ndarray, goal: np.ndarray, max_dist: int
) -> tuple[np.ndarray, np.ndarray]:
    """Shortest 4-connected paths inside `free` from the `start` cell to the `goal` cell.

    free, start, goal: bool [n, H, W], one start and one goal cell per quiz, both free.
    Returns (dist [n] int64: the path length, -1 where the goal is farther than `max_dist` or
    unreachable; cells [n, H, W] bool: every cell lying on some shortest path, endpoints
    included, which are the cells x with d(start, x) + d(x, goal) == dist).
    """
    n = len(free)
    f, reached, g = pack_cells(free), pack_cells(start), pack_cells(goal)
    layers = [reached]  # layers[k]: cells at distance exactly k from start
    dist = np.full(n, -1, dtype=np.int64)
    dist[unpack_quizzes(any_cell(reached & g), n)] = 0
    for k in range(1, max_dist + 1):
        nxt = dilate(reached) & f
        new = nxt & ~reached
        if not new.any():
            break
        layers.append(new)
        reached = nxt
        hit = unpack_quizzes(any_cell(new & g), n)
        dist[hit] = k
    # Walk back from the goal: a cell at distance k is on a shortest path iff it is the goal
    # (then k == dist) or it neighbours a cell at distance k + 1 that is.
    on_path = np.zeros_like(reached)
    cells = np.zeros_like(reached)
    for layer in reversed(layers):
        on_path = layer & (dilate(on_path) | g)
        cells |= on_path
    return dist, unpack_cells(cells, n)
