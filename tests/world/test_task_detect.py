"""detect: distribution against the reference quizzes, the exact triple sampler, other grid
sizes and grids too small for three rectangles."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import reference_grids

from gridlens.errors import GridSizeError
from gridlens.world import generate, get_task, shapes

TASK = get_task("detect")


@pytest.fixture(scope="module")
def reference(reference_dir):
    return reference_grids(reference_dir, "detect")


@pytest.fixture(scope="module")
def ours():
    return TASK.generate(20000, np.random.default_rng(0))


def rect_sizes(grids):
    """Heights and widths of every colour's bounding box in grids [n, H, W]."""
    counts, boxes = shapes.colour_boxes(grids)
    present = counts[:, 1:] > 0
    boxes = boxes[:, 1:]
    return (boxes[..., 2] - boxes[..., 0])[present], (boxes[..., 3] - boxes[..., 1])[present]


def test_rectangle_sizes_match_the_reference(reference, ours):
    ref_h, ref_w = rect_sizes(reference[:, 0::2].reshape(-1, 10, 10))
    h, w = rect_sizes(ours.grids[:, 0::2].reshape(-1, 10, 10))
    assert len(ref_h) == 200 * 2 * 3 and len(h) == 20000 * 2 * 3
    for a, b in ((ref_h, h), (ref_w, w), (ref_h * ref_w, h * w)):
        se = a.std() / np.sqrt(len(a))
        assert abs(a.mean() - b.mean()) < 4 * se, (a.mean(), b.mean())


def test_tags_follow_the_original(ours):
    grids, colours = ours.grids, ours.params["colors"]
    a, fa = grids[:, 0], grids[:, 1]
    changed = a != fa
    # Exactly two rectangles carry a 3-cell tag of the fourth colour, at their top-left corner.
    assert (changed.sum((1, 2)) == 6).all()
    assert (fa[changed] == np.repeat(colours[:, 3], 6)).all()
    for k, tagged in ((0, True), (1, True), (2, False)):
        i1, j1 = ours.params["rects_A"][:, k, 0], ours.params["rects_A"][:, k, 1]
        rows = np.arange(len(grids))
        assert ((fa[rows, i1, j1] == colours[:, 3]) == tagged).all()
        assert ((fa[rows, i1 + 1, j1] == colours[:, 3]) == tagged).all()
        assert ((fa[rows, i1, j1 + 1] == colours[:, 3]) == tagged).all()
        assert (fa[rows, i1 + 1, j1 + 1] == colours[:, k]).all()
    # Colours: four distinct, each uniform over 1..10.
    assert (np.sort(colours, 1)[:, 1:] != np.sort(colours, 1)[:, :-1]).all()
    freq = np.bincount(colours[:, 3], minlength=11)[1:] / len(colours)
    assert np.abs(freq - 0.1).max() < 0.01


@pytest.mark.parametrize("size", [(8, 8), (12, 12), (7, 12), (12, 6), (3, 9)])
def test_other_grid_sizes(size):
    sample = TASK.generate(300, np.random.default_rng(1), *size)
    assert sample.grids.shape == (300, 4, *size)
    assert TASK.check(sample.grids).all()
    bad = sample.grids.copy()
    bad[:, 3] = TASK.other_parameters(sample, np.random.default_rng(2))
    assert not TASK.check(bad).any()
    batch = generate("detect", 20, seed=3, height=size[0], width=size[1])
    assert TASK.check(batch.grids).all()


@pytest.mark.parametrize("size", [(5, 5), (4, 8), (2, 10), (8, 2)])
def test_too_small_grids_raise(size):
    with pytest.raises(GridSizeError):
        TASK.generate(10, np.random.default_rng(0), *size)
    with pytest.raises(GridSizeError):
        generate("detect", 10, height=size[0], width=size[1])


def test_checker_rejects_broken_tags(ours):
    grids = ours.grids[:500].copy()
    assert TASK.check(grids).all()
    moved = grids.copy()  # tag the untagged rectangle of B instead of one tagged one
    moved[:, 3] = grids[:, 2]
    colours = ours.params["colors"][:500]
    rects = ours.params["rects_B"][:500]
    rows = np.arange(500)
    for k in (0, 2):
        i1, j1 = rects[:, k, 0], rects[:, k, 1]
        for di, dj in ((0, 0), (1, 0), (0, 1)):
            moved[rows, 3, i1 + di, j1 + dj] = colours[:, 3]
    assert not TASK.check(moved).any()
