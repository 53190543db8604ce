"""isometry: transforms and drawings are distributed like the original's (analytic transform
frequencies, facts that follow from the drawing rules, the reference quizzes), square sizes
work, the checker enforces one shared transform."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import reference_grids

from gridlens.errors import GridSizeError
from gridlens.world import get_task

TASK = get_task("isometry")


def test_transform_frequencies():
    """(k, flip, shift) uniform over the 72 transforms, the identity (always trivial) excluded:
    7 of the 71 others have no shift, 8 each of the other shifts."""
    p = TASK.generate(20000, np.random.default_rng(0)).params
    k, flip, shift = p["rotation"], p["flip"], p["shift"]
    identity = (k == 0) & ~flip & (shift == 0).all(1)
    assert not identity.any()
    assert abs(np.mean(k == 0) - 17 / 71) < 0.012
    for r in (1, 2, 3):
        assert abs(np.mean(k == r) - 18 / 71) < 0.012
    assert abs(flip.mean() - 36 / 71) < 0.012
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            expected = (7 if di == dj == 0 else 8) / 71
            assert abs(np.mean((shift == [di, dj]).all(1)) - expected) < 0.01


def _transformed(x: np.ndarray, k: int, flip: bool, shift: np.ndarray) -> np.ndarray:
    """x mapped by o^k (o = [[0, 1], [-1, 0]] on centred (i, j): a clockwise quarter turn),
    the first row of the matrix negated (an upside-down flip), then shifted by (di, dj)
    (rectangles avoid the border, so a roll loses nothing)."""
    y = np.rot90(x, -k)
    if flip:
        y = y[::-1]
    return np.roll(y, tuple(shift), axis=(0, 1))


def _drawing_stats(x: np.ndarray) -> dict[str, np.ndarray]:
    """Per X [m, S, S], from the grid alone: coloured cells, colours, and per colour sorted by
    visible cells: visible cells, bounding-box short and long sides (the top rectangle's box
    is the rectangle itself; the same estimator runs on both sides of a comparison)."""
    size = x.shape[-1]
    present = (x[:, None] == np.arange(1, 11)[:, None, None]).any((2, 3))  # [m, 10]
    cols = np.argsort(~present, axis=1, kind="stable")[:, :3] + 1
    vis = x[:, None] == cols[:, :, None, None]  # [m, 3, S, S]
    r = np.arange(size)

    def extent(a):  # [m, 3, S] -> span length
        first = np.where(a, r, size).min(-1)
        last = np.where(a, r, -1).max(-1)
        return last - first + 1

    dh, dw = extent(vis.any(3)), extent(vis.any(2))
    cells = vis.sum((2, 3))
    order = np.argsort(cells, axis=1)
    pick = np.take_along_axis
    return {
        "coloured": (x != 0).sum((1, 2)),
        "colours": present.sum(1),
        "cells": pick(cells, order, 1),
        "short": pick(np.minimum(dh, dw), order, 1),
        "long": pick(np.maximum(dh, dw), order, 1),
    }


def _close(a: np.ndarray, b: np.ndarray, what: str, floor: float = 0.0) -> None:
    """Means of two independent samples agree within 4.5 standard errors of their difference."""
    a, b = a.ravel().astype(float), b.ravel().astype(float)
    se = np.hypot(max(a.std(), floor) / np.sqrt(len(a)), max(b.std(), floor) / np.sqrt(len(b)))
    assert abs(a.mean() - b.mean()) < 4.5 * se, (what, a.mean(), b.mean(), se)


@pytest.mark.parametrize("size", [10, 16])
def test_drawings_follow_from_the_rules(size):
    n = 4000
    sample = TASK.generate(n, np.random.default_rng(1), size, size)
    p, g = sample.params, sample.grids
    # f(X) is X under the drawn transform (computed here with numpy's rotations and flips).
    for q in range(0, n, 7):
        for pair in (0, 1):
            fx = _transformed(g[q, 2 * pair], p["rotation"][q], p["flip"][q], p["shift"][q])
            assert np.array_equal(fx, g[q, 2 * pair + 1])
    # X is the three rectangles painted in order, in their pair's colours.
    rects = p["rects"].reshape(-1, 3, 4)  # half-open (i1, j1, i2, j2)
    colours = p["colors"].reshape(-1, 3)
    x = g[:, 0::2].reshape(-1, size, size)
    redrawn = np.zeros_like(x)
    for q in range(0, len(x), 5):
        for (i1, j1, i2, j2), c in zip(rects[q], colours[q], strict=True):
            redrawn[q, i1:i2, j1:j2] = c
    assert np.array_equal(redrawn[::5], x[::5])
    assert (np.sort(colours, 1)[:, 1:] > np.sort(colours, 1)[:, :-1]).all()
    # Corners inside 1..S-2 (inclusive); sides: longer - 1 >= 2, shorter - 1 <= 3 (scaled as
    # max(2, 2S // 10), max(3, 3S // 10) on larger grids).
    lo, hi = max(2, 2 * size // 10), max(3, 3 * size // 10)
    hgt, wid = rects[..., 2] - rects[..., 0], rects[..., 3] - rects[..., 1]
    assert rects[..., :2].min() >= 1 and rects[..., 2:].max() <= size - 1
    assert (np.maximum(hgt, wid) - 1 >= lo).all() and (np.minimum(hgt, wid) - 1 <= hi).all()
    assert rects[..., :2].min() == 1 and rects[..., 2:].max() == size - 1
    # Acceptance: more than S*S//4 cells coloured and all three colours visible.
    stats = _drawing_stats(x)
    assert stats["coloured"].min() > size * size // 4 and (stats["colours"] == 3).all()
    # The rectangle law and the acceptance test are invariant under the 8 symmetries of the
    # square applied to all three rectangles: heights and widths have the same law, and each
    # rectangle's centre lies at the grid centre on average.
    se = np.hypot(hgt.std(0), wid.std(0)) / np.sqrt(len(hgt))
    assert (abs(hgt.mean(0) - wid.mean(0)) < 4.5 * se).all(), (hgt.mean(0), wid.mean(0))
    for lo_k, hi_k in ((0, 2), (1, 3)):
        centre = (rects[..., lo_k] + rects[..., hi_k] - 1) / 2
        se = centre.std(0) / np.sqrt(len(centre))
        assert (abs(centre.mean(0) - (size - 1) / 2) < 4.5 * se).all(), centre.mean(0)


def test_drawings_match_the_reference(reference_dir):
    ref = reference_grids(reference_dir, "isometry")
    sample = TASK.generate(5000, np.random.default_rng(3))
    ours = _drawing_stats(sample.grids[:, 0::2].reshape(-1, 10, 10))
    theirs = _drawing_stats(ref[:, 0::2].reshape(-1, 10, 10))
    assert (theirs["colours"] == 3).all()
    _close(ours["coloured"], theirs["coloured"], "coloured cells")
    for key in ("cells", "short", "long"):
        for r in range(3):
            _close(ours[key][:, r], theirs[key][:, r], f"{key} of colour {r} by size")
    # The transform of each reference quiz: (k, flip, shift) taking both X to their f(X).
    found = []
    for q in ref:
        fits = [
            (k, flip, di, dj)
            for k in range(4)
            for flip in (False, True)
            for di in (-1, 0, 1)
            for dj in (-1, 0, 1)
            if all(
                np.array_equal(_transformed(q[2 * i], k, flip, np.array([di, dj])), q[2 * i + 1])
                for i in (0, 1)
            )
        ]
        assert fits, "a reference quiz that no isometry explains"
        if len(fits) == 1:
            found.append(fits[0])
    found = np.array(found)
    assert len(found) > 180
    p = sample.params
    _close(p["flip"], found[:, 1], "flipped", floor=0.3)
    _close(p["rotation"] % 2, found[:, 0] % 2, "quarter turn", floor=0.3)
    _close((p["shift"] == 0).all(1), (found[:, 2:] == 0).all(1), "no shift", floor=0.3)
    # Colours are drawn per pair: the pairs of a quiz share their colour set rarely.
    colours = p["colors"]
    same = (np.sort(colours[:, 0], 1) == np.sort(colours[:, 1], 1)).all(1)
    assert same.mean() < 0.05
    ref_same = [set(np.unique(q[0])) == set(np.unique(q[2])) for q in ref]
    assert np.mean(ref_same) < 0.1


@pytest.mark.parametrize("size", [5, 8, 9, 12, 16])
def test_other_grid_sizes(size):
    sample = TASK.generate(300, np.random.default_rng(5), size, size)
    g = sample.grids
    assert g.shape == (300, 4, size, size)
    assert TASK.check(g).all()
    assert (g[:, 0::2] != g[:, 1::2]).any(axis=(2, 3)).all()
    wrong = TASK.other_parameters(sample, np.random.default_rng(6))
    differs = (wrong != g[:, 3]).any(axis=(1, 2))
    bad = g[differs].copy()
    bad[:, 3] = wrong[differs]
    assert (~TASK.check(bad)).mean() >= 0.98


@pytest.mark.parametrize("size", [(4, 4), (3, 10), (8, 12), (12, 8)])
def test_too_small_or_non_square_grid_raises(size):
    with pytest.raises(GridSizeError):
        TASK.generate(10, np.random.default_rng(0), *size)


def test_checker_enforces_one_shared_transform():
    sample = TASK.generate(400, np.random.default_rng(7))
    g = sample.grids
    # The identity transform is a valid (if trivial) instance, as in the original.
    same = g.copy()
    same[:, 1], same[:, 3] = g[:, 0], g[:, 2]
    assert TASK.check(same).all()
    # Pairs from quizzes with different transforms do not form a quiz.
    p = sample.params
    code = (2 * p["rotation"] + p["flip"]) * 9 + (p["shift"] + 1) @ np.array([3, 1])
    mixed = g.copy()
    mixed[:, 2:] = np.roll(g[:, 2:], 1, axis=0)
    differ = code != np.roll(code, 1)
    assert (~TASK.check(mixed[differ])).mean() >= 0.98
    # f(X) shifted by two cells is not an isometry of the original.
    far = g.copy()
    far[:, 1] = np.roll(g[:, 0], 2, axis=1)
    far[:, 3] = np.roll(g[:, 2], 2, axis=1)
    assert not TASK.check(far).any()


def test_checker_wants_three_rectangles_inside_the_border():
    a = np.zeros((10, 10), dtype=np.int64)
    a[1:4, 1:9] = 1
    a[4:7, 1:9] = 2
    a[7:9, 1:6] = 3
    a[5:8, 4:6] = 4

    def quiz(x):
        return np.stack([x, x, x, x])[None]  # the identity transform

    assert not TASK.check(quiz(a)).any()  # four colours
    a[a == 4] = 1  # colour 1 now in two places: not one rectangle
    assert not TASK.check(quiz(a)).any()
    b = np.zeros((10, 10), dtype=np.int64)
    b[1:4, 1:9] = 1
    b[4:7, 1:9] = 2
    b[7:9, 1:6] = 3
    assert TASK.check(quiz(b)).all()
    c = b.copy()
    c[5:9, 1:6] = 3  # rectangle 3 drawn taller, over 2 (2 is an L): still three rectangles
    assert TASK.check(quiz(c)).all()
    d = b.copy()
    d[8, 8] = 1  # a stray cell
    assert not TASK.check(quiz(d)).any()
    e = np.zeros((10, 10), dtype=np.int64)
    e[1:6, 1:6] = 1  # 5 x 5: too thick for the original (min side <= 4)
    e[6:9, 1:9] = 2
    e[1:4, 6:9] = 3
    assert not TASK.check(quiz(e)).any()
    e[1:6, 1:6] = 0
    e[1:6, 1:5] = 1  # 5 x 4 is fine
    assert TASK.check(quiz(e)).all()
    f = b.copy()
    f[0, 2] = 1  # on the border row, where the original never draws
    assert not TASK.check(quiz(f)).any()
