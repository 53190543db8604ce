"""grow: the grow/shrink split and the rectangle distribution against the original's (its
reference quizzes and the exact marginals of its rejection sampler), shared parameters, other
grid sizes."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import chi2_stat, chi2_threshold, grafted_pairs, recolour, reference_grids

from gridlens.errors import GridSizeError
from gridlens.world import generate, shapes
from gridlens.world.tasks.grow import TASK

N = 20000


@pytest.fixture(scope="module")
def ref_grids(reference_dir):
    return reference_grids(reference_dir, "grow")


@pytest.fixture(scope="module")
def ours():
    return TASK.generate(N, np.random.default_rng(0))


def _resized(grids):
    """Per pair: the resized colour [n, 2], its full box [n, 2, 4], whether it grows [n, 2], and
    the boxes of the two other colours [n, 2, 2, 4]."""
    counts, boxes = shapes.colour_boxes(grids)
    boxes = boxes[:, :, 1:]
    present = counts[:, :, 1:] > 0
    n = len(grids)
    colour, full, grows, static = [], [], [], []
    for x, fx in ((0, 1), (2, 3)):
        changed = present[:, x] & (boxes[:, x] != boxes[:, fx]).any(-1)
        assert (changed.sum(1) == 1).all() and (present[:, x].sum(1) == 3).all()
        c = changed.argmax(1)
        bx, bfx = boxes[np.arange(n), x, c], boxes[np.arange(n), fx, c]
        g = bfx[:, 0] < bx[:, 0]
        colour.append(c + 1)
        full.append(np.where(g[:, None], bfx, bx))
        grows.append(g)
        others = np.argsort(~(present[:, x] & ~changed), axis=1, kind="stable")[:, :2]
        static.append(boxes[np.arange(n)[:, None], x, others])
    return np.stack(colour, 1), np.stack(full, 1), np.stack(grows, 1), np.stack(static, 1)


def _marginals(h, w):
    """Exact marginals [R] of the original's last (resized, at least 4 x 4) and first (static)
    rectangles: uniform over ordered disjoint triples whose last one is allowed."""
    table = shapes.rectangle_table(h, w)
    free = (~table.overlap).astype(np.float32)
    size = table.rects[:, 2:] - table.rects[:, :2]
    allowed = (size >= 4).all(-1).astype(np.float32)
    last = ((free @ free) * free).sum(1) * allowed
    through = (free * allowed) @ free  # [a, b]: allowed c disjoint from both
    first = (free * through).sum(1)
    return table, last / last.sum(), first / first.sum()


def _index(rects, boxes):
    index = np.full((11, 11, 11, 11), -1)
    index[tuple(rects.T)] = np.arange(len(rects))
    return index[tuple(boxes.reshape(-1, 4).T)]


def test_grow_or_shrink_is_a_fair_coin_shared_by_both_pairs(ours, ref_grids):
    colour, full, grows, _ = _resized(ours.grids[:2000])
    assert (grows[:, 0] == grows[:, 1]).all()
    assert np.array_equal(grows[:, 0], ours.params["direction"][:2000] == 0)
    assert (colour == ours.params["colors"][:2000, 2:]).all()
    rects = np.stack([ours.params["rects_A"], ours.params["rects_B"]], 1)
    assert np.array_equal(full, rects[:2000, :, 2])
    assert abs((ours.params["direction"] == 0).mean() - 0.5) < 4 * 0.5 / np.sqrt(N)
    _, _, ref_grows, _ = _resized(ref_grids)
    assert (ref_grows[:, 0] == ref_grows[:, 1]).all()
    assert abs(ref_grows[:, 0].mean() - 0.5) < 4 * 0.5 / np.sqrt(len(ref_grids))


def test_rectangles_follow_the_originals_distribution(ours, ref_grids):
    table, last, first = _marginals(10, 10)
    rects = table.rects
    area = (rects[:, 2] - rects[:, 0]) * (rects[:, 3] - rects[:, 1])
    ours_rects = np.stack([ours.params["rects_A"], ours.params["rects_B"]], 1)
    for slot, p in ((2, last), (0, first), (1, first)):
        seen = np.bincount(_index(rects, ours_rects[:, :, slot]), minlength=len(rects))
        chi2, df = chi2_stat(seen, p * 2 * N)
        assert df > 200 and chi2 < chi2_threshold(df), slot
    # The reference: mean areas of the resized and the static rectangles.
    _, ref_full, _, ref_static = _resized(ref_grids)
    for boxes, p in ((ref_full, last), (ref_static, first)):
        a = ((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])).ravel()
        mean, var = (p * area).sum(), (p * area**2).sum() - (p * area).sum() ** 2
        assert abs(a.mean() - mean) < 4 * np.sqrt(var / len(a)), (a.mean(), mean)
    size = ref_full[..., 2:] - ref_full[..., :2]
    assert (size >= 4).all() and (size == 4).any()
    # An unrestricted last rectangle would be visibly smaller: the test can tell.
    free = (~table.overlap).astype(np.float32)
    unrestricted = ((free @ free) * free).sum(1)
    a = ((ref_full[..., 2] - ref_full[..., 0]) * (ref_full[..., 3] - ref_full[..., 1])).ravel()
    spread = np.sqrt((last * area**2).sum() - (last * area).sum() ** 2)
    assert a.mean() - (unrestricted * area).sum() / unrestricted.sum() > 4 * spread / np.sqrt(
        len(a)
    )


def test_checker_requires_the_same_direction_and_resized_colour():
    a, b, mixed = grafted_pairs(TASK)
    ca = a.params["colors"]
    same = a.params["direction"] == b.params["direction"]
    assert same.any() and (~same).any()
    assert np.array_equal(TASK.check(mixed), same)
    swapped = a.grids.copy()
    swapped[:, 2:] = recolour(a.grids[:, 2:], ca, ca[:, [2, 1, 0]])  # another colour resizes
    assert not TASK.check(swapped).any()
    inverted = a.grids[:, [1, 0, 3, 2]]  # grow <-> shrink is itself a valid quiz
    assert TASK.check(inverted).all()
    half = a.grids.copy()
    half[:, 2:] = a.grids[:, [3, 2]]  # but not mixed within a quiz
    assert not TASK.check(half).any()


@pytest.mark.parametrize("size", [(7, 7), (8, 8), (12, 12), (7, 13), (11, 9)])
def test_other_grid_sizes(size):
    h, w = size
    sample = TASK.generate(300, np.random.default_rng(1), h, w)
    assert sample.grids.shape == (300, 4, h, w)
    assert TASK.check(sample.grids).all()
    rects = np.stack([sample.params["rects_A"], sample.params["rects_B"]], 1)
    dims = rects[..., 2:] - rects[..., :2]
    assert (dims[:, :, 2] >= 4).all() and (dims >= 3).all() and (dims.prod(-1) <= h * w // 2).all()
    assert np.array_equal(sample.objects >= 0, sample.grids != 0)
    batch = generate("grow", 50, seed=0, height=h, width=w)
    assert batch.tokens.shape == (50, 4 * (1 + h * w))


@pytest.mark.parametrize("size", [(6, 6), (6, 12), (12, 6)])
def test_too_small_grid_raises(size):
    with pytest.raises(GridSizeError):
        TASK.generate(10, np.random.default_rng(0), *size)
    with pytest.raises(GridSizeError):
        generate("grow", 10, height=size[0], width=size[1])
