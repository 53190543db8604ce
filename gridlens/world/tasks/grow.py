"""grow: three disjoint rectangles; the last one grows by a one-cell border, or shrinks by one.

Original (`task_grow`): three distinct colours and a direction (0: grow, 1: shrink), both
shared by both pairs; the last colour (c[2]) is the resized rectangle's. Per pair, three
disjoint `rec_coo` rectangles, resampled until the last one is at least 4 x 4
(``i1 + 3 < i2 and j1 + 3 < j2``). Growing: X holds the last rectangle without its one-cell
border, f(X) the full rectangle; shrinking is the reverse. The two static rectangles are the
same in X and f(X). Works on any grid of at least 7 x 7 (a 4 x 4 and two 3 x 3 rectangles must
fit; the original's 10 x 10 bound H*W//2 on the area scales).
"""

from __future__ import annotations

from functools import cache

import numpy as np

from gridlens.world import shapes
from gridlens.world.tasks.base import RECTANGLE_LABELS, Task, labelled_sample

N_RECT = 3
MIN_RESIZED = 4


@cache
def _tables(height: int, width: int):
    """Per grid size: rectangle table, flat uint8 masks labelled 1..3, the last label's full and
    inner masks, and the rectangles allowed as the resized one."""
    table = shapes.rectangle_table(height, width)
    rects = table.rects
    masks = table.masks.reshape(len(rects), -1).view(np.uint8)
    inner = shapes.rectangle_masks(rects + np.array([1, 1, -1, -1]), height, width)
    inner = inner.reshape(len(rects), -1).view(np.uint8)
    size = rects[:, 2:] - rects[:, :2]
    pool = np.flatnonzero((size >= MIN_RESIZED).all(-1))
    labelled = [masks * np.uint8(k + 1) for k in range(N_RECT)]
    # The resized rectangle: full (rows 0..R-1), then without its border (rows R..2R-1).
    resized = np.concatenate([labelled[N_RECT - 1], inner * np.uint8(N_RECT)])
    return table, labelled, resized, pool


class Grow(Task):
    name = "grow"
    roles = ("background", "static", "resized")
    min_height = 7
    min_width = 7
    description = "the last rectangle grows by a one-cell border, or shrinks by one (shared)"

    def generate(self, n, rng, height=10, width=10):
        self.validate_size(height, width)
        table, labelled, resized, pool = _tables(height, width)
        colours = shapes.distinct_colours(rng, n, N_RECT)
        direction = rng.integers(0, 2, n)  # 0: grow, 1: shrink
        idx = shapes.sample_rectangles(rng, 2 * n, N_RECT, height, width, self.name, last=pool)
        idx = idx.reshape(n, 2, N_RECT)
        static = labelled[0][idx[:, :, 0]] + labelled[1][idx[:, :, 1]]  # [n, 2, HW]
        inner_in_x = len(table.rects) * (direction == 0)[:, None]  # growing: X holds the inner
        labels = np.empty((n, 4, height * width), dtype=np.uint8)
        labels[:, 0::2] = static + resized[idx[:, :, 2] + inner_in_x]
        labels[:, 1::2] = static + resized[idx[:, :, 2] + len(table.rects) - inner_in_x]
        labels = labels.reshape(n, 4, height, width)
        return labelled_sample(
            labels, colours, RECTANGLE_LABELS, table.rects[idx], direction=direction
        )

    def check(self, grids):
        grids = np.asarray(grids)
        n, _, h, w = grids.shape
        counts, boxes = shapes.colour_boxes(grids)
        counts, boxes = counts[..., 1:], boxes[..., 1:, :]  # colours 1..10
        present = counts > 0  # [n, 4, 10]
        size = boxes[..., 2:] - boxes[..., :2]  # [n, 4, 10, 2]
        area = size[..., 0] * size[..., 1]
        # Every grid: exactly the same three colours, each a filled rectangle (so disjoint).
        ok = (present.sum(-1) == N_RECT).all(1)
        ok &= (present == present[:, :1]).all(axis=(1, 2))
        ok &= (~present | (counts == area)).all(axis=(1, 2))
        resized, modes = [], []
        border = np.array([-1, -1, 1, 1])
        for x, fx in ((0, 1), (2, 3)):
            changed = present[:, x] & (boxes[:, x] != boxes[:, fx]).any(-1)  # [n, 10]
            ok &= changed.sum(-1) == 1
            c = changed.argmax(-1)
            bx, bfx = boxes[np.arange(n), x, c], boxes[np.arange(n), fx, c]  # [n, 4]
            grow = (bfx == bx + border).all(-1)
            shrink = (bx == bfx + border).all(-1)
            ok &= grow | shrink
            big = np.where(grow[:, None], bfx, bx)
            big_size = big[:, 2:] - big[:, :2]
            ok &= (big_size >= MIN_RESIZED).all(-1)
            ok &= big_size[:, 0] * big_size[:, 1] <= h * w // 2
            static = present[:, x] & ~changed
            ok &= (~static | ((size[:, x] >= 3).all(-1) & (area[:, x] <= h * w // 2))).all(-1)
            resized.append(c)
            modes.append(grow)
        ok &= (resized[0] == resized[1]) & (modes[0] == modes[1])
        return ok

    def other_parameters(self, sample, rng):
        # Apply the other direction to B: shrink its last rectangle if the rule grows, else grow.
        h, w = sample.grids.shape[-2:]
        colour = sample.params["colors"][:, 2]
        rect = sample.params["rects_B"][:, 2]
        grow = sample.params["direction"] == 0
        border_out = np.array([-1, -1, 1, 1])
        b = sample.grids[:, 2]
        # B holds the inner rectangle when growing (shrink it further), the full one otherwise.
        target = np.where(grow[:, None], rect + np.array([2, 2, -2, -2]), rect + border_out)
        wrong = np.where(b == colour[:, None, None], 0, b)
        shapes.paint(wrong, shapes.rectangle_masks(target, h, w), colour)
        return wrong


TASK = Grow()
