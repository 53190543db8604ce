"""grid_search: the batched flood fill and shortest-path cells against a plain BFS per grid."""

from __future__ import annotations

import numpy as np
from helpers import FAR, bfs

from gridlens.world.grid_search import flood, shortest_path_cells


def one_cell(cells: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bool [m, H, W] with the flat cell cells[k] of grid k set."""
    mask = np.zeros((len(cells), h * w), dtype=bool)
    mask[np.arange(len(cells)), cells] = True
    return mask.reshape(-1, h, w)


def test_flood_matches_plain_bfs():
    rng = np.random.default_rng(0)
    m, h, w = 300, 8, 13
    free = rng.random((m, h, w)) > 0.4
    cells = np.array([rng.choice(np.flatnonzero(f.ravel())) for f in free])
    region = flood(free, one_cell(cells, h, w))
    for k in range(m):
        assert np.array_equal(region[k], bfs(free[k], divmod(cells[k], w)) < FAR)


def test_shortest_path_cells_match_plain_bfs():
    rng = np.random.default_rng(0)
    m, h, w = 300, 9, 11
    free = rng.random((m, h, w)) > 0.3
    # two distinct random free cells per grid
    s = np.array([rng.permutation(np.flatnonzero(f.ravel()))[:2] for f in free])
    start, goal = one_cell(s[:, 0], h, w), one_cell(s[:, 1], h, w)
    dist, on_path = shortest_path_cells(free, start, goal, h * w)
    for k in range(m):
        d1 = bfs(free[k], divmod(s[k, 0], w))
        d2 = bfs(free[k], divmod(s[k, 1], w))
        true = d1.ravel()[s[k, 1]]
        if true == FAR:
            assert dist[k] == -1
            assert not on_path[k].any()
        else:
            assert dist[k] == true
            assert np.array_equal(on_path[k], (d1 + d2 == true) & free[k])
    # A distance cap: farther goals count as unreachable.
    capped, _ = shortest_path_cells(free, start, goal, 5)
    assert np.array_equal(capped, np.where(dist <= 5, dist, -1))
