"""frame: colours and rectangles against the original's (its reference quizzes and the exact
marginals of its rejection sampler), the framed colour shared by both pairs, other grid
sizes."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import chi2_stat, chi2_threshold, grafted_pairs, recolour, reference_grids

from gridlens.errors import GridSizeError
from gridlens.world import generate, shapes
from gridlens.world.tasks.frame import TASK

N = 20000


@pytest.fixture(scope="module")
def ref_grids(reference_dir):
    return reference_grids(reference_dir, "frame")


@pytest.fixture(scope="module")
def ours():
    return TASK.generate(N, np.random.default_rng(0))


@pytest.fixture(scope="module")
def our_framed(ours):
    """The framed rectangles of our quizzes from their parameters (checked in a test)."""
    colour = np.repeat(ours.params["colors"][:, 2:], 2, axis=1)
    rects = np.stack([ours.params["rects_A"], ours.params["rects_B"]], 1)
    return colour, rects[:, :, 2], rects[:, :, :2]


def _framed(grids):
    """Per pair: the framed colour [n, 2] and box [n, 2, 4], the other boxes [n, 2, 2, 4]."""
    counts, boxes = shapes.colour_boxes(grids)
    counts, boxes = counts[..., 1:], boxes[..., 1:, :]
    n = len(grids)
    colour, box, static = [], [], []
    for x, fx in ((0, 1), (2, 3)):
        changed = (counts[:, x] > 0) & (counts[:, fx] != counts[:, x])
        assert (changed.sum(1) == 1).all()
        c = changed.argmax(1)
        colour.append(c + 1)
        box.append(boxes[np.arange(n), x, c])
        others = np.argsort(~((counts[:, x] > 0) & ~changed), axis=1, kind="stable")[:, :2]
        static.append(boxes[np.arange(n)[:, None], x, others])
    return np.stack(colour, 1), np.stack(box, 1), np.stack(static, 1)


def test_colours_are_uniform_and_the_framed_one_is_shared(ours, our_framed, ref_grids):
    colours = ours.params["colors"]
    assert (np.sort(colours, 1)[:, 1:] != np.sort(colours, 1)[:, :-1]).all()
    for k in range(3):
        chi2, df = chi2_stat(np.bincount(colours[:, k], minlength=11)[1:], np.full(10, N / 10))
        assert chi2 < chi2_threshold(df), k
    colour, box, _ = our_framed
    assert (colour == colours[:, 2:]).all()
    assert np.array_equal(
        box, np.stack([ours.params["rects_A"], ours.params["rects_B"]], 1)[:, :, 2]
    )
    ref_colour, _, _ = _framed(ref_grids)
    assert (ref_colour[:, 0] == ref_colour[:, 1]).all()
    chi2, df = chi2_stat(np.bincount(ref_colour[:, 0], minlength=11)[1:], np.full(10, 20.0))
    assert chi2 < chi2_threshold(df)


def test_rectangles_follow_the_originals_distribution(ours, our_framed, ref_grids):
    table = shapes.rectangle_table(10, 10)
    rects = table.rects
    free = (~table.overlap).astype(np.float32)
    p = ((free @ free) * free).sum(1)  # every slot: uniform over ordered disjoint triples
    p = p / p.sum()
    index = np.full((11, 11, 11, 11), -1)
    index[tuple(rects.T)] = np.arange(len(rects))
    ours_rects = np.stack([ours.params["rects_A"], ours.params["rects_B"]], 1)
    for slot in range(3):
        seen = np.bincount(index[tuple(ours_rects[:, :, slot].reshape(-1, 4).T)], minlength=len(p))
        chi2, df = chi2_stat(seen, p * 2 * N)
        assert df > 500 and chi2 < chi2_threshold(df), slot
    area = (rects[:, 2] - rects[:, 0]) * (rects[:, 3] - rects[:, 1])
    mean, var = (p * area).sum(), (p * area**2).sum() - (p * area).sum() ** 2
    _, box, static = _framed(ref_grids)
    for boxes in (box, static):
        a = ((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])).ravel()
        assert abs(a.mean() - mean) < 4 * np.sqrt(var / len(a))
    # Rectangles of the reference touch each other and the borders; ours do too.
    for _, box, _ in (_framed(ref_grids), our_framed):
        assert (box[..., 0] == 0).any() and (box[..., 2] == 10).any() and (box[..., 3] == 10).any()


def test_frame_is_the_one_cell_border(ours, our_framed):
    _, box, _ = our_framed
    for pair, (x, fx) in enumerate(((0, 1), (2, 3))):
        inside = shapes.rectangle_masks(box[:, pair], 10, 10)
        inner = shapes.rectangle_masks(box[:, pair] + np.array([1, 1, -1, -1]), 10, 10)
        fxg, xg = ours.grids[:, fx], ours.grids[:, x]
        assert (fxg[inner] == 0).all()
        border = inside & ~inner
        assert (fxg[border] == xg[border]).all()
        assert (fxg[~inside] == xg[~inside]).all()


def test_checker_requires_the_same_framed_colour():
    a, b, mixed = grafted_pairs(TASK)
    ca, cb = a.params["colors"], b.params["colors"]
    assert TASK.check(mixed).all()
    mixed[:, 2:] = recolour(b.grids[:, 2:], cb, ca[:, [2, 1, 0]])  # another colour is framed
    assert not TASK.check(mixed).any()
    mixed[:, 2:] = recolour(b.grids[:, 2:], cb, ca[:, [1, 0, 2]])  # statics exchange colours
    assert TASK.check(mixed).all()


@pytest.mark.parametrize("size", [(6, 6), (8, 8), (12, 12), (7, 13), (11, 9)])
def test_other_grid_sizes(size):
    h, w = size
    sample = TASK.generate(300, np.random.default_rng(1), h, w)
    assert sample.grids.shape == (300, 4, h, w)
    assert TASK.check(sample.grids).all()
    rects = np.stack([sample.params["rects_A"], sample.params["rects_B"]], 1)
    dims = rects[..., 2:] - rects[..., :2]
    assert (dims >= 3).all() and (dims.prod(-1) <= h * w // 2).all()
    assert np.array_equal(sample.objects >= 0, sample.grids != 0)
    batch = generate("frame", 50, seed=0, height=h, width=w)
    assert batch.tokens.shape == (50, 4 * (1 + h * w))


@pytest.mark.parametrize("size", [(5, 5), (5, 12), (12, 5)])
def test_too_small_grid_raises(size):
    with pytest.raises(GridSizeError):
        TASK.generate(10, np.random.default_rng(0), *size)
    with pytest.raises(GridSizeError):
        generate("frame", 10, height=size[0], width=size[1])
