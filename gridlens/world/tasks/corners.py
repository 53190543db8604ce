"""corners: three disjoint rectangles drawn only as two opposite 3-cell L corners; f(X) is the
filled rectangles (the original `task_corners`).

The polarity (0: top-left and bottom-right corners, 1: top-right and bottom-left) and the three
colours are drawn once per quiz and shared by both pairs; each pair draws its own three disjoint
rectangles (at least 3x3, area at most H*W//2, as `rec_coo(3, prevent_overlap=True)`). Nothing
is hard-coded to 10x10: any grid that can hold three disjoint 3x3 squares works.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from gridlens.world import shapes
from gridlens.world.tasks.base import Task, TaskSample

N_RECT = 3


def _l_corners(di, dj, di2, dj2):
    """Cells of the two L corners of each polarity (0, 1), given offsets from the top/left
    (di, dj) and bottom/right (di2, dj2) sides of the rectangle."""
    top_left = ((di == 0) & (dj <= 1)) | ((dj == 0) & (di <= 1))
    bottom_right = ((di2 == 0) & (dj2 <= 1)) | ((dj2 == 0) & (di2 <= 1))
    top_right = ((di == 0) & (dj2 <= 1)) | ((dj2 == 0) & (di <= 1))
    bottom_left = ((di2 == 0) & (dj <= 1)) | ((dj == 0) & (di2 <= 1))
    return top_left | bottom_right, top_right | bottom_left


def corners_of(
    filled: np.ndarray, polarity: np.ndarray | int, boxes: np.ndarray | None = None
) -> np.ndarray:
    """The inverse of the rule: grids filled [n, H, W] of solid rectangles reduced to their two
    L corners of `polarity` ([n] or one int; 0: top-left and bottom-right, 1: top-right and
    bottom-left). `boxes` ([n, 11, 4], from shapes.colour_boxes(filled)) saves recomputing."""
    p0, p1 = _corners_both(filled, boxes)
    polarity = np.broadcast_to(np.asarray(polarity), (len(filled),))
    return np.where(polarity[:, None, None] == 1, p1, p0)


def _corners_both(filled: np.ndarray, boxes: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """corners_of(filled, 0) and corners_of(filled, 1), sharing the per-cell box lookups."""
    h, w = filled.shape[1:]
    if boxes is None:
        _, boxes = shapes.colour_boxes(filled)
    b = [shapes.per_cell(boxes[..., k], filled) for k in range(4)]
    rows = np.arange(h)[:, None]
    cols = np.arange(w)[None, :]
    offsets = (rows - b[0], cols - b[1], b[2] - 1 - rows, b[3] - 1 - cols)
    coloured = filled > 0
    return tuple(np.where(keep & coloured, filled, 0) for keep in _l_corners(*offsets))


def fill_corners(x: np.ndarray) -> np.ndarray:
    """The rule: every colour of grids x [n, H, W] fills its bounding box (later colours win
    where boxes overlap; they never do for valid inputs)."""
    counts, boxes = shapes.colour_boxes(x)
    out = np.zeros_like(x)
    for c in range(1, 11):
        masks = shapes.rectangle_masks(boxes[:, c], *x.shape[1:]) & (counts[:, c, None, None] > 0)
        out[masks] = c
    return out


class Corners(Task):
    name = "corners"
    roles = ("background", "corner", "filled")
    min_height = 3
    min_width = 3
    description = "rectangles drawn as two opposite L corners are filled"
    room_for = N_RECT

    def generate(self, n, rng, height=10, width=10):
        self.validate_size(height, width)
        polarity = rng.integers(0, 2, n)
        colours = shapes.distinct_colours(rng, n, N_RECT)
        table = shapes.rectangle_table(height, width)
        masks, corner_masks = shapes.uint8_masks(height, width), _corner_table(height, width)
        c8 = colours.astype(np.uint8)[:, :, None, None]
        grids = np.empty((n, 4, height, width), dtype=np.int64)
        objects = np.empty(grids.shape, dtype=np.int8)
        roles = np.empty(grids.shape, dtype=np.int8)
        params = {"polarity": polarity, "colors": colours}
        for pair, key in ((0, "rects_A"), (1, "rects_B")):
            idx = shapes.sample_rectangles(rng, n, N_RECT, height, width, self.name)
            params[key] = table.rects[idx]
            m = [masks[idx[:, k]] for k in range(N_RECT)]  # disjoint
            cm = [corner_masks[polarity, idx[:, k]] for k in range(N_RECT)]
            fx = m[0] * c8[:, 0]
            x = cm[0] * c8[:, 0]
            obj = m[0].copy()
            corner = cm[0].copy()
            for k in (1, 2):
                fx += m[k] * c8[:, k]
                x += cm[k] * c8[:, k]
                obj += m[k] * np.uint8(k + 1)  # 0 background, k + 1 for rectangle k
                corner |= cm[k]
            grids[:, 2 * pair] = x
            grids[:, 2 * pair + 1] = fx
            objects[:, 2 * pair] = (obj * corner).view(np.int8) - 1
            objects[:, 2 * pair + 1] = obj.view(np.int8) - 1
            inside = (obj > 0).view(np.int8)
            roles[:, 2 * pair] = corner
            roles[:, 2 * pair + 1] = inside + inside - corner.view(np.int8)  # corner 1, rest 2
        return TaskSample(grids=grids, params=params, objects=objects, roles=roles)

    def check(self, grids):
        grids, ok = shapes.colour_grids(grids)
        h, w = grids.shape[2:]
        counts, boxes = shapes.colour_boxes(grids[:, 1::2])  # f_A, f_B
        ok &= shapes.rectangle_colours_ok(counts, boxes, h, w).all(1)
        present = counts[..., 1:] > 0
        ok &= (present[:, 0] == present[:, 1]).all(-1)
        # The polarity is the one whose corners of f_A give A; the same must give B from f_B.
        p0, p1 = _corners_both(grids[:, 1], boxes[:, 0])
        polarity = (p1 == grids[:, 0]).all(axis=(1, 2))
        ok &= polarity | (p0 == grids[:, 0]).all(axis=(1, 2))
        q0, q1 = _corners_both(grids[:, 3], boxes[:, 1])
        expected = np.where(polarity[:, None, None], q1, q0)
        ok &= (expected == grids[:, 2]).all(axis=(1, 2))
        return ok

    def other_parameters(self, sample, rng):
        # The rectangles of B filled with the quiz's colours in another (cyclic) assignment.
        colours = sample.params["colors"]
        n = len(colours)
        shift = rng.integers(1, N_RECT, n)
        new = np.zeros((n, 11), dtype=np.int64)
        rows = np.arange(n)[:, None]
        new[rows, colours] = colours[rows, (np.arange(N_RECT) + shift[:, None]) % N_RECT]
        return shapes.per_cell(new, fill_corners(sample.grids[:, 2]))


@cache
def _corner_table(height: int, width: int) -> np.ndarray:
    """[2, R, H, W] uint8: the two L corners of each rectangle of the table, per polarity."""
    rects = shapes.rectangle_table(height, width).rects
    i1, j1, i2, j2 = (rects[:, k, None, None] for k in range(4))
    rr = np.arange(height)[None, :, None]
    cc = np.arange(width)[None, None, :]
    inside = shapes.rectangle_table(height, width).masks
    t = np.stack(_l_corners(rr - i1, cc - j1, i2 - 1 - rr, j2 - 1 - cc)) & inside
    t = t.astype(np.uint8)
    t.setflags(write=False)
    return t


TASK = Corners()
