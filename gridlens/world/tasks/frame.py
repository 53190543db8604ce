"""frame: three disjoint rectangles; the last one becomes a hollow one-cell frame.

Original (`task_frame`): three distinct colours shared by both pairs (it draws four and never
uses the fourth, which leaves the first three uniform), the last one (c[2]) is the framed
rectangle's. Per pair, three disjoint `rec_coo` rectangles; f(X) keeps the two first and only
the one-cell border of the last. Works on any grid of at least 6 x 6 (the original's 10 x 10
bound H*W//2 on the area scales).
"""

from __future__ import annotations

from functools import cache

import numpy as np

from gridlens.world import shapes
from gridlens.world.tasks.base import RECTANGLE_LABELS, Task, labelled_sample

N_RECT = 3


@cache
def _tables(height: int, width: int):
    """Per grid size: rectangle table, flat uint8 masks labelled 1..3 and the last label's
    frame masks."""
    table = shapes.rectangle_table(height, width)
    rects = table.rects
    r = len(rects)
    masks = table.masks.reshape(r, -1).view(np.uint8)
    inner = shapes.rectangle_masks(rects + np.array([1, 1, -1, -1]), height, width)
    frames = masks & ~inner.reshape(r, -1).view(np.uint8)
    labelled = [masks * np.uint8(k + 1) for k in range(N_RECT)]
    return table, labelled, frames * np.uint8(N_RECT)


class Frame(Task):
    name = "frame"
    roles = ("background", "static", "framed")
    min_height = 6
    min_width = 6
    description = "the last rectangle becomes a hollow one-cell frame"

    def generate(self, n, rng, height=10, width=10):
        self.validate_size(height, width)
        table, labelled, frames = _tables(height, width)
        colours = shapes.distinct_colours(rng, n, N_RECT)
        idx = shapes.sample_rectangles(rng, 2 * n, N_RECT, height, width, self.name)
        idx = idx.reshape(n, 2, N_RECT)
        static = labelled[0][idx[:, :, 0]] + labelled[1][idx[:, :, 1]]  # [n, 2, HW]
        labels = np.empty((n, 4, height * width), dtype=np.uint8)
        labels[:, 0::2] = static + labelled[2][idx[:, :, 2]]
        labels[:, 1::2] = static + frames[idx[:, :, 2]]
        labels = labels.reshape(n, 4, height, width)
        return labelled_sample(labels, colours, RECTANGLE_LABELS, table.rects[idx])

    def check(self, grids):
        grids = np.asarray(grids)
        n, _, h, w = grids.shape
        counts, boxes = shapes.colour_boxes(grids)
        counts, boxes = counts[..., 1:], boxes[..., 1:, :]  # colours 1..10
        present = counts > 0  # [n, 4, 10]
        size = boxes[..., 2:] - boxes[..., :2]
        area = size[..., 0] * size[..., 1]
        ok = (present.sum(-1) == N_RECT).all(1)
        ok &= (present == present[:, :1]).all(axis=(1, 2))
        framed = []
        for x, fx in ((0, 1), (2, 3)):
            # X: three filled (hence disjoint) rectangles of the original's sizes.
            good = (counts[:, x] == area[:, x]) & (size[:, x] >= 3).all(-1)
            good &= area[:, x] <= h * w // 2
            ok &= (~present[:, x] | good).all(-1)
            changed = present[:, x] & (counts[:, fx] != counts[:, x])
            ok &= changed.sum(-1) == 1
            c = changed.argmax(-1)
            box = boxes[np.arange(n), x, c]
            inner = shapes.rectangle_masks(box + np.array([1, 1, -1, -1]), h, w)
            expected = np.where(inner, 0, grids[:, x])
            ok &= (expected == grids[:, fx]).all(axis=(1, 2))
            framed.append(c)
        ok &= framed[0] == framed[1]
        return ok

    def other_parameters(self, sample, rng):
        # Frame another of B's rectangles (one of the two static ones) instead of the last.
        n, _, h, w = sample.grids.shape
        k = rng.integers(0, N_RECT - 1, n)
        rect = sample.params["rects_B"][np.arange(n), k]
        inner = shapes.rectangle_masks(rect + np.array([1, 1, -1, -1]), h, w)
        return np.where(inner, 0, sample.grids[:, 2])


TASK = Frame()
