"""trajectory: the ray's distribution matches the original's, other sizes work, the checker
enforces the shared colours and the ray."""

from __future__ import annotations

import numpy as np
import pytest

from gridlens.errors import GridSizeError
from gridlens.world import get_task

TASK = get_task("trajectory")


def _pairs_from_tokens(tokens: np.ndarray) -> np.ndarray:
    grids = tokens.astype(np.int64).reshape(-1, 4, 101)[:, :, 1:].reshape(-1, 4, 10, 10)
    return grids


def _analytic_directions(h: int, w: int) -> dict[tuple[int, int], float]:
    """The original: (di, dj, i, j) uniform over the tuples its rejection loop accepts."""
    counts = {}
    for di in range(-3, 4):
        for dj in range(-3, 4):
            if di == 0 and dj == 0:
                continue
            c = sum(0 <= i + 2 * di < h and 0 <= j + 2 * dj < w for i in range(h) for j in range(w))
            counts[(di, dj)] = c
    total = sum(counts.values())
    return {k: v / total for k, v in counts.items()}


@pytest.mark.parametrize("size", [(10, 10), (7, 12)])
def test_direction_frequencies_match_the_original(size):
    h, w = size
    sample = TASK.generate(20000, np.random.default_rng(0), h, w)
    d = sample.params["direction"].reshape(-1, 2)
    expected = _analytic_directions(h, w)
    for (di, dj), p in expected.items():
        freq = np.mean((d[:, 0] == di) & (d[:, 1] == dj))
        assert abs(freq - p) < 0.005, (di, dj, freq, p)
    # Start cells: every valid start of a direction is equally likely (row mean symmetric).
    assert abs(sample.params["start"][..., 0].mean() - (h - 1) / 2) < 0.1


def test_ray_length_matches_the_reference(reference_dir):
    ref = _pairs_from_tokens(np.load(reference_dir / "fleuret_reference_quizzes.npz")["trajectory"])
    ours = TASK.generate(20000, np.random.default_rng(1)).grids

    def ray_cells(g):
        return (g[:, 1::2] != 0).sum(axis=(2, 3)).ravel()

    r, o = ray_cells(ref), ray_cells(ours)
    se = r.std() / np.sqrt(len(r))
    assert abs(r.mean() - o.mean()) < 4 * se + 0.05
    # Length histogram (3..10 cells) within a few points of the reference.
    for k in range(3, 11):
        assert abs(np.mean(r == k) - np.mean(o == k)) < 0.08


def test_grids_follow_the_rule():
    sample = TASK.generate(500, np.random.default_rng(2))
    g = sample.grids
    c0, c1 = sample.params["colors"][:, 0], sample.params["colors"][:, 1]
    for x in (0, 2):
        assert ((g[:, x] != 0).sum(axis=(1, 2)) == 2).all()
        # f(X) keeps X's cells and only adds ray-coloured ones.
        keep = g[:, x] != 0
        assert (g[:, x + 1][keep] == g[:, x][keep]).all()
        added = g[:, x + 1] != g[:, x]
        assert (np.where(added, g[:, x + 1], c1[:, None, None]) == c1[:, None, None]).all()
        assert ((g[:, x + 1] == c0[:, None, None]).sum(axis=(1, 2)) == 1).all()


@pytest.mark.parametrize("size", [(8, 8), (12, 12), (7, 12), (12, 7), (3, 3), (3, 9)])
def test_other_grid_sizes(size):
    sample = TASK.generate(300, np.random.default_rng(3), *size)
    assert sample.grids.shape == (300, 4, *size)
    assert TASK.check(sample.grids).all()
    wrong = TASK.other_parameters(sample, np.random.default_rng(4))
    bad = sample.grids.copy()
    bad[:, 3] = wrong
    assert not TASK.check(bad).any()


@pytest.mark.parametrize("size", [(2, 2), (2, 10), (10, 2)])
def test_too_small_grid_raises(size):
    with pytest.raises(GridSizeError):
        TASK.generate(10, np.random.default_rng(0), *size)


def test_checker_enforces_shared_colours_and_direction_range():
    sample = TASK.generate(300, np.random.default_rng(5))
    g = sample.grids
    # The second pair drawn with the two colours swapped: not the same rule.
    swapped = g.copy()
    c0, c1 = sample.params["colors"][:, 0, None, None], sample.params["colors"][:, 1, None, None]
    for k in (2, 3):
        swapped[:, k] = np.where(g[:, k] == c0, c1, np.where(g[:, k] == c1, c0, g[:, k]))
    assert not TASK.check(swapped).any()
    # A ray whose second cell is 4 cells away from the first is not one the original draws.
    far = np.zeros((1, 4, 10, 10), dtype=np.int64)
    far[0, 0, 0, 0], far[0, 0, 0, 4] = 1, 2
    far[0, 1, 0, 0], far[0, 1, 0, 4], far[0, 1, 0, 8] = 1, 2, 2
    far[0, 2:] = far[0, :2]
    assert not TASK.check(far).any()
    near = far.copy()
    near[0, 0, 0, 4], near[0, 1, 0, 4], near[0, 1, 0, 8] = 0, 0, 0
    near[0, 0, 0, 3] = 2
    near[0, 1, 0, 3] = near[0, 1, 0, 6] = near[0, 1, 0, 9] = 2
    near[0, 2:] = near[0, :2]
    assert TASK.check(near).all()
