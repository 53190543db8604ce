"""bounce: the walks' statistics match the original's reference quizzes and facts derived from
the rules (bounds, the occupancy law of the obstacles, rotation symmetry), other sizes work,
the checker re-runs the walk."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import reference_grids

from gridlens.errors import GridSizeError
from gridlens.world import get_task

TASK = get_task("bounce")
DIRECTIONS = ([-1, 0], [1, 0], [0, -1], [0, 1])


def _stats(x: np.ndarray, fx: np.ndarray) -> dict[str, np.ndarray]:
    """Per pair, from the grids alone: moves of the walk, visible obstacles, capped walks.

    Only the heading cell (c2 -> c1) and the interior path cells (0 -> c2) change, so the
    walk has (changed cells + 1) moves; coloured cells of f(X) are the obstacles, the start
    and the cells moved to.
    """
    w = x.shape[-1]
    moves = (x != fx).sum(axis=(-2, -1)) + 1
    obstacles = (fx != 0).sum(axis=(-2, -1)) - moves - 1
    return {"moves": moves, "obstacles": obstacles, "capped": moves == w}


def _close(a: np.ndarray, b: np.ndarray, what: str, floor: float = 0.0) -> None:
    """Means of two independent samples agree within 4.5 standard errors of their difference
    (`floor` bounds each standard deviation below, for statistics that are nearly constant)."""
    a, b = a.ravel().astype(float), b.ravel().astype(float)
    se = np.hypot(max(a.std(), floor) / np.sqrt(len(a)), max(b.std(), floor) / np.sqrt(len(b)))
    assert abs(a.mean() - b.mean()) < 4.5 * se, (what, a.mean(), b.mean(), se)


def test_walk_statistics_match_the_reference(reference_dir):
    ref = reference_grids(reference_dir, "bounce")
    sample = TASK.generate(10000, np.random.default_rng(2))
    ours = _stats(sample.grids[:, 0::2], sample.grids[:, 1::2])
    theirs = _stats(ref[:, 0::2], ref[:, 1::2])
    for key in ("moves", "obstacles", "capped"):
        _close(ours[key], theirs[key], key, floor=0.3)
    _close(ours["moves"] <= 5, theirs["moves"] <= 5, "short walks", floor=0.3)
    _close(ours["obstacles"] == 10, theirs["obstacles"] == 10, "no hidden obstacle", floor=0.3)
    for key in ("moves", "obstacles"):
        lo, hi = theirs[key].min(), theirs[key].max()
        assert lo >= ours[key].min() and hi <= ours[key].max(), key  # support covers theirs
    assert TASK.check(ref).all()  # the original's quizzes pass our checker


@pytest.mark.parametrize("size", [(10, 10), (6, 9), (9, 6)])
def test_walk_statistics_follow_from_the_rules(size):
    h, w = size
    hw, n = h * w, 10000
    sample = TASK.generate(n, np.random.default_rng(1), h, w)
    p = sample.params
    stats = _stats(sample.grids[:, 0::2], sample.grids[:, 1::2])
    assert np.array_equal(stats["moves"], p["moves"])
    # Kept walks make at least 3 moves; the step counter caps them at `width` moves.
    assert stats["moves"].min() == 3 and stats["moves"].max() == w
    # (H*W)//10 obstacle cells drawn with replacement, one of them possibly under the start.
    obstacles = stats["obstacles"].ravel()
    assert obstacles.max() == hw // 10
    # Occupancy law: k draws among N cells hit N(1 - (1 - 1/N)^k) distinct cells on average,
    # and the uniform start hides each with probability 1/N. Rejecting short walks shifts
    # this by < 0.01 (measured); drawing distinct cells instead would add about 0.4.
    expected = hw * (1 - (1 - 1 / hw) ** (hw // 10)) * (1 - 1 / hw)
    assert abs(obstacles.mean() - expected) < 0.05, (obstacles.mean(), expected)
    # The start is c1 in X and the first cell moved to (the only c2 cell of X) is next to it:
    # straight ahead when that cell is free (inside and no obstacle), else a turn.
    start, heading = p["start"].reshape(-1, 2), p["heading"].reshape(-1, 2)
    x = sample.grids[:, 0::2].reshape(-1, h, w)
    rows = np.arange(2 * n)
    assert (x[rows, start[:, 0], start[:, 1]] == np.repeat(p["colors"][:, 1], 2)).all()
    heads = x == np.repeat(p["colors"][:, 2], 2)[:, None, None]
    assert (heads.sum((1, 2)) == 1).all()
    first = np.stack(np.divmod(heads.reshape(2 * n, -1).argmax(1), w), axis=1)
    assert (np.abs(first - start).sum(1) == 1).all()
    ahead = start + heading
    inside = (ahead >= 0).all(1) & (ahead < [h, w]).all(1)
    clipped = np.minimum(np.maximum(ahead, 0), [h - 1, w - 1])
    c0 = np.repeat(p["colors"][:, 0], 2)
    free = inside & (x[rows, clipped[:, 0], clipped[:, 1]] != c0)
    assert free.mean() > 0.5 and (first[free] == ahead[free]).all()
    assert (first[~free] != ahead[~free]).any(1).all()
    # The rules commute with a half turn of the grid (p -> corner - p, d -> -d, and the left
    # of -d is minus the left of d): opposite headings are equally likely and the start is
    # centred. On a square grid they commute with a quarter turn: all 4 headings equally likely.
    share = np.array([np.mean((heading == d).all(1)) for d in DIRECTIONS])
    se = np.sqrt(0.25 * 0.75 / len(heading))
    assert abs(share[0] - share[1]) < 6 * se and abs(share[2] - share[3]) < 6 * se, share
    if h == w:
        assert (abs(share - 0.25) < 4.5 * se).all(), share
    for axis, extent in ((0, h), (1, w)):
        se = extent / np.sqrt(12 * len(start))
        assert abs(start[:, axis].mean() - (extent - 1) / 2) < 4.5 * se, axis


@pytest.mark.parametrize("size", [(8, 8), (12, 12), (7, 12), (12, 7), (4, 4), (4, 20)])
def test_other_grid_sizes(size):
    sample = TASK.generate(300, np.random.default_rng(3), *size)
    assert sample.grids.shape == (300, 4, *size)
    assert TASK.check(sample.grids).all()
    assert (sample.params["moves"] >= 3).all() and (sample.params["moves"] <= size[1]).all()
    wrong = TASK.other_parameters(sample, np.random.default_rng(4))
    bad = sample.grids.copy()
    bad[:, 3] = wrong
    assert not TASK.check(bad).any()


@pytest.mark.parametrize("size", [(3, 3), (3, 10), (10, 3)])
def test_too_small_grid_raises(size):
    with pytest.raises(GridSizeError):
        TASK.generate(10, np.random.default_rng(0), *size)


def test_checker_reruns_the_walk():
    sample = TASK.generate(300, np.random.default_rng(5))
    g = sample.grids
    assert TASK.check(g).all()
    c0 = sample.params["colors"][:, 0]
    # Remove one obstacle from f(B) only: the obstacles must stay.
    bad = g.copy()
    for q in range(len(bad)):
        cells = np.argwhere(bad[q, 3] == c0[q])
        i, j = cells[0]
        bad[q, 3, i, j] = 0
    assert not TASK.check(bad).any()
    # Shorten the walk in f(B): end one move early.
    short = g.copy()
    ok = np.zeros(len(g), dtype=bool)
    c1, c2 = sample.params["colors"][:, 1], sample.params["colors"][:, 2]
    for q in range(len(g)):
        end = tuple(sample.params["end"][q, 1])
        nb = [
            (end[0] + a, end[1] + b)
            for a, b in ((-1, 0), (1, 0), (0, -1), (0, 1))
            if 0 <= end[0] + a < 10 and 0 <= end[1] + b < 10
        ]
        prev = [p for p in nb if short[q, 3][p] == c2[q]]
        if len(prev) == 1 and sample.params["moves"][q, 1] > 3:
            short[q, 3][end] = 0
            short[q, 2][end] = 0
            short[q, 3][prev[0]] = c1[q]
            short[q, 2][prev[0]] = c1[q]
            ok[q] = True
    assert ok.sum() > 100
    assert not TASK.check(short[ok]).any()
    # The two pairs must share colours.
    swapped = g.copy()
    a, b = sample.params["colors"][:, 1, None, None], sample.params["colors"][:, 2, None, None]
    for k in (2, 3):
        swapped[:, k] = np.where(g[:, k] == a, b, np.where(g[:, k] == b, a, g[:, k]))
    assert not TASK.check(swapped).any()
