"""fill: the batched flood fill against a plain BFS; every generated pair against the rule
(independent flood fill); the seed given the rectangles against its exact conditional law
(uniform over the background cells); the statistics against the reference quizzes; the endless
loop of the original on tiled grids (ours rejects such draws); other grid sizes and too-small
grids."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
from helpers import assert_works_at_size, reference_grids, z_score

from gridlens.errors import GridSizeError
from gridlens.world import generate
from gridlens.world.tasks import fill as fill_module
from gridlens.world.tasks import get_task

TASK = get_task("fill")


def bfs_region(free: np.ndarray, start: tuple[int, int]) -> np.ndarray:
    """Cells of `free` 4-connected to `start`."""
    h, w = free.shape
    seen = np.zeros((h, w), dtype=bool)
    seen[start] = True
    todo = deque([start])
    while todo:
        i, j = todo.popleft()
        for a, b in ((i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1)):
            if 0 <= a < h and 0 <= b < w and free[a, b] and not seen[a, b]:
                seen[a, b] = True
                todo.append((a, b))
    return seen


def pair_stats(x: np.ndarray, fx: np.ndarray) -> dict[str, np.ndarray]:
    """Per pair: split (background left unfilled), rectangle area, filled cells, seed row."""
    seed = (x == 2).reshape(len(x), -1).argmax(-1)
    return {
        "split": ((fx == 0) & (x == 0)).any((1, 2)).astype(float),
        "area": (x == 1).sum((1, 2)).astype(float),
        "filled": (fx == 2).sum((1, 2)).astype(float),
        "seed_row": (seed // x.shape[-1]).astype(float),
    }


def labels_of(grids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h, w = grids.shape[-2:]
    x, fx = grids[:, 0::2].reshape(-1, h, w), grids[:, 1::2].reshape(-1, h, w)
    counts = np.stack([(x == c).sum((1, 2)) for c in range(11)], 1)
    s = np.argmax(counts == 1, 1)[:, None, None]
    return (
        np.where(x == 0, 0, np.where(x == s, 2, 1)),
        np.where(fx == 0, 0, np.where(fx == s, 2, 1)),
    )


def components(free: np.ndarray) -> list[np.ndarray]:
    """The 4-connected components of `free`, each as a bool mask."""
    left, out = free.copy(), []
    while left.any():
        region = bfs_region(free, divmod(int(np.argmax(left)), free.shape[1]))
        out.append(region)
        left &= ~region
    return out


def seeds_of(grids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x, fx [m, H, W] of every (X, f_X) pair, the seed colour [m] (the colour drawn on a
    single cell of X) and the seed cell [m] (flat index)."""
    h, w = grids.shape[-2:]
    x, fx = grids[:, 0::2].reshape(-1, h, w), grids[:, 1::2].reshape(-1, h, w)
    counts = np.stack([(x == c).sum((1, 2)) for c in range(11)], 1)
    colour = np.argmax(counts == 1, 1)
    cell = np.argmax((x == colour[:, None, None]).reshape(len(x), -1), -1)
    return x, fx, colour, cell


@pytest.fixture(scope="module")
def ours_grids():
    return TASK.generate(4000, np.random.default_rng(12)).grids


@pytest.fixture(scope="module")
def ours(ours_grids):
    return pair_stats(*labels_of(ours_grids))


@pytest.mark.parametrize(("n", "size"), [(500, (10, 10)), (150, (9, 12)), (150, (13, 7))])
def test_every_pair_follows_the_rule(n, size):
    # f(X) is X with the seed's background region (by an independent BFS) painted in the seed
    # colour and the seed cell itself erased; the rectangles stay as they are.
    h, w = size
    x, fx, colour, cell = seeds_of(TASK.generate(n, np.random.default_rng(4), h, w).grids)
    for k in range(2 * n):
        assert colour[k] > 0
        seed = divmod(int(cell[k]), w)
        region = bfs_region((x[k] == 0) | (x[k] == colour[k]), seed)
        expected = np.where(region, colour[k], x[k])
        expected[seed] = 0
        assert np.array_equal(fx[k], expected)


def test_seed_is_uniform_among_background_cells(ours_grids):
    # Given the rectangles the seed is uniform over the background cells: for the pairs that
    # accept any draw by construction, and for those needing a second background region too,
    # since whether the seed's region leaves background unfilled depends on the rectangles only
    # (there are two regions or more). So (rank of the seed among the background cells + V) /
    # (number of background cells), V uniform, is uniform on [0, 1).
    x, fx, colour, cell = seeds_of(ours_grids)
    m = len(x)
    background = ((x == 0) | (x == colour[:, None, None])).reshape(m, -1)
    rank = np.cumsum(background, -1)[np.arange(m), cell] - 1
    u = (rank + np.random.default_rng(0).random(m)) / background.sum(-1)
    observed = np.bincount((u * 10).astype(int), minlength=10)
    chi2 = ((observed - m / 10) ** 2 / (m / 10)).sum()
    assert chi2 < 35, observed  # 9 degrees of freedom: P(chi2 > 35) < 1e-4
    # The seed's region: given the rectangles, it is the background component C with
    # probability |C| / background, so E[|region|] = sum |C|^2 / background, and
    # E[|region|^2] = sum |C|^3 / background; the sum of deviations is standardised by these.
    sizes = [
        np.array([c.sum() for c in components(b.reshape(x.shape[1:]))]) for b in background[:1500]
    ]
    total = np.array([s.sum() for s in sizes], dtype=float)
    mean = np.array([(s**2).sum() for s in sizes]) / total
    var = np.array([(s**3).sum() for s in sizes]) / total - mean**2
    filled = (fx[:1500] == colour[:1500, None, None]).sum((1, 2)) + 1  # the seed is erased
    z = (filled - mean).sum() / np.sqrt(var.sum())
    assert abs(z) < 4, f"{filled.mean():.3f} vs expected {mean.mean():.3f}"


def test_distribution_matches_reference(reference_dir, ours):
    theirs = pair_stats(*labels_of(reference_grids(reference_dir, "fill")))
    for key in theirs:
        z = z_score(ours[key], theirs[key])
        assert abs(z) < 4, f"{key}: {ours[key].mean():.3f} vs reference {theirs[key].mean():.3f}"
    # Half the pairs accept any draw, half need a second background region: P(split) > 1/2.
    assert 0.6 < ours["split"].mean() < 0.8


def test_pick_free_cell_is_uniform_and_flags_tilings():
    occupied = np.zeros((3, 2, 3), dtype=bool)
    occupied[0, 0] = True  # free cells: the 3 of row 1
    occupied[2] = True  # tiled: no free cell (the original loops forever here)
    u = np.array([0.0, 0.5, 0.99])
    ok, cell = fill_module.pick_free_cell(occupied, u)
    assert ok.tolist() == [True, True, False]
    assert cell[:2].tolist() == [3, 3]
    rng = np.random.default_rng(0)
    many = np.repeat(occupied[:1], 30000, 0)
    _, cells = fill_module.pick_free_cell(many, rng.random(30000))
    assert set(np.unique(cells)) == {3, 4, 5}
    assert np.abs(np.bincount(cells, minlength=6)[3:] / 30000 - 1 / 3).max() < 0.015


def test_tiled_draws_are_rejected_not_looped_on(monkeypatch):
    # On 6x6 about 8% of the disjoint rectangle triples tile the grid: each would hang the
    # original forever. Ours meets them, rejects them and finishes.
    tiled = []
    real = fill_module.pick_free_cell

    def spy(occupied, u):
        ok, cell = real(occupied, u)
        tiled.append(int((~ok).sum()))
        return ok, cell

    monkeypatch.setattr(fill_module, "pick_free_cell", spy)
    sample = TASK.generate(300, np.random.default_rng(0), 6, 6)
    assert sum(tiled) > 0
    assert TASK.check(sample.grids).all()
    assert (sample.grids[:, 0::2] == 0).any(axis=(2, 3)).all()


def test_grid_that_always_tiles_raises_instead_of_hanging():
    # On 9x3 the only three disjoint rectangles (3x3 each, area <= 13) tile the grid: every
    # draw of the original loops forever; ours gives up after the bounded rounds.
    with pytest.raises(GridSizeError):
        fill_module._sample_pairs(np.random.default_rng(0), 1, 9, 3, need_split=False)


@pytest.mark.parametrize("size", [(6, 6), (8, 8), (12, 12), (7, 13), (14, 9)])
def test_other_grid_sizes(size):
    assert_works_at_size(TASK, "fill", *size)


def test_params_describe_the_grids():
    s = TASK.generate(300, np.random.default_rng(3), 9, 12)
    rows = np.arange(300)
    for g, tag in ((0, "A"), (2, "B")):
        si, sj = s.params[f"seed_{tag}"].T
        assert (s.grids[rows, g, si, sj] == s.params["colors"][:, 3]).all()
        assert (s.grids[rows, g + 1, si, sj] == 0).all()
        split = ((s.grids[:, g] == 0) & (s.grids[:, g + 1] == 0)).any((1, 2))
        assert split[~s.params[f"accept_full_{tag}"]].all()


@pytest.mark.parametrize("size", [(5, 10), (10, 5), (3, 9)])
def test_too_small_grid_raises(size):
    with pytest.raises(GridSizeError):
        TASK.generate(10, np.random.default_rng(0), *size)
    with pytest.raises(GridSizeError):
        generate("fill", 10, height=size[0], width=size[1])


def test_checker_survives_garbage():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 11, (300, 4, 10, 10))
    sparse = np.where(rng.random((300, 4, 10, 10)) < 0.9, 0, noise)
    for grids in (noise, sparse, np.zeros((4, 4, 10, 10), np.int64), noise[:0]):
        assert not TASK.check(grids).any()
