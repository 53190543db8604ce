"""corners: polarity and rectangle distribution against the reference quizzes, the drawing of
the two L corners, other grid sizes and grids too small for three rectangles."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import reference_grids

from gridlens.errors import GridSizeError
from gridlens.world import generate, get_task, shapes
from gridlens.world.tasks.corners import corners_of, fill_corners

TASK = get_task("corners")


@pytest.fixture(scope="module")
def reference(reference_dir):
    return reference_grids(reference_dir, "corners")


@pytest.fixture(scope="module")
def ours():
    return TASK.generate(20000, np.random.default_rng(0))


def polarity_of(grids):
    n = len(grids)
    return (corners_of(grids[:, 1], np.ones(n, dtype=np.int64)) == grids[:, 0]).all((1, 2))


def test_polarity_is_shared_and_fair(reference, ours):
    assert np.array_equal(polarity_of(ours.grids), ours.params["polarity"] == 1)
    assert abs(ours.params["polarity"].mean() - 0.5) < 0.015
    # Reference: 200 fair coin flips (binomial sd ~7).
    assert abs(polarity_of(reference).sum() - 100) < 30


def test_rectangle_sizes_match_the_reference(reference, ours):
    def sizes(g):
        counts, boxes = shapes.colour_boxes(g)
        present, boxes = counts[:, 1:] > 0, boxes[:, 1:]
        return (boxes[..., 2] - boxes[..., 0])[present], (boxes[..., 3] - boxes[..., 1])[present]

    ref_h, ref_w = sizes(reference[:, 1::2].reshape(-1, 10, 10))
    h, w = sizes(ours.grids[:, 1::2].reshape(-1, 10, 10))
    for a, b in ((ref_h, h), (ref_w, w), (ref_h * ref_w, h * w)):
        se = a.std() / np.sqrt(len(a))
        assert abs(a.mean() - b.mean()) < 4 * se, (a.mean(), b.mean())


def test_corners_are_two_opposite_ls(ours):
    x, fx = ours.grids[:, 0], ours.grids[:, 1]
    polarity = ours.params["polarity"]
    # Six cells per rectangle (rectangles are at least 3x3, so the Ls never meet).
    assert ((x > 0).sum((1, 2)) == 18).all()
    assert (x[x > 0] == fx[x > 0]).all()
    rows = np.arange(len(x))
    i1, j1, i2, j2 = (ours.params["rects_A"][:, 0, k] for k in range(4))
    c = ours.params["colors"][:, 0]
    p0 = polarity == 0
    assert (x[rows, i1, j1] == np.where(p0, c, 0)).all()
    assert (x[rows, i2 - 1, j2 - 1] == np.where(p0, c, 0)).all()
    assert (x[rows, i1, j2 - 1] == np.where(p0, 0, c)).all()
    assert (x[rows, i2 - 1, j1] == np.where(p0, 0, c)).all()
    assert np.array_equal(fill_corners(x), fx)


@pytest.mark.parametrize("size", [(8, 8), (12, 12), (7, 12), (12, 6), (3, 9)])
def test_other_grid_sizes(size):
    sample = TASK.generate(300, np.random.default_rng(1), *size)
    assert sample.grids.shape == (300, 4, *size)
    assert TASK.check(sample.grids).all()
    bad = sample.grids.copy()
    bad[:, 3] = TASK.other_parameters(sample, np.random.default_rng(2))
    assert not TASK.check(bad).any()
    batch = generate("corners", 20, seed=3, height=size[0], width=size[1])
    assert TASK.check(batch.grids).all()


@pytest.mark.parametrize("size", [(5, 5), (4, 8), (2, 10)])
def test_too_small_grids_raise(size):
    with pytest.raises(GridSizeError):
        TASK.generate(10, np.random.default_rng(0), *size)
    with pytest.raises(GridSizeError):
        generate("corners", 10, height=size[0], width=size[1])


def test_checker_rejects_mixed_polarity(ours):
    grids = ours.grids[:500].copy()
    flipped = grids.copy()
    flipped[:, 2] = corners_of(grids[:, 3], 1 - ours.params["polarity"][:500])
    assert not TASK.check(flipped).any()
