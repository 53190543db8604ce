"""path: the batched shortest-path cells against a plain BFS; every generated pair against the
rule (independent BFS); the endpoints given the obstacles against their exact conditional law;
the obstacles against the reference quizzes; other grid sizes and too-small grids.

The reference quizzes' paths are shorter than both ours and those of the original code as run
today (mean shortest-path length about 7.3 against 8.05), so only their obstacles are compared;
the endpoints are checked analytically instead."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import FAR, assert_works_at_size, bfs, reference_grids, z_score

from gridlens.errors import GridSizeError
from gridlens.world import generate
from gridlens.world.tasks import get_task
from gridlens.world.tasks.path import _sample_pairs

TASK = get_task("path")


def all_pairs_distances(free: np.ndarray) -> np.ndarray:
    """[m, H*W, H*W] 4-connected distances inside free [m, H, W] between every two cells
    (source, target); FAR where either is blocked or they are not connected."""
    m, h, w = free.shape
    d = np.full((m, h * w, h, w), FAR, dtype=np.int32)
    cells = np.arange(h * w)
    d[:, cells, cells // w, cells % w] = 0
    d = np.where(free[:, None], d, FAR)
    while True:
        nxt = d.copy()
        np.minimum(nxt[..., 1:, :], d[..., :-1, :] + 1, out=nxt[..., 1:, :])
        np.minimum(nxt[..., :-1, :], d[..., 1:, :] + 1, out=nxt[..., :-1, :])
        np.minimum(nxt[..., :, 1:], d[..., :, :-1] + 1, out=nxt[..., :, 1:])
        np.minimum(nxt[..., :, :-1], d[..., :, 1:] + 1, out=nxt[..., :, :-1])
        nxt = np.where(free[:, None], nxt, FAR)
        if np.array_equal(nxt, d):
            return d.reshape(m, h * w, h * w)
        d = nxt


def pairs_of(grids: np.ndarray) -> dict[str, np.ndarray]:
    """Every (X, f_X) pair of quizzes [n, 4, H, W] split into its parts: x, fx [m, H, W];
    obstacles [m, H, W] bool; the two endpoint cells ends [m, 2] (flat indices); the path
    colour [m] (the colour f_X adds, 0 where it adds none)."""
    h, w = grids.shape[-2:]
    x, fx = grids[:, 0::2].reshape(-1, h, w), grids[:, 1::2].reshape(-1, h, w)
    counts = np.stack([(x == c).sum((1, 2)) for c in range(11)], 1)
    e = np.argmax(counts == 2, 1)
    emask = (x == e[:, None, None]).reshape(len(x), -1)
    first = np.argmax(emask, -1)
    last = h * w - 1 - np.argmax(emask[:, ::-1], -1)
    added = np.where(x == 0, fx, 0).reshape(len(x), -1).max(-1)
    return {
        "x": x,
        "fx": fx,
        "obstacles": (x != 0) & (x != e[:, None, None]),
        "ends": np.stack([first, last], -1),
        "path_colour": added,
    }


def obstacle_stats(grids: np.ndarray) -> dict[str, np.ndarray]:
    """Per pair: obstacle area, mean obstacle rectangle height and width, obstacle cells per row
    and per column ([m, H], [m, W])."""
    p = pairs_of(grids)
    x, obstacles = p["x"], p["obstacles"]
    heights, widths = [], []
    for k in range(len(x)):
        colours = np.unique(x[k][obstacles[k]])
        rows = [np.flatnonzero((x[k] == c).any(1)) for c in colours]
        cols = [np.flatnonzero((x[k] == c).any(0)) for c in colours]
        heights.append(np.mean([r[-1] - r[0] + 1 for r in rows]))
        widths.append(np.mean([c[-1] - c[0] + 1 for c in cols]))
    return {
        "area": obstacles.sum((1, 2)).astype(float),
        "height": np.array(heights),
        "width": np.array(widths),
        "rows": obstacles.sum(2).astype(float),
        "cols": obstacles.sum(1).astype(float),
    }


@pytest.fixture(scope="module")
def ours():
    return TASK.generate(4000, np.random.default_rng(11)).grids


@pytest.mark.parametrize(("n", "size"), [(500, (10, 10)), (150, (9, 12)), (150, (13, 7))])
def test_every_pair_follows_the_rule(n, size):
    # The coloured cells are exactly the cells on some shortest path around the obstacles, by
    # a BFS from each endpoint; the endpoints are more than 2 apart and the path is shorter
    # than height + width.
    h, w = size
    p = pairs_of(TASK.generate(n, np.random.default_rng(4), h, w).grids)
    for k in range(2 * n):
        free = ~p["obstacles"][k]
        s, t = divmod(int(p["ends"][k, 0]), w), divmod(int(p["ends"][k, 1]), w)
        assert abs(s[0] - t[0]) + abs(s[1] - t[1]) > 2
        d1, d2 = bfs(free, s), bfs(free, t)
        length = d1[t]
        assert length < h + w
        on_path = free & (d1 + d2 == length)
        on_path[s] = on_path[t] = False
        assert p["path_colour"][k] > 0
        expected = np.where(on_path, p["path_colour"][k], p["x"][k])
        assert np.array_equal(p["fx"][k], expected)


def test_endpoints_follow_their_law_given_the_obstacles(ours):
    # Given the obstacles, the endpoints are uniform over the ordered pairs of free cells more
    # than 2 apart (Manhattan) whose shortest path is shorter than 2 x width. The summed
    # deviations of each pair's Manhattan and path distances from their exact conditional means
    # are standardised by the exact conditional variances.
    h = w = 10
    p = pairs_of(ours[:200])
    m = len(p["x"])
    dist = all_pairs_distances(~p["obstacles"])
    cells = np.arange(h * w)
    manhattan = np.abs(cells[:, None] // w - cells // w) + np.abs(cells[:, None] % w - cells % w)
    allowed = (manhattan > 2) & (dist < 2 * w)  # [m, HW, HW]; FAR excludes blocked cells
    weight = allowed / allowed.sum((1, 2), keepdims=True)
    rows = np.arange(m)
    s, t = p["ends"][:, 0], p["ends"][:, 1]
    for name, value, observed in (
        ("manhattan", np.broadcast_to(manhattan, dist.shape), manhattan[s, t]),
        ("distance", dist, dist[rows, s, t]),
    ):
        value = value.astype(float)
        mean = (weight * value).sum((1, 2))
        var = (weight * value**2).sum((1, 2)) - mean**2
        z = (observed - mean).sum() / np.sqrt(var.sum())
        assert abs(z) < 4, f"{name}: {observed.mean():.3f} vs expected {mean.mean():.3f}"


def test_obstacles_match_reference(reference_dir, ours):
    grids = reference_grids(reference_dir, "path")
    theirs, mine = obstacle_stats(grids), obstacle_stats(ours)
    for key in theirs:
        z = z_score(mine[key], theirs[key])
        assert np.abs(z).max() < 4.5, f"{key}: {mine[key].mean(0)} vs {theirs[key].mean(0)}"


def test_params_describe_the_grids():
    s = TASK.generate(200, np.random.default_rng(3), 9, 12)
    rows = np.arange(200)
    for g, tag in ((0, "A"), (2, "B")):
        ends = s.params[f"endpoints_{tag}"]
        for e in range(2):
            colour = s.grids[rows, g, ends[:, e, 0], ends[:, e, 1]]
            assert (colour == s.params["colors"][:, 2]).all()
        path_cells = (s.grids[:, g + 1] == s.params["colors"][:, 3, None, None]).sum((1, 2))
        assert (path_cells >= s.params[f"length_{tag}"] - 1).all()
        assert (s.params[f"length_{tag}"] < 9 + 12).all()
        assert (s.objects[:, g + 1][s.roles[:, g + 1] == 3] == 4).all()


@pytest.mark.parametrize("size", [(6, 6), (8, 8), (12, 12), (7, 13), (14, 9)])
def test_other_grid_sizes(size):
    assert_works_at_size(TASK, "path", *size)


@pytest.mark.parametrize("size", [(5, 10), (10, 5), (3, 3)])
def test_too_small_grid_raises(size):
    with pytest.raises(GridSizeError):
        TASK.generate(10, np.random.default_rng(0), *size)
    with pytest.raises(GridSizeError):
        generate("path", 10, height=size[0], width=size[1])


def test_checker_survives_garbage():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 11, (300, 4, 10, 10))
    sparse = np.where(rng.random((300, 4, 10, 10)) < 0.9, 0, noise)
    for grids in (noise, sparse, np.zeros((4, 4, 10, 10), np.int64), noise[:0]):
        assert not TASK.check(grids).any()


def test_sampler_is_bounded_on_hopeless_grids():
    # On 6x3 two disjoint 3x3 obstacles cover every cell: nothing is ever accepted.
    with pytest.raises(GridSizeError):
        _sample_pairs(np.random.default_rng(0), 1, 6, 3)
