"""path: two disjoint rectangles (obstacles) and two endpoint cells; in f(X) every cell on some
shortest 4-connected path between the endpoints that avoids the rectangles takes the path colour.

As in the original `task_path`: four distinct colours shared by both pairs (two rectangle
colours, the endpoint colour, the path colour); per pair two disjoint rectangles drawn like
`rec_coo(2, prevent_overlap=True)` and two uniform endpoint cells, the whole draw rejected
unless the endpoints are at Manhattan distance > 2, both lie on background cells, and their
shortest-path distance around the rectangles is < 2 x width. The union of all shortest paths
is painted (it can be a block, not a single line), then the endpoints on top of it.

Other grid sizes: the distance bound 2 x width of the 10x10 original becomes height + width
(the same on square grids). Grids must be at least 6x6 (two disjoint 3x3 rectangles).

Distances are computed for the whole batch at once by breadth-first relaxation on bit-sliced
cell sets (one bit per quiz, see `grid_search`), at most height + width steps.
"""

from __future__ import annotations

import numpy as np

from gridlens.world import shapes
from gridlens.world.grid_search import shortest_path_cells
from gridlens.world.tasks.base import Task, TaskSample, recolour_unused

N_RECT = 2


def _endpoint_masks(i: np.ndarray, j: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bool [m, H, W] with the single cell (i, j) of each row set."""
    mask = np.zeros((len(i), height, width), dtype=bool)
    mask[np.arange(len(i)), i, j] = True
    return mask


def _inside(rects: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """[m] is cell (i, j) inside the half-open rectangle [m, 4]?"""
    return (rects[:, 0] <= i) & (i < rects[:, 2]) & (rects[:, 1] <= j) & (j < rects[:, 3])


def _sample_pairs(rng: np.random.Generator, n: int, height: int, width: int) -> dict:
    """n pairs as the original draws them: rectangle indices [n, 2], endpoints [n, 2, 2] (i, j),
    shortest-path length [n]. Draws failing a cheap condition skip the later, costlier ones."""
    table = shapes.rectangle_table(height, width)
    n_rects = len(table.rects)
    max_dist = height + width - 1  # the original's d < 2 * width, on any grid shape

    def propose(m: int):
        idx = rng.integers(0, n_rects, size=(m, N_RECT))
        ii = rng.integers(0, height, size=(m, 2))
        jj = rng.integers(0, width, size=(m, 2))
        ok = ~table.overlap[idx[:, 0], idx[:, 1]]
        ok &= np.abs(ii[:, 0] - ii[:, 1]) + np.abs(jj[:, 0] - jj[:, 1]) > 2
        cand = np.flatnonzero(ok)
        free_ends = np.ones(len(cand), dtype=bool)
        for k in range(N_RECT):
            rects = table.rects[idx[cand, k]]
            for e in range(2):
                free_ends &= ~_inside(rects, ii[cand, e], jj[cand, e])
        cand = cand[free_ends]
        dist = np.full(m, -1, dtype=np.int64)
        if len(cand):
            walls = table.masks[idx[cand, 0]] | table.masks[idx[cand, 1]]
            start = _endpoint_masks(ii[cand, 0], jj[cand, 0], height, width)
            goal = _endpoint_masks(ii[cand, 1], jj[cand, 1], height, width)
            dist[cand] = shortest_path_cells(~walls, start, goal, max_dist)[0]
        ends = np.stack([ii, jj], axis=-1)  # [m, 2, 2]
        return dist >= 0, {"rects": idx, "endpoints": ends, "length": dist}

    return shapes.rejection_sample(n, propose, "path")


class Path(Task):
    name = "path"
    roles = ("background", "obstacle", "endpoint", "path")
    min_height = 6
    min_width = 6
    description = "every cell on a shortest path between the two endpoints takes the path colour"

    def generate(self, n, rng, height=10, width=10):
        self.validate_size(height, width)
        # c0, c1 obstacles, c2 endpoints, c3 path
        colours = shapes.distinct_colours(rng, n, N_RECT + 2)
        grids = np.empty((n, 4, height, width), dtype=np.int64)
        objects = np.empty(grids.shape, dtype=np.int8)
        params = {"colors": colours}
        table = shapes.rectangle_table(height, width)
        rows = np.arange(n)
        # Object labels: 0, 1 obstacles, 2, 3 endpoints, 4 path; looked up as label + 1.
        colour_lut = np.concatenate([np.zeros((n, 1), np.int64), colours[:, [0, 1, 2, 2, 3]]], 1)
        role_lut = np.array([0, 1, 1, 2, 2, 3], dtype=np.int8)
        for pair, tag in ((0, "A"), (1, "B")):
            s = _sample_pairs(rng, n, height, width)
            ends = s["endpoints"]
            params[f"rects_{tag}"] = table.rects[s["rects"]]
            params[f"endpoints_{tag}"] = ends
            params[f"length_{tag}"] = s["length"]
            m0, m1 = table.masks[s["rects"][:, 0]], table.masks[s["rects"][:, 1]]
            start = _endpoint_masks(ends[:, 0, 0], ends[:, 0, 1], height, width)
            goal = _endpoint_masks(ends[:, 1, 0], ends[:, 1, 1], height, width)
            path = shortest_path_cells(~(m0 | m1), start, goal, height + width - 1)[1]
            label = m0.astype(np.int8) + 2 * m1.astype(np.int8)  # label + 1, 0 background
            flabel = np.where(path, np.int8(5), label)
            for e in range(2):
                ei, ej = ends[:, e, 0], ends[:, e, 1]
                label[rows, ei, ej] = flabel[rows, ei, ej] = 3 + e
            for g, lab in ((2 * pair, label), (2 * pair + 1, flabel)):
                grids[:, g] = shapes.label_lookup(colour_lut, lab)
                objects[:, g] = lab - 1
        roles = role_lut[objects + 1]
        return TaskSample(grids=grids, params=params, objects=objects, roles=roles)

    def check(self, grids):
        grids = np.asarray(grids)
        n, _, h, w = grids.shape
        counts, boxes = shapes.colour_boxes(grids)  # [n, 4, 11], [n, 4, 11, 4]
        present = counts[..., 1:] > 0  # [n, 4, 10]
        hh = boxes[..., 2] - boxes[..., 0]
        ww = boxes[..., 3] - boxes[..., 1]
        rect = shapes.is_filled_box(counts, boxes) & (hh >= 3) & (ww >= 3) & (hh * ww <= h * w // 2)
        ends = counts == 2
        x = grids[:, 0::2].reshape(2 * n, h, w)  # A, B
        fx = grids[:, 1::2].reshape(2 * n, h, w)
        px, rx, ex = (a[:, 0::2].reshape(2 * n, a.shape[-1]) for a in (present, rect, ends))
        ok = (px.sum(-1) == 3) & (rx[:, 1:].sum(-1) == N_RECT) & (ex[:, 1:].sum(-1) == 1)
        e = np.argmax(ex[:, 1:], -1) + 1
        emask = x == e[:, None, None]
        flat = emask.reshape(2 * n, h * w)
        first = np.argmax(flat, -1)
        last = h * w - 1 - np.argmax(flat[:, ::-1], -1)
        i1, j1, i2, j2 = first // w, first % w, last // w, last % w
        ok &= np.abs(i1 - i2) + np.abs(j1 - j2) > 2
        free = (x == 0) | emask
        start = _endpoint_masks(i1, j1, h, w)
        goal = _endpoint_masks(i2, j2, h, w)
        dist, cells = shortest_path_cells(free, start, goal, h + w - 1)
        ok &= dist >= 0
        # The path colour is the one colour f_A adds to A; both pairs use it.
        new = present[:, 1] & ~present[:, 0]
        ok_n = new.sum(-1) == 1
        p = np.repeat(np.argmax(new, -1) + 1, 2)
        expected = np.where(cells & ~emask, p[:, None, None], x)
        ok &= (expected == fx).all(axis=(1, 2))
        ok = ok.reshape(n, 2).all(-1) & ok_n
        # Shared colours: endpoints, obstacles (as a set) and path.
        e = e.reshape(n, 2)
        ok &= (e[:, 0] == e[:, 1]) & (present[:, 0] == present[:, 2]).all(-1)
        return ok

    def other_parameters(self, sample, rng):
        # The same paths drawn in a colour the quiz does not use.
        return recolour_unused(sample, rng, 3, 3)


TASK = Path()
