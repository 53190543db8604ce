"""half_fill: rectangles crossed by a one-cell line; the last one is filled from its line to
one side.

Original (`task_half_fill`): six distinct colours shared by both pairs (rectangle k has body
c[2k] and line c[2k+1]), and a direction shared by both pairs: 0 a horizontal line at row
(i1+i2)//2, the last rectangle filled from it to its bottom; 1 a line at row (i1+i2-1)//2,
filled to the top; 2 and 3 the same with vertical lines and columns (right, left). Per pair,
three disjoint `rec_coo` rectangles. For odd sizes directions 0 and 1 (2 and 3) draw the same
line; only f(X) tells them apart. Works on any grid of at least 6 x 6 (the original's
10 x 10 bound H*W//2 on the area scales).
"""

from __future__ import annotations

from functools import cache

import numpy as np

from gridlens.world import shapes
from gridlens.world.tasks.base import Task, labelled_sample

N_RECT = 3
N_DIRECTIONS = 4


def _line_and_half(rects: np.ndarray, direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boxes [..., 4] of the line and of the filled half of rectangles [..., 4] for `direction`
    (broadcast against rects[..., 0])."""
    i1, j1, i2, j2 = (rects[..., k] for k in range(4))
    d = np.broadcast_to(direction, i1.shape)
    mid = np.select(
        [d == 0, d == 1, d == 2],
        [(i1 + i2) // 2, (i1 + i2 - 1) // 2, (j1 + j2) // 2],
        (j1 + j2 - 1) // 2,
    )
    rows = d < 2
    line = np.stack(
        [
            np.where(rows, mid, i1),
            np.where(rows, j1, mid),
            np.where(rows, mid + 1, i2),
            np.where(rows, j2, mid + 1),
        ],
        axis=-1,
    )
    half = np.stack(
        [
            np.where(d == 0, mid, i1),
            np.where(d == 2, mid, j1),
            np.where(d == 1, mid + 1, i2),
            np.where(d == 3, mid + 1, j2),
        ],
        axis=-1,
    )
    return line, half


@cache
def _tables(height: int, width: int):
    """Per grid size: rectangle table; uint8 label images [3, 4 directions, R, HW] of rectangle
    k with its line (body 2k+1, line 2k+2) and [4, R, HW] of the last one half filled."""
    table = shapes.rectangle_table(height, width)
    rects = table.rects
    r, hw = len(rects), height * width
    masks = table.masks.reshape(r, hw).view(np.uint8)
    crossed = np.empty((N_RECT, N_DIRECTIONS, r, hw), dtype=np.uint8)
    filled = np.empty((N_DIRECTIONS, r, hw), dtype=np.uint8)
    for d in range(N_DIRECTIONS):
        line, half = _line_and_half(rects, np.int64(d))
        line_mask = shapes.rectangle_masks(line, height, width).reshape(r, hw).view(np.uint8)
        half_mask = shapes.rectangle_masks(half, height, width).reshape(r, hw).view(np.uint8)
        for k in range(N_RECT):
            crossed[k, d] = masks * np.uint8(2 * k + 1) + line_mask
        filled[d] = masks * np.uint8(2 * N_RECT - 1) + half_mask
    return table, crossed, filled


ROLE_OF_LABEL = np.array([0, 1, 2, 1, 2, 3, 4], dtype=np.int8)
OBJECT_OF_LABEL = np.array([-1, 0, 0, 1, 1, 2, 2], dtype=np.int8)


class HalfFill(Task):
    name = "half_fill"
    roles = ("background", "body", "line", "filled_body", "filled_line")
    min_height = 6
    min_width = 6
    description = "the last rectangle is filled from its line to one side (shared side)"

    def generate(self, n, rng, height=10, width=10):
        self.validate_size(height, width)
        table, crossed, filled = _tables(height, width)
        colours = shapes.distinct_colours(rng, n, 2 * N_RECT)
        direction = rng.integers(0, N_DIRECTIONS, n)
        idx = shapes.sample_rectangles(rng, 2 * n, N_RECT, height, width, self.name)
        idx = idx.reshape(n, 2, N_RECT)
        d = direction[:, None]
        static = crossed[0, d, idx[:, :, 0]] + crossed[1, d, idx[:, :, 1]]  # [n, 2, HW]
        labels = np.empty((n, 4, height * width), dtype=np.uint8)
        labels[:, 0::2] = static + crossed[2, d, idx[:, :, 2]]
        labels[:, 1::2] = static + filled[d, idx[:, :, 2]]
        labels = labels.reshape(n, 4, height, width)
        return labelled_sample(
            labels, colours, (ROLE_OF_LABEL, OBJECT_OF_LABEL), table.rects[idx], direction=direction
        )

    def check(self, grids):
        grids = np.asarray(grids)
        n, _, h, w = grids.shape
        rows = np.arange(n)[:, None]
        counts, boxes = shapes.colour_boxes(grids)
        counts, boxes = counts[..., 1:], boxes[..., 1:, :]  # colours 1..10
        present = counts > 0  # [n, 4, 10]
        size = boxes[..., 2:] - boxes[..., :2]
        filled_box = counts == size[..., 0] * size[..., 1]
        ok = (present.sum(-1) == 2 * N_RECT).all(1)
        ok &= (present == present[:, :1]).all(axis=(1, 2))
        found = []
        for x, fx in ((0, 1), (2, 3)):
            # Bodies have their line cut out of their box; lines fill theirs.
            body = present[:, x] & ~filled_box[:, x]
            line = present[:, x] & filled_box[:, x]
            ok &= (body.sum(-1) == N_RECT) & (line.sum(-1) == N_RECT)
            bc = np.argsort(~body, axis=-1, kind="stable")[:, :N_RECT]  # colour - 1, [n, 3]
            lc = np.argsort(~line, axis=-1, kind="stable")[:, :N_RECT]
            bb, lb = boxes[rows, x, bc], boxes[rows, x, lc]  # [n, 3, 4]
            inside = (lb[:, None, :, :2] >= bb[:, :, None, :2]).all(-1) & (
                lb[:, None, :, 2:] <= bb[:, :, None, 2:]
            ).all(-1)  # [n, body, line]
            ok &= (inside.sum(2) == 1).all(1) & (inside.sum(1) == 1).all(1)
            lcol = np.take_along_axis(lc, inside.argmax(2), axis=1)  # line colour of each body
            bsize = bb[..., 2:] - bb[..., :2]
            ok &= ((bsize >= 3).all(-1) & (bsize[..., 0] * bsize[..., 1] <= h * w // 2)).all(1)
            for a, b in ((0, 1), (0, 2), (1, 2)):
                ok &= (
                    (bb[:, a, 0] >= bb[:, b, 2])
                    | (bb[:, b, 0] >= bb[:, a, 2])
                    | (bb[:, a, 1] >= bb[:, b, 3])
                    | (bb[:, b, 1] >= bb[:, a, 3])
                )
            # The last rectangle: the one whose body loses cells; the side its line grows to.
            changed = counts[rows, fx, bc] != counts[rows, x, bc]
            ok &= changed.sum(1) == 1
            last = changed.argmax(1)
            bs = bb[np.arange(n), last]
            ls = boxes[np.arange(n), fx, lcol[np.arange(n), last]]
            same_cols = (ls[:, 1] == bs[:, 1]) & (ls[:, 3] == bs[:, 3])
            same_rows = (ls[:, 0] == bs[:, 0]) & (ls[:, 2] == bs[:, 2])
            sides = np.stack(
                [
                    same_cols & (ls[:, 2] == bs[:, 2]) & (ls[:, 0] > bs[:, 0]),
                    same_cols & (ls[:, 0] == bs[:, 0]) & (ls[:, 2] < bs[:, 2]),
                    same_rows & (ls[:, 3] == bs[:, 3]) & (ls[:, 1] > bs[:, 1]),
                    same_rows & (ls[:, 1] == bs[:, 1]) & (ls[:, 3] < bs[:, 3]),
                ],
                axis=1,
            )
            ok &= sides.sum(1) == 1
            direction = sides.argmax(1)
            line_box, half_box = _line_and_half(bb, direction[:, None])
            is_last = np.arange(N_RECT) == last[:, None]
            f_box = np.where(is_last[..., None], half_box, line_box)
            body_mask = shapes.rectangle_masks(bb, h, w)
            for g, lines in ((x, line_box), (fx, f_box)):
                expected = np.zeros((n, h, w), dtype=grids.dtype)
                line_mask = shapes.rectangle_masks(lines, h, w)
                for k in range(N_RECT):
                    shapes.paint(expected, body_mask[:, k], bc[:, k] + 1)
                    shapes.paint(expected, line_mask[:, k], lcol[:, k] + 1)
                ok &= (expected == grids[:, g]).all(axis=(1, 2))
            partner = np.full((n, 10), -1)
            np.put_along_axis(partner, bc, lcol, axis=1)
            found.append((partner, bc[np.arange(n), last], direction))
        (pa, la, da), (pb, lb_, db) = found
        ok &= (pa == pb).all(1) & (la == lb_) & (da == db)
        return ok

    def other_parameters(self, sample, rng):
        # Fill B's last rectangle towards another side (with that side's line position).
        n, _, h, w = sample.grids.shape
        other = (sample.params["direction"] + rng.integers(1, N_DIRECTIONS, n)) % N_DIRECTIONS
        rect = sample.params["rects_B"][:, 2]
        colours = sample.params["colors"]
        _, half = _line_and_half(rect, other)
        wrong = sample.grids[:, 2].copy()
        shapes.paint(wrong, shapes.rectangle_masks(rect, h, w), colours[:, 4])
        shapes.paint(wrong, shapes.rectangle_masks(half, h, w), colours[:, 5])
        return wrong


TASK = HalfFill()
