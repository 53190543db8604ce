"""half_fill: directions, line positions and rectangles against the original's (its reference
quizzes and the exact marginals of its rejection sampler), shared colour roles and direction,
other grid sizes."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import chi2_stat, chi2_threshold, grafted_pairs, recolour, reference_grids

from gridlens.errors import GridSizeError
from gridlens.world import generate, shapes
from gridlens.world.tasks.half_fill import TASK

N = 20000


def _parse_pair(x, fx):
    """One pair of grids -> ([(body colour, line colour, rect box, line box)], last, side)."""
    found = []
    for c in np.unique(x[x > 0]):
        rows, cols = np.nonzero(x == c)
        box = (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1)
        found.append((int(c), box, len(rows) == (box[2] - box[0]) * (box[3] - box[1])))
    rects, last, side = [], None, None
    for body, box, filled in found:
        if filled:
            continue
        (line, line_box) = next(
            (c, b)
            for c, b, f in found
            if f and b[0] >= box[0] and b[1] >= box[1] and b[2] <= box[2] and b[3] <= box[3]
        )
        rects.append((body, line, box, line_box))
        if (fx == body).sum() != (x == body).sum():
            last = len(rects) - 1
            rows, cols = np.nonzero(fx == line)
            half = (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1)
            cols = half[1] == box[1] and half[3] == box[3]
            rows_ = half[0] == box[0] and half[2] == box[2]
            sides = [
                cols and half[2] == box[2] and half[0] > box[0],
                cols and half[0] == box[0] and half[2] < box[2],
                rows_ and half[3] == box[3] and half[1] > box[1],
                rows_ and half[1] == box[1] and half[3] < box[3],
            ]
            assert sum(sides) == 1
            side = sides.index(True)
    return rects, last, side


@pytest.fixture(scope="module")
def ref_quizzes(reference_dir):
    grids = reference_grids(reference_dir, "half_fill")
    return [(_parse_pair(q[0], q[1]), _parse_pair(q[2], q[3])) for q in grids]


@pytest.fixture(scope="module")
def ours():
    return TASK.generate(N, np.random.default_rng(0))


def test_direction_is_uniform_and_shared(ours, ref_quizzes):
    chi2, df = chi2_stat(np.bincount(ours.params["direction"], minlength=4), np.full(4, N / 4))
    assert chi2 < chi2_threshold(df)
    sides = []
    for (rects_a, last_a, side_a), (rects_b, last_b, side_b) in ref_quizzes:
        assert side_a == side_b and len(rects_a) == len(rects_b) == 3
        # The same colours play the same roles in both pairs, the last rectangle's included.
        assert sorted(r[:2] for r in rects_a) == sorted(r[:2] for r in rects_b)
        assert rects_a[last_a][:2] == rects_b[last_b][:2]
        sides.append(side_a)
    chi2, df = chi2_stat(np.bincount(sides, minlength=4), np.full(4, len(sides) / 4))
    assert chi2 < chi2_threshold(df)
    # Ours parse back to their parameters.
    for q in range(20):
        for pair, (x, fx) in enumerate(((0, 1), (2, 3))):
            rects, last, side = _parse_pair(ours.grids[q, x], ours.grids[q, fx])
            assert side == ours.params["direction"][q]
            assert rects[last][:2] == tuple(ours.params["colors"][q, 4:])
            expected = ours.params["rects_A" if pair == 0 else "rects_B"][q, 2]
            assert tuple(rects[last][2]) == tuple(expected)


def test_lines_sit_where_the_original_draws_them(ref_quizzes):
    """Row (i1+i2)//2 for side 0, (i1+i2-1)//2 for side 1 (columns for 2, 3): the two differ
    on even sizes, which the reference shows; on odd sizes only f(X) tells them apart."""
    even_seen = set()
    for pairs in ref_quizzes:
        for rects, _, side in pairs:
            for _, _, (i1, j1, i2, j2), line in rects:
                a, b = (i1, i2) if side < 2 else (j1, j2)
                mid = (a + b) // 2 if side % 2 == 0 else (a + b - 1) // 2
                expected = (mid, j1, mid + 1, j2) if side < 2 else (i1, mid, i2, mid + 1)
                assert tuple(line) == expected
                if (b - a) % 2 == 0:
                    even_seen.add(side)
    assert even_seen == {0, 1, 2, 3}


def test_rectangles_follow_the_originals_distribution(ours, ref_quizzes):
    table = shapes.rectangle_table(10, 10)
    rects = table.rects
    free = (~table.overlap).astype(np.float32)
    p = ((free @ free) * free).sum(1)  # every slot: uniform over ordered disjoint triples
    p = p / p.sum()
    index = np.full((11, 11, 11, 11), -1)
    index[tuple(rects.T)] = np.arange(len(rects))
    ours_rects = np.stack([ours.params["rects_A"], ours.params["rects_B"]], 1)
    for slot in range(3):
        seen = np.bincount(
            index[tuple(ours_rects[:, :, slot].reshape(-1, 4).T)], minlength=len(rects)
        )
        chi2, df = chi2_stat(seen, p * 2 * N)
        assert df > 500 and chi2 < chi2_threshold(df), slot
    area = (rects[:, 2] - rects[:, 0]) * (rects[:, 3] - rects[:, 1])
    ref_area = np.array(
        [(r[2][2] - r[2][0]) * (r[2][3] - r[2][1]) for q in ref_quizzes for pr in q for r in pr[0]]
    )
    mean, var = (p * area).sum(), (p * area**2).sum() - (p * area).sum() ** 2
    assert abs(ref_area.mean() - mean) < 4 * np.sqrt(var / len(ref_area))


def test_checker_requires_shared_direction_and_colour_roles():
    a, b, mixed = grafted_pairs(TASK)
    ca = a.params["colors"]
    same = a.params["direction"] == b.params["direction"]
    assert same.any() and (~same).any()
    assert np.array_equal(TASK.check(mixed), same)
    for perm in ([1, 0, 2, 3, 4, 5], [0, 1, 2, 3, 5, 4], [0, 1, 4, 5, 2, 3], [2, 3, 0, 1, 4, 5]):
        swapped = a.grids.copy()
        swapped[:, 2:] = recolour(a.grids[:, 2:], ca, ca[:, perm])
        ok = TASK.check(swapped)
        # Exchanging the two static rectangles' colour pairs keeps every role; nothing else does.
        assert ok.all() if perm == [2, 3, 0, 1, 4, 5] else not ok.any(), perm


@pytest.mark.parametrize("size", [(6, 6), (8, 8), (12, 12), (7, 13), (11, 9)])
def test_other_grid_sizes(size):
    h, w = size
    sample = TASK.generate(300, np.random.default_rng(1), h, w)
    assert sample.grids.shape == (300, 4, h, w)
    assert TASK.check(sample.grids).all()
    for q in range(10):
        rects, _, side = _parse_pair(sample.grids[q, 2], sample.grids[q, 3])
        assert side == sample.params["direction"][q] and len(rects) == 3
    assert np.array_equal(sample.objects >= 0, sample.grids != 0)
    batch = generate("half_fill", 50, seed=0, height=h, width=w)
    assert batch.tokens.shape == (50, 4 * (1 + h * w))


@pytest.mark.parametrize("size", [(5, 5), (5, 12), (12, 5)])
def test_too_small_grid_raises(size):
    with pytest.raises(GridSizeError):
        TASK.generate(10, np.random.default_rng(0), *size)
    with pytest.raises(GridSizeError):
        generate("half_fill", 10, height=size[0], width=size[1])
