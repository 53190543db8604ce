"""translate: the distribution of directions and moved rectangles against the original's (its
reference quizzes and the exact marginals of its rejection sampler), the border quirk, the
drawing order, shared parameters, other grid sizes."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import chi2_stat, chi2_threshold, grafted_pairs, recolour, reference_grids

from gridlens.errors import GridSizeError
from gridlens.world import generate, shapes
from gridlens.world.tasks.translate import DIRECTIONS, TASK, _tables

N = 20000


@pytest.fixture(scope="module")
def ref_grids(reference_dir):
    return reference_grids(reference_dir, "translate")


@pytest.fixture(scope="module")
def ours():
    return TASK.generate(N, np.random.default_rng(0))


@pytest.fixture(scope="module")
def our_moves(ours):
    """The moves of our quizzes from their parameters (parsed back from grids in a test)."""
    colour = np.repeat(ours.params["colors"][:, 2:], 2, axis=1)
    box = np.stack([ours.params["rects_A"], ours.params["rects_B"]], 1)[:, :, 2]
    step = np.repeat(ours.params["shift"][:, None], 2, axis=1)
    return colour, box, step


@pytest.fixture(scope="module")
def ref_moves(ref_grids):
    return _moves(ref_grids)


def _moves(grids):
    """Per pair: the moved colour [n, 2], its box in X [n, 2, 4] and its step [n, 2, 2]."""
    counts, boxes = shapes.colour_boxes(grids)
    counts, boxes = counts[..., 1:], boxes[..., 1:, :]  # colours 1..10
    n = len(grids)
    colour, box, step = [], [], []
    for x, fx in ((0, 1), (2, 3)):
        d = boxes[:, fx, :, :2] - boxes[:, x, :, :2]
        same = (counts[:, fx] == counts[:, x]) & (counts[:, x] > 0)
        cand = same & (d != 0).any(-1) & (np.abs(d) <= 1).all(-1)
        assert (cand.sum(1) == 1).all()
        c = cand.argmax(1)
        colour.append(c + 1)
        box.append(boxes[np.arange(n), x, c])
        step.append(d[np.arange(n), c])
    return np.stack(colour, 1), np.stack(box, 1), np.stack(step, 1)


def _direction_index(step):
    """Index into DIRECTIONS of steps [..., 2]: the 3 x 3 neighbourhood without its centre."""
    k = (step[..., 0] + 1) * 3 + step[..., 1] + 1
    return k - (k > 4)


def _completions(h, w):
    """[R] for each table rectangle c, how many ordered disjoint pairs (a, b) are disjoint from
    c: the original's three-rectangle draw picks its last rectangle with probability
    proportional to this (restricted to the allowed ones)."""
    free = (~shapes.rectangle_table(h, w).overlap).astype(np.float32)
    return ((free @ free) * free).sum(1).astype(np.float64)


def test_direction_is_uniform_over_eight_and_shared(ours, our_moves, ref_moves):
    direction = ours.params["direction"]
    chi2, df = chi2_stat(np.bincount(direction, minlength=8), np.full(8, N / 8))
    assert df == 7 and chi2 < chi2_threshold(df)
    assert np.array_equal(DIRECTIONS[direction], ours.params["shift"])
    parsed = _moves(ours.grids[:2000])
    for got, expected in zip(parsed, our_moves, strict=True):
        assert np.array_equal(got, expected[:2000])
    assert (_direction_index(parsed[2]) == direction[:2000, None]).all()
    _, _, ref_step = ref_moves
    assert (ref_step[:, 0] == ref_step[:, 1]).all()
    ref_dir = _direction_index(ref_step[:, 0])
    chi2, df = chi2_stat(np.bincount(ref_dir, minlength=8), np.full(8, len(ref_dir) / 8))
    assert chi2 < chi2_threshold(df)


def test_moved_rectangle_follows_the_originals_distribution(ours, ref_moves):
    table, _, pools, _ = _tables(10, 10)
    rects = table.rects
    area = (rects[:, 2] - rects[:, 0]) * (rects[:, 3] - rects[:, 1])
    weight = _completions(10, 10)
    p = np.zeros((8, len(rects)))
    for d in range(8):
        p[d, pools[d]] = weight[pools[d]]
    p /= p.sum(1, keepdims=True)
    # Ours: the moved rectangle (as an index into the table) against the exact marginal.
    box = np.stack([ours.params["rects_A"], ours.params["rects_B"]], 1)[:, :, 2].reshape(-1, 4)
    direction = np.repeat(ours.params["direction"], 2)
    index = np.full((11, 11, 11, 11), -1)
    index[tuple(rects.T)] = np.arange(len(rects))
    seen = np.bincount(index[tuple(box.T)], minlength=len(rects))
    chi2, df = chi2_stat(seen, p[direction].sum(0))
    assert df > 500 and chi2 < chi2_threshold(df)
    # The reference: mean area of the moved rectangle against the exact expectation.
    _, ref_box, ref_step = ref_moves
    ref_area = ((ref_box[..., 2] - ref_box[..., 0]) * (ref_box[..., 3] - ref_box[..., 1])).ravel()
    d = _direction_index(ref_step).ravel()
    mean = (p * area).sum(1)[d]
    var = (p * area**2).sum(1)[d] - mean**2
    assert abs(ref_area.mean() - mean.mean()) < 4 * np.sqrt(var.sum()) / len(d)
    # A direction-blind third rectangle would be visibly larger on average: the test can tell.
    blind = (weight * area).sum() / weight.sum()
    assert abs(blind - mean.mean()) > 4 * np.sqrt(var.sum()) / len(d)


def test_moved_rectangle_never_touches_bottom_or_right_border(our_moves, ref_moves):
    """The original requires i2 + di < H and j2 + dj < W on half-open bounds."""
    for _, box, step in (ref_moves, our_moves):
        moved = box + np.concatenate([step, step], -1)
        assert (moved[..., 2] <= 9).all() and (moved[..., 3] <= 9).all()
        assert (moved[..., :2] >= 0).all()
    # ... while reaching the top and left borders, and the bottom one before moving up.
    _, box, step = our_moves
    moved = box + np.concatenate([step, step], -1)
    assert (moved[..., 0] == 0).any() and (moved[..., 1] == 0).any()
    assert (box[..., 2] == 10).any()


def test_moved_rectangle_is_drawn_on_top(ours, our_moves, ref_grids, ref_moves):
    rates = []
    for grids, (colour, box, step) in ((ref_grids, ref_moves), (ours.grids, our_moves)):
        moved = box + np.concatenate([step, step], -1)
        mask = shapes.rectangle_masks(moved, 10, 10)  # [n, 2, H, W]
        x = grids[:, 0::2]
        covers = (mask & (x != 0) & (x != colour[:, :, None, None])).any(axis=(2, 3))
        fx = grids[:, 1::2]
        assert (np.where(mask, fx, colour[:, :, None, None]) == colour[..., None, None]).all()
        rates.append(covers.mean())
    ref_rate, our_rate = rates
    assert ref_rate > 0 and our_rate > 0
    n_ref = 2 * len(ref_grids)
    assert abs(ref_rate - our_rate) < 4 * np.sqrt(our_rate * (1 - our_rate) / n_ref)


def test_checker_requires_the_same_direction_and_moved_colour():
    a, b, mixed = grafted_pairs(TASK)
    ca = a.params["colors"]
    same = a.params["direction"] == b.params["direction"]
    assert same.any() and (~same).any()
    assert np.array_equal(TASK.check(mixed), same)
    swapped = a.grids.copy()
    swapped[:, 2:] = recolour(a.grids[:, 2:], ca, ca[:, [2, 1, 0]])  # another colour moves
    assert not TASK.check(swapped).any()


@pytest.mark.parametrize("size", [(6, 6), (8, 8), (12, 12), (7, 13), (11, 6)])
def test_other_grid_sizes(size):
    h, w = size
    sample = TASK.generate(300, np.random.default_rng(1), h, w)
    assert sample.grids.shape == (300, 4, h, w)
    assert TASK.check(sample.grids).all()
    _, box, step = _moves(sample.grids)
    moved = box + np.concatenate([step, step], -1)
    assert (moved[..., 2] < h).all() and (moved[..., 3] < w).all()
    size_ = box[..., 2:] - box[..., :2]
    assert (size_ >= 3).all() and (size_.prod(-1) <= h * w // 2).all()
    assert np.array_equal(sample.objects >= 0, sample.grids != 0)
    batch = generate("translate", 50, seed=0, height=h, width=w)
    assert batch.tokens.shape == (50, 4 * (1 + h * w))


@pytest.mark.parametrize("size", [(5, 5), (5, 12), (12, 5)])
def test_too_small_grid_raises(size):
    with pytest.raises(GridSizeError):
        TASK.generate(10, np.random.default_rng(0), *size)
    with pytest.raises(GridSizeError):
        generate("translate", 10, height=size[0], width=size[1])
