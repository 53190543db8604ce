"""scale: the pattern rectangles and marker position against the original's distribution and the
reference quizzes, the x2 scaling, hidden cells under the marker, other grid sizes."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import reference_grids

from gridlens.errors import GridSizeError
from gridlens.world import generate, get_task, shapes
from gridlens.world.tasks.scale import pattern_rectangles, side_limit

TASK = get_task("scale")


@pytest.fixture(scope="module")
def reference(reference_dir):
    return reference_grids(reference_dir, "scale")


@pytest.fixture(scope="module")
def ours():
    return TASK.generate(20000, np.random.default_rng(0))


@pytest.fixture(scope="module")
def our_stats(ours):
    return marker_and_pattern(ours.grids)


def marker_and_pattern(grids):
    """Marker position (i, j) and the number of pattern cells in each grid."""
    n = len(grids)
    counts, boxes = shapes.colour_boxes(grids)
    marker = (counts[:, :, 1:] == 3).all(1).argmax(1) + 1
    i, j = boxes[np.arange(n), 0, marker, 0], boxes[np.arange(n), 0, marker, 1]
    pattern = (grids != 0) & (grids != marker[:, None, None, None])
    return i, j, pattern.sum((2, 3))


def test_pattern_rectangles_are_the_original_loop_support():
    # torch.randint(6) for each corner, redrawn until i1 < i2, j1 < j2, min side <= 3.
    accepted = {
        (i1, j1, i2, j2)
        for i1 in range(6)
        for j1 in range(6)
        for i2 in range(6)
        for j2 in range(6)
        if i1 < i2 and j1 < j2 and min(i2 - i1, j2 - j1) <= 3
    }
    table = pattern_rectangles(10, 10)
    assert {tuple(r) for r in table.tolist()} == accepted and len(table) == len(accepted) == 216
    assert [side_limit(s, s) for s in (4, 8, 10, 12, 20)] == [1, 2, 3, 4, 6]


def test_marker_is_uniform_and_shared(reference, ours, our_stats):
    i, j, _ = our_stats
    assert np.array_equal(np.stack([i, j], 1), ours.params["origin"])
    cells = np.bincount(i * 5 + j, minlength=25)
    expected = len(i) / 25
    chi2 = ((cells - expected) ** 2 / expected).sum()
    assert chi2 < 24 + 5 * np.sqrt(48)
    ri, rj, _ = marker_and_pattern(reference)
    se = np.sqrt(2.0 / len(ri))  # sd of a uniform on 0..4 is sqrt(2)
    assert abs(ri.mean() - 2) < 4 * se and abs(rj.mean() - 2) < 4 * se
    assert ri.max() <= 4 and rj.max() <= 4


def test_pattern_size_matches_the_reference(reference, our_stats):
    _, _, ref_cells = marker_and_pattern(reference)
    _, _, cells = our_stats
    for g in (0, 1):  # pattern cells in X (some hidden by the marker), and in f(X)
        a, b = ref_cells[:, g::2].ravel(), cells[:, g::2].ravel()
        assert abs(a.mean() - b.mean()) < 4 * a.std() / np.sqrt(len(a)), (g, a.mean(), b.mean())


def test_f_is_the_pattern_scaled_from_the_origin(ours):
    grids, params = ours.grids[:2000], ours.params
    origin, colours = params["origin"][:2000], params["colors"][:2000]
    shift = np.concatenate([origin, origin], 1)[:, None]
    for x, key in ((0, "rects_A"), (2, "rects_B")):
        rel = params[key][:2000]
        in_x = shapes.rectangle_masks(rel + shift, 10, 10).any(1)
        in_f = shapes.rectangle_masks(2 * rel, 10, 10).any(1)
        marker = grids[:, x] == colours[:, 1, None, None]
        assert np.array_equal(marker, grids[:, x + 1] == colours[:, 1, None, None])
        assert marker.sum((1, 2)).min() == 3
        assert np.array_equal(grids[:, x] == colours[:, 0, None, None], in_x & ~marker)
        assert np.array_equal(grids[:, x + 1] == colours[:, 0, None, None], in_f & ~marker)


def test_cells_hidden_by_the_marker_may_go_either_way():
    """X cannot show pattern cells under its marker; f(X) may or may not have their blocks."""
    a = np.zeros((10, 10), dtype=np.int64)
    a[1, 1], a[2, 1], a[1, 2] = 7, 7, 7  # marker at (1, 1)
    a[2:4, 2:4] = 3  # pattern cells (1, 1), (1, 2), (2, 1), (2, 2) relative to the marker
    f = np.zeros_like(a)
    f[2:6, 2:6] = 3
    f[1, 1], f[2, 1], f[1, 2] = 7, 7, 7
    without = np.stack([a, f, a, f])[None]
    assert TASK.check(without).all()
    hidden = f.copy()
    hidden[0:2, 0:2] = 3  # relative cell (0, 0), hidden under the marker in X, was there
    hidden[1, 1] = 7
    assert TASK.check(np.stack([a, hidden, a, f])[None]).all()
    partial = f.copy()
    partial[0, 0] = 3  # half a block is no x2 scaling
    assert not TASK.check(np.stack([a, partial, a, f])[None]).any()


@pytest.mark.parametrize("size", [(4, 4), (5, 9), (8, 8), (12, 12), (7, 12), (12, 7), (20, 16)])
def test_other_grid_sizes(size):
    sample = TASK.generate(300, np.random.default_rng(1), *size)
    assert sample.grids.shape == (300, 4, *size)
    assert TASK.check(sample.grids).all()
    origin = sample.params["origin"]
    assert (origin[:, 0] < size[0] // 2).all() and (origin[:, 1] < size[1] // 2).all()
    bad = sample.grids.copy()
    bad[:, 3] = TASK.other_parameters(sample, np.random.default_rng(2))
    assert not TASK.check(bad).any()
    batch = generate("scale", 20, seed=3, height=size[0], width=size[1])
    assert TASK.check(batch.grids).all()


@pytest.mark.parametrize("size", [(3, 10), (10, 3), (2, 2)])
def test_too_small_grids_raise(size):
    with pytest.raises(GridSizeError):
        TASK.generate(10, np.random.default_rng(0), *size)
    with pytest.raises(GridSizeError):
        generate("scale", 10, height=size[0], width=size[1])


def test_large_grids_compute_masks_instead_of_tables():
    from gridlens.world.tasks.scale import _labels, _mask_tables, _pattern

    shifted, scaled = _mask_tables(10, 10)
    assert shifted is not None
    rng = np.random.default_rng(6)
    r = rng.integers(0, len(pattern_rectangles(10, 10)), (500, 3))
    origin = rng.integers(0, 5, (500, 2))
    rel = pattern_rectangles(10, 10)[r]
    shift = np.concatenate([origin, origin], 1)[:, None]
    by_table = _labels([shifted[origin[:, 0] * 5 + origin[:, 1], r[:, k]] for k in range(3)])
    assert np.array_equal(by_table, _pattern(rel + shift, 10, 10))
    assert np.array_equal(_labels([scaled[r[:, k]] for k in range(3)]), _pattern(2 * rel, 10, 10))
    assert _mask_tables(20, 16)[0] is None  # the per-origin table would be too large
    a = TASK.generate(200, np.random.default_rng(4), 20, 16)
    assert TASK.check(a.grids).all()
