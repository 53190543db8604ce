"""symbols: the sampling distribution against the exact one of the original (uniform over the
valid placements and targets, enumerated) and against the reference quizzes, the pointer
geometry, other grid sizes and too-small grids."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_works_at_size, reference_grids

from gridlens.errors import GridSizeError
from gridlens.world import generate
from gridlens.world.tasks import get_task

TASK = get_task("symbols")


def exact_distribution(h: int, w: int) -> dict[str, np.ndarray]:
    """The original's distribution of (symbol corner row, pointer quadrant, ambiguity).

    Its rejection loop makes every ordered placement of four corners at pairwise Chebyshev
    distance > 3, with every target q in 1..3 whose offset from the mean corner has no zero
    sign (the original asserts that), equally likely. Enumerated here."""
    pw = w - 2
    p = np.arange((h - 2) * pw)
    pi, pj = p // pw, p % pw
    compat = np.maximum(np.abs(pi[:, None] - pi), np.abs(pj[:, None] - pj)) > 3
    row = np.zeros(h - 2)
    quadrant = np.zeros(4)
    ambiguous = np.zeros(2)
    c12 = compat[:, :, None] & compat[:, None, :] & compat[None, :, :]  # [p1, p2, p3]
    i123 = np.stack(np.broadcast_arrays(pi[:, None, None], pi[None, :, None], pi[None, None]))
    j123 = np.stack(np.broadcast_arrays(pj[:, None, None], pj[None, :, None], pj[None, None]))
    for p0 in p:
        valid = c12 & compat[p0][:, None, None] & compat[p0][None, :, None] & compat[p0][None]
        if not valid.any():
            continue
        i, j = i123[:, valid], j123[:, valid]  # [3, v] corners of squares 1..3
        si = np.sign(4 * i - (i.sum(0) + pi[p0]))
        sj = np.sign(4 * j - (j.sum(0) + pj[p0]))
        for q in range(3):
            ok = (si[q] != 0) & (sj[q] != 0)
            row[pi[p0]] += ok.sum()
            quad = 2 * (si[q] > 0) + (sj[q] > 0)
            quadrant += np.bincount(quad[ok], minlength=4)
            same = ((si == si[q]) & (sj == sj[q])).sum(0) > 1
            ambiguous += np.bincount(same[ok].astype(int), minlength=2)
    return {k: v / v.sum() for k, v in (("row", row), ("quadrant", quadrant), ("amb", ambiguous))}


def grid_stats(grids: np.ndarray) -> dict[str, np.ndarray]:
    """Per pair, read off the grids: symbol corner row, pointer quadrant, and whether another
    square shares the target's quadrant."""
    h, w = grids.shape[-2:]
    x, fx = grids[:, 0::2].reshape(-1, h, w), grids[:, 1::2].reshape(-1, h, w)
    m = len(x)
    rows = np.arange(m)
    centre = np.argmax((x != fx).reshape(m, -1), -1)
    ci, cj = centre // w, centre % w
    counts = np.stack([(x == c).sum((1, 2)) for c in range(11)], 1)
    pointer = x == np.argmax(counts == 3, 1)[:, None, None]
    di = np.where(pointer[rows, np.minimum(ci + 1, h - 1), cj], 1, -1)
    dj = np.where(pointer[rows, ci, np.minimum(cj + 1, w - 1)], 1, -1)
    # top-left corners of the four squares (pointer cells count as the symbol's)
    squares = (counts == 9) | (counts == 6)
    top = np.full((m, 11), -1)
    left = np.full((m, 11), -1)
    for c in range(1, 11):
        cells = x == c
        any_row, any_col = cells.any(2), cells.any(1)
        top[:, c] = np.where(any_row.any(1), any_row.argmax(1), -1)
        left[:, c] = np.where(any_col.any(1), any_col.argmax(1), -1)
    sum_i, sum_j = (top * squares).sum(1), (left * squares).sum(1)
    qi = np.sign(4 * top - sum_i[:, None]) == di[:, None]
    qj = np.sign(4 * left - sum_j[:, None]) == dj[:, None]
    in_quadrant = (qi & qj & (counts == 9)).sum(1)
    return {
        "row": ci - 1,
        "quadrant": 2 * (di > 0) + (dj > 0),
        "amb": (in_quadrant > 1).astype(int),
    }


def chi2(observed: np.ndarray, expected: np.ndarray) -> tuple[float, int]:
    counts = np.bincount(observed, minlength=len(expected))
    e = expected * len(observed)
    keep = e > 0
    assert counts[~keep].sum() == 0, "outcomes the original cannot produce"
    return float(((counts[keep] - e[keep]) ** 2 / e[keep]).sum()), int(keep.sum() - 1)


def assert_matches(sample: dict, exact: dict, label: str) -> None:
    for key, p in exact.items():
        stat, df = chi2(sample[key], p)
        assert stat <= df + 5 * np.sqrt(2 * df), f"{key} vs {label}: chi2 {stat:.1f} on {df} df"


@pytest.fixture(scope="module")
def exact10():
    return exact_distribution(10, 10)


def test_distribution_matches_exact_original(exact10):
    sample = TASK.generate(10000, np.random.default_rng(21))
    stats = grid_stats(sample.grids)
    assert_matches(stats, exact10, "exact")
    # The grid reading agrees with the recorded parameters.
    pointer = np.stack([sample.params["pointer_A"], sample.params["pointer_B"]], 1).reshape(-1, 2)
    assert np.array_equal(stats["quadrant"], 2 * (pointer[:, 0] > 0) + (pointer[:, 1] > 0))
    # The target is a per-pair draw: the two pairs of a quiz often differ.
    assert 0.2 < (sample.params["target_A"] == sample.params["target_B"]).mean() < 0.5


def test_distribution_matches_reference(reference_dir, exact10):
    stats = grid_stats(reference_grids(reference_dir, "symbols"))
    assert_matches(stats, exact10, "reference")


def test_non_square_distribution_matches_exact():
    sample = TASK.generate(4000, np.random.default_rng(22), 9, 12)
    assert_matches(grid_stats(sample.grids), exact_distribution(9, 12), "exact 9x12")


def test_pointer_aims_at_the_target():
    s = TASK.generate(500, np.random.default_rng(3), 11, 9)
    rows = np.arange(500)
    for g, tag in ((0, "A"), (2, "B")):
        corners, q = s.params[f"corners_{tag}"], s.params[f"target_{tag}"]
        pointer = s.params[f"pointer_{tag}"]
        offset = 4 * corners[rows, q] - corners.sum(1)
        assert np.array_equal(np.sign(offset), pointer)
        ci, cj = corners[:, 0, 0] + 1, corners[:, 0, 1] + 1
        assert (s.grids[rows, g + 1, ci, cj] == s.params["colors"][rows, q]).all()
        assert (s.grids[rows, g, ci, cj] == s.params["colors"][:, 0]).all()
        marker = s.params["colors"][:, 4]
        assert (s.grids[rows, g, ci + pointer[:, 0], cj + pointer[:, 1]] == marker).all()
        assert ((s.grids[:, g] != s.grids[:, g + 1]).sum((1, 2)) == 1).all()
        assert (s.roles[rows, g + 1, ci, cj] == 5).all()


@pytest.mark.parametrize("size", [(8, 8), (12, 12), (8, 13), (15, 9)])
def test_other_grid_sizes(size):
    assert_works_at_size(TASK, "symbols", *size)


@pytest.mark.parametrize("size", [(7, 10), (10, 7), (3, 3)])
def test_too_small_grid_raises(size):
    with pytest.raises(GridSizeError):
        TASK.generate(10, np.random.default_rng(0), *size)
    with pytest.raises(GridSizeError):
        generate("symbols", 10, height=size[0], width=size[1])


def test_checker_survives_garbage():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 11, (300, 4, 10, 10))
    sparse = np.where(rng.random((300, 4, 10, 10)) < 0.9, 0, noise)
    edge = np.full((2, 4, 10, 10), 5)
    edge[:, :, -1] = 0  # background only in the last row
    for grids in (noise, sparse, edge, np.zeros((4, 4, 10, 10), np.int64), noise[:0]):
        assert not TASK.check(grids).any()


def test_target_is_unique_on_small_grids(exact10):
    # Up to 10x10 the pointed quadrant never holds another square than the target...
    assert exact10["amb"][1] == 0
    assert exact_distribution(8, 10)["amb"][1] == 0
    assert exact_distribution(8, 11)["amb"][1] > 0


def test_ambiguous_targets_are_accepted_on_large_grids():
    # ... on wider ones it can (about 8% of pairs on 12x12): either colour is then right.
    s = TASK.generate(2000, np.random.default_rng(4), 12, 12)
    n = len(s.grids)
    corners, q = s.params["corners_B"], s.params["target_B"]
    quadrant = np.sign(4 * corners - corners.sum(1, keepdims=True))
    same = (quadrant == quadrant[np.arange(n), q][:, None]).all(-1)
    same[:, 0] = False
    same[np.arange(n), q] = False
    rows = np.flatnonzero(same.any(-1))
    assert 0.04 < len(rows) / n < 0.12
    other = np.argmax(same[rows], -1)
    alt = s.grids[rows].copy()
    ci, cj = corners[rows, 0, 0] + 1, corners[rows, 0, 1] + 1
    alt[np.arange(len(rows)), 3, ci, cj] = s.params["colors"][rows, other]
    assert TASK.check(alt).all()
    # A square outside the quadrant is never accepted.
    outside = ~(quadrant == quadrant[np.arange(n), q][:, None]).all(-1)
    outside[:, 0] = False
    rows = np.flatnonzero(outside.any(-1))
    wrong = np.argmax(outside[rows], -1)
    bad = s.grids[rows].copy()
    ci, cj = corners[rows, 0, 0] + 1, corners[rows, 0, 1] + 1
    bad[np.arange(len(rows)), 3, ci, cj] = s.params["colors"][rows, wrong]
    assert not TASK.check(bad).any()
