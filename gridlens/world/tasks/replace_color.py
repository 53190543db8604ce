"""replace_color: three disjoint rectangles; the one of a given colour is recoloured."""

from __future__ import annotations

import numpy as np

from gridlens.world import shapes
from gridlens.world.tasks.base import Task, TaskSample, recolour_unused

N_RECT = 3


class ReplaceColor(Task):
    name = "replace_color"
    roles = ("background", "source", "replacement", "other")
    min_height = 3
    min_width = 3
    description = "the rectangle of the source colour takes the replacement colour"

    def generate(self, n, rng, height=10, width=10):
        self.validate_size(height, width)
        colours = shapes.distinct_colours(rng, n, N_RECT + 1)  # c0..c2 rectangles, c3 new
        grids = np.zeros((n, 4, height, width), dtype=np.int64)
        objects = np.full(grids.shape, -1, dtype=np.int8)
        roles = np.zeros(grids.shape, dtype=np.int8)
        params = {"colors": colours}
        table = shapes.rectangle_table(height, width)
        for pair, key in ((0, "rects_A"), (1, "rects_B")):
            idx = shapes.sample_rectangles(rng, n, N_RECT, height, width, self.name)
            params[key] = table.rects[idx]
            masks = table.masks[idx]  # [n, 3, H, W]
            x, fx = 2 * pair, 2 * pair + 1
            for k in range(N_RECT):
                shapes.paint(grids[:, x], masks[:, k], colours[:, k])
                shapes.paint(grids[:, fx], masks[:, k], colours[:, k] if k else colours[:, N_RECT])
                for g in (x, fx):
                    objects[:, g][masks[:, k]] = k
                    roles[:, g][masks[:, k]] = 3 if k else (1 if g == x else 2)
        return TaskSample(grids=grids, params=params, objects=objects, roles=roles)

    def check(self, grids):
        counts, boxes = shapes.colour_boxes(grids)  # [n, 4, 11], [n, 4, 11, 4]
        present = counts[..., 1:] > 0  # [n, 4, 10]
        filled = shapes.is_filled_box(counts, boxes)[..., 1:]
        hh = boxes[..., 1:, 2] - boxes[..., 1:, 0]
        ww = boxes[..., 1:, 3] - boxes[..., 1:, 1]
        h, w = grids.shape[-2:]
        good_rect = ~present | (filled & (hh >= 3) & (ww >= 3) & (hh * ww <= h * w // 2))
        ok = good_rect.all(axis=(1, 2)) & (present.sum(-1) == N_RECT).all(axis=1)
        # X and f(X) share two colours; X's third colour (source) becomes f(X)'s third (new).
        a, fa, b, fb = (present[:, g] for g in range(4))
        ok &= (a == b).all(-1) & (fa == fb).all(-1) & ((a & fa).sum(-1) == N_RECT - 1)
        source = a & ~fa
        replacement = fa & ~a
        ok &= (source.sum(-1) == 1) & (replacement.sum(-1) == 1)
        src = np.argmax(source, -1) + 1
        new = np.argmax(replacement, -1) + 1
        for x, fx in ((0, 1), (2, 3)):
            expected = np.where(grids[:, x] == src[:, None, None], new[:, None, None], grids[:, x])
            ok &= (expected == grids[:, fx]).all(axis=(1, 2))
        return ok

    def other_parameters(self, sample, rng):
        # Recolour B's source rectangle with a colour unused by the quiz instead.
        return recolour_unused(sample, rng, 2, 0)


TASK = ReplaceColor()
