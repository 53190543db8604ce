"""translate: three disjoint rectangles; the last one moves one cell in one of 8 directions.

Original (`task_translate`): a direction (di, dj) in {-1, 0, 1}^2 minus (0, 0), uniform and
shared by both pairs; three distinct colours shared by both pairs, the last one (c[2]) is the
moving rectangle's. Per pair, three disjoint `rec_coo` rectangles, resampled until the last
one satisfies ``i1 + di >= 0, i2 + di < H, j1 + dj >= 0, j2 + dj < W`` (a quirk kept here:
the moved rectangle never touches the bottom or right border, ``<`` on half-open bounds).
f(X) draws the two static rectangles, then the moved one on top (it may cover parts of them).
Works on any grid of at least 6 x 6 (the original's 10 x 10 bound H*W//2 on the area scales).
"""

from __future__ import annotations

from functools import cache

import numpy as np

from gridlens.world import shapes
from gridlens.world.tasks.base import RECTANGLE_LABELS, Task, labelled_sample

N_RECT = 3
DIRECTIONS = np.array(
    [(di, dj) for di in (-1, 0, 1) for dj in (-1, 0, 1) if (di, dj) != (0, 0)], dtype=np.int64
)
"""The 8 directions (di, dj); `params["direction"]` indexes this table."""


@cache
def _tables(height: int, width: int):
    """Per grid size: rectangle table, flat uint8 masks, per direction the rectangles allowed as
    the moving one and the table index of each rectangle shifted by that direction."""
    table = shapes.rectangle_table(height, width)
    rects = table.rects
    masks = table.masks.reshape(len(rects), -1).view(np.uint8)
    index = np.full((height + 1, width + 1, height + 1, width + 1), -1, dtype=np.int64)
    index[tuple(rects.T)] = np.arange(len(rects))
    pools, shifted = [], np.full((len(DIRECTIONS), len(rects)), -1, dtype=np.int64)
    for d, (di, dj) in enumerate(DIRECTIONS.tolist()):
        fits = (
            (rects[:, 0] + di >= 0)
            & (rects[:, 2] + di < height)
            & (rects[:, 1] + dj >= 0)
            & (rects[:, 3] + dj < width)
        )
        pools.append(np.flatnonzero(fits))
        moved = rects[pools[-1]] + np.array([di, dj, di, dj])
        shifted[d, pools[-1]] = index[tuple(moved.T)]
    labelled = [masks * np.uint8(k + 1) for k in range(N_RECT)]
    return table, labelled, pools, shifted


class Translate(Task):
    name = "translate"
    roles = ("background", "static", "moved")
    min_height = 6
    min_width = 6
    description = "the last rectangle moves one cell in one of 8 directions, drawn on top"

    def generate(self, n, rng, height=10, width=10):
        self.validate_size(height, width)
        table, labelled, pools, shifted = _tables(height, width)
        direction = rng.integers(0, len(DIRECTIONS), n)
        colours = shapes.distinct_colours(rng, n, N_RECT)
        # Both pairs' rectangles, grouped by direction: [n, 2 pairs, 3].
        idx = np.empty((n, 2, N_RECT), dtype=np.int64)
        for d in range(len(DIRECTIONS)):
            rows = np.flatnonzero(direction == d)
            if len(rows):
                got = shapes.sample_rectangles(
                    rng, 2 * len(rows), N_RECT, height, width, self.name, last=pools[d]
                )
                idx[rows] = got.reshape(len(rows), 2, N_RECT)
        moved = shifted[direction[:, None], idx[:, :, 2]]  # [n, 2]
        hw = height * width
        labels = np.empty((n, 4, hw), dtype=np.uint8)
        static = labelled[0][idx[:, :, 0]] + labelled[1][idx[:, :, 1]]  # [n, 2, HW]
        labels[:, 0::2] = static + labelled[2][idx[:, :, 2]]
        labels[:, 1::2] = np.maximum(static, labelled[2][moved])  # moved drawn on top
        labels = labels.reshape(n, 4, height, width)
        return labelled_sample(
            labels,
            colours,
            RECTANGLE_LABELS,
            table.rects[idx],
            direction=direction,
            shift=DIRECTIONS[direction],
        )

    def check(self, grids):
        grids = np.asarray(grids)
        n, _, h, w = grids.shape
        counts, boxes = shapes.colour_boxes(grids)
        counts, boxes = counts[..., 1:], boxes[..., 1:, :]  # colours 1..10
        present = counts > 0  # [n, 4, 10]
        ok = (present.sum(-1) == N_RECT).all(1)
        ok &= (present == present[:, :1]).all(axis=(1, 2))
        size = boxes[..., 2:] - boxes[..., :2]  # [n, 4, 10, 2]
        rect_ok = (
            (counts == size[..., 0] * size[..., 1])
            & (size >= 3).all(-1)
            & (size[..., 0] * size[..., 1] <= h * w // 2)
        )
        movers, shifts = [], []
        for x, fx in ((0, 1), (2, 3)):
            ok &= (~present[:, x] | rect_ok[:, x]).all(-1)
            # The moved colour keeps its cell count and box size, its box shifts by one step.
            step = boxes[:, fx, :, :2] - boxes[:, x, :, :2]  # [n, 10, 2]
            cand = (
                present[:, x]
                & (counts[:, fx] == counts[:, x])
                & (size[:, fx] == size[:, x]).all(-1)
                & (np.abs(step) <= 1).all(-1)
                & (step != 0).any(-1)
            )
            ok &= cand.sum(-1) == 1
            mover = cand.argmax(-1)  # colour - 1
            shift = step[np.arange(n), mover]  # [n, 2]
            box = boxes[np.arange(n), fx, mover]  # [n, 4] after the move
            ok &= (box[:, 2] < h) & (box[:, 3] < w)  # the original's strict bounds
            expected = np.where(grids[:, x] == mover[:, None, None] + 1, 0, grids[:, x])
            shapes.paint(expected, shapes.rectangle_masks(box, h, w), mover + 1)
            ok &= (expected == grids[:, fx]).all(axis=(1, 2))
            movers.append(mover)
            shifts.append(shift)
        ok &= (movers[0] == movers[1]) & (shifts[0] == shifts[1]).all(-1)
        return ok

    def other_parameters(self, sample, rng):
        # Move B's last rectangle in another of the 8 directions (clipped at the border).
        n, _, h, w = sample.grids.shape
        other = (sample.params["direction"] + rng.integers(1, len(DIRECTIONS), n)) % len(DIRECTIONS)
        rect = sample.params["rects_B"][:, 2] + np.tile(DIRECTIONS[other], 2)
        colour = sample.params["colors"][:, 2]
        b = sample.grids[:, 2]
        wrong = np.where(b == colour[:, None, None], 0, b)
        shapes.paint(wrong, shapes.rectangle_masks(rect, h, w), colour)
        return wrong


TASK = Translate()
