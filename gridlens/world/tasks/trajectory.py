"""trajectory: two cells define a ray; f(X) extends it to the border of the grid.

Original (`task_trajectory`): two distinct colours c0, c1 shared by both pairs. Each pair
draws its own direction (di, dj) in [-3, 3]^2 and start (i, j) uniformly, rejecting the null
direction and rays whose third cell (i + 2 di, j + 2 dj) is off the grid. X holds the start in
c0 and the next cell of the ray in c1; f(X) keeps the start in c0 and paints every further
cell of the ray, up to the border, in c1. Every accepted (di, dj, i, j) is equally likely, so
we sample uniformly from the table of all of them and render by table lookup. Nothing in the
rule depends on the 10 x 10 size: other sizes (non-square too) use the same direction range.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from gridlens.world import shapes
from gridlens.world.tasks.base import Task, TaskSample, recolour_unused

MAX_STEP = 3


@cache
def _table(height: int, width: int):
    """All valid (di, dj, i, j), their X / f(X) drawings (0 empty, 1 start, 2 ray) and a
    lookup [7, 7, H, W] -> row (-1 where invalid)."""
    d = np.arange(-MAX_STEP, MAX_STEP + 1)
    di, dj, i, j = (
        a.ravel() for a in np.meshgrid(d, d, np.arange(height), np.arange(width), indexing="ij")
    )
    ok = ((di != 0) | (dj != 0)) & (i + 2 * di >= 0) & (i + 2 * di < height)
    ok &= (j + 2 * dj >= 0) & (j + 2 * dj < width)
    di, dj, i, j = di[ok], dj[ok], i[ok], j[ok]
    t = len(di)
    x = np.zeros((t, height, width), dtype=np.int8)
    fx = np.zeros((t, height, width), dtype=np.int8)
    rows = np.arange(t)
    for k in range(max(height, width)):
        ii, jj = i + k * di, j + k * dj
        inside = (ii >= 0) & (ii < height) & (jj >= 0) & (jj < width)
        r, ii, jj = rows[inside], ii[inside], jj[inside]
        fx[r, ii, jj] = 1 if k == 0 else 2
        if k < 2:
            x[r, ii, jj] = k + 1
    lookup = np.full((2 * MAX_STEP + 1, 2 * MAX_STEP + 1, height, width), -1, dtype=np.int64)
    lookup[di + MAX_STEP, dj + MAX_STEP, i, j] = rows
    params = np.stack([di, dj, i, j], axis=1)
    for a in (x, fx, lookup, params):
        a.setflags(write=False)
    return params, x, fx, lookup


class Trajectory(Task):
    name = "trajectory"
    roles = ("background", "origin", "ray")
    min_height = 3
    min_width = 3
    description = "two cells define a ray; f(X) extends it to the border"

    def generate(self, n, rng, height=10, width=10):
        self.validate_size(height, width)
        params, tx, tfx, _ = _table(height, width)
        colours = shapes.distinct_colours(rng, n, 2)  # shared c0 (origin), c1 (ray)
        idx = rng.integers(0, len(params), size=(n, 2))  # one ray per pair
        palette = np.concatenate([np.zeros((n, 1), np.int64), colours], axis=1)  # [n, 3]
        codes = np.stack([tx[idx[:, 0]], tfx[idx[:, 0]], tx[idx[:, 1]], tfx[idx[:, 1]]], axis=1)
        grids = np.take_along_axis(palette, codes.reshape(n, -1).astype(np.int64), axis=1)
        grids = grids.reshape(n, 4, height, width)
        roles = codes  # 0 background, 1 origin, 2 ray
        objects = (codes.astype(np.int8) - 1).astype(np.int8)
        return TaskSample(
            grids=grids,
            params={
                "colors": colours,
                "direction": params[idx][..., :2],  # [n, 2 pairs, (di, dj)]
                "start": params[idx][..., 2:],  # [n, 2 pairs, (i, j)]
            },
            objects=objects,
            roles=roles.astype(np.int8),
        )

    def check(self, grids):
        grids = np.asarray(grids)
        n, _, h, w = grids.shape
        if h < self.min_height or w < self.min_width:
            return np.zeros(n, dtype=bool)
        _, tx, tfx, lookup = _table(h, w)
        flat = grids.reshape(n, 4, -1)
        x, fx = flat[:, 0::2], flat[:, 1::2]  # [n, 2, HW]
        counts = (fx[..., None] == np.arange(11)).sum(axis=2)  # [n, 2, 11]
        # In f(X) the origin colour appears once and the ray colour at least twice.
        present = counts[..., 1:] > 0
        ok = (present.sum(-1) == 2).all(-1)
        single = counts[..., 1:] == 1
        multi = counts[..., 1:] >= 2
        ok &= (single.sum(-1) == 1).all(-1) & (multi.sum(-1) == 1).all(-1)
        c0 = single.argmax(-1) + 1  # [n, 2]
        c1 = multi.argmax(-1) + 1
        ok &= (c0[:, 0] == c0[:, 1]) & (c1[:, 0] == c1[:, 1])  # colours shared by the pairs
        # X: exactly one c0 cell and one c1 cell, nothing else.
        is0, is1 = x == c0[..., None], x == c1[..., None]
        ok &= (is0.sum(-1) == 1).all(-1) & (is1.sum(-1) == 1).all(-1)
        ok &= ((x != 0).sum(-1) == 2).all(-1)
        p0, p1 = is0.argmax(-1), is1.argmax(-1)
        i0, j0, i1, j1 = p0 // w, p0 % w, p1 // w, p1 % w
        di, dj = i1 - i0, j1 - j0
        valid = (np.abs(di) <= MAX_STEP) & (np.abs(dj) <= MAX_STEP)
        row = lookup[
            np.clip(di + MAX_STEP, 0, 2 * MAX_STEP), np.clip(dj + MAX_STEP, 0, 2 * MAX_STEP), i0, j0
        ]
        valid &= row >= 0
        ok &= valid.all(-1)
        row = np.where(valid, row, 0)
        palette = np.stack([np.zeros_like(c0), c0, c1], axis=-1)  # [n, 2, 3]
        exp_x = np.take_along_axis(palette, tx[row].reshape(n, 2, -1).astype(np.int64), axis=2)
        exp_fx = np.take_along_axis(palette, tfx[row].reshape(n, 2, -1).astype(np.int64), axis=2)
        ok &= (exp_x == x).all(axis=(1, 2)) & (exp_fx == fx).all(axis=(1, 2))
        return ok

    def other_parameters(self, sample, rng):
        # Draw B's ray in a colour unused by the quiz instead of the shared ray colour.
        return recolour_unused(sample, rng, 3, 1)


TASK = Trajectory()
