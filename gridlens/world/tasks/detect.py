"""detect: three disjoint rectangles; those of two given colours get a 3-cell L tag of a fourth
colour at their top-left corner (the original `task_detect`).

Colours c0..c3 are drawn once per quiz and shared by both pairs: rectangles of colours c0 and c1
are tagged, the one of colour c2 is not, and c3 is the tag colour. Each pair draws its own three
disjoint rectangles (at least 3x3, area at most H*W//2, as `rec_coo(3, prevent_overlap=True)`).
The tag covers cells (i1, j1), (i1 + 1, j1) and (i1, j1 + 1) of the rectangle. Nothing is
hard-coded to 10x10: any grid that can hold three disjoint 3x3 squares works.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from gridlens.world import shapes
from gridlens.world.tasks.base import Task, TaskSample

N_RECT = 3
N_TAGGED = 2


def tag(
    x: np.ndarray, tagged: np.ndarray, tag_colour: np.ndarray, boxes: np.ndarray | None = None
) -> np.ndarray:
    """The rule applied to grids x [n, H, W] of solid rectangles: the rectangles whose colour is
    flagged in tagged [n, 11] get an L of `tag_colour` [n] at their top-left corner. `boxes`
    ([n, 11, 4], from colour_boxes(x)) saves recomputing them."""
    h, w = x.shape[1:]
    if boxes is None:
        _, boxes = shapes.colour_boxes(x)
    i1 = shapes.per_cell(boxes[..., 0], x)
    j1 = shapes.per_cell(boxes[..., 1], x)
    rows = np.arange(h)[:, None]
    cols = np.arange(w)[None, :]
    di, dj = rows - i1, cols - j1
    corner = ((di == 0) & (dj >= 0) & (dj <= 1)) | ((dj == 0) & (di == 1))
    mark = corner & shapes.per_cell(tagged, x) & (x > 0)
    return np.where(mark, tag_colour[:, None, None], x)


class Detect(Task):
    name = "detect"
    roles = ("background", "tagged", "untagged", "tag")
    min_height = 3
    min_width = 3
    description = "rectangles of two given colours get an L tag of a fourth colour at top-left"
    room_for = N_RECT

    def generate(self, n, rng, height=10, width=10):
        self.validate_size(height, width)
        colours = shapes.distinct_colours(rng, n, N_RECT + 1)  # c0, c1 tagged; c2; c3 tag
        table = shapes.rectangle_table(height, width)
        masks, tag_masks = shapes.uint8_masks(height, width), _tag_table(height, width)
        c8 = colours.astype(np.uint8)[:, :, None, None]
        grids = np.empty((n, 4, height, width), dtype=np.int64)
        objects = np.empty(grids.shape, dtype=np.int8)
        roles = np.empty(grids.shape, dtype=np.int8)
        params = {"colors": colours}
        for pair, key in ((0, "rects_A"), (1, "rects_B")):
            idx = shapes.sample_rectangles(rng, n, N_RECT, height, width, self.name)
            params[key] = table.rects[idx]
            m0, m1, m2 = masks[idx[:, 0]], masks[idx[:, 1]], masks[idx[:, 2]]  # disjoint
            x = m0 * c8[:, 0]
            x += m1 * c8[:, 1]
            x += m2 * c8[:, 2]
            obj = m1 * np.uint8(2)
            obj += m0
            obj += m2 * np.uint8(3)  # 0 background, k + 1 for rectangle k
            tags = tag_masks[idx[:, 0]] | tag_masks[idx[:, 1]]
            grids[:, 2 * pair] = x
            np.copyto(x, c8[:, N_RECT], where=tags)
            grids[:, 2 * pair + 1] = x
            objects[:, 2 * pair] = obj.view(np.int8) - 1
            objects[:, 2 * pair + 1] = objects[:, 2 * pair]
            role = (obj > 0).view(np.int8) + m2.view(np.int8)  # 1 tagged, 2 untagged
            roles[:, 2 * pair] = role
            np.copyto(role, np.int8(3), where=tags)
            roles[:, 2 * pair + 1] = role
        return TaskSample(grids=grids, params=params, objects=objects, roles=roles)

    def check(self, grids):
        grids, ok = shapes.colour_grids(grids)
        n, _, h, w = grids.shape
        counts, boxes = shapes.colour_boxes(grids[:, 0::2])  # A, B: [n, 2, 11], [n, 2, 11, 4]
        ok &= shapes.rectangle_colours_ok(counts, boxes, h, w, N_RECT).all(1)
        present = counts > 0
        present[..., 0] = False
        ok &= (present[:, 0] == present[:, 1]).all(-1)
        fa = grids[:, 1]
        # The tag colour is f_A's one colour absent from A; a colour is tagged when f_A shows
        # the tag colour at its rectangle's top-left cell.
        new = (shapes.colour_counts(fa) > 0) & ~present[:, 0]
        new[:, 0] = False
        ok &= new.sum(-1) == 1
        tag_colour = np.argmax(new, -1)
        rows = np.arange(n)[:, None]
        corner = fa[rows, boxes[:, 0, :, 0], boxes[:, 0, :, 1]]  # [n, 11]
        tagged = present[:, 0] & (corner == tag_colour[:, None])
        ok &= tagged.sum(-1) == N_TAGGED
        for k, x in enumerate((0, 2)):
            expected = tag(grids[:, x], tagged, tag_colour, boxes[:, k])
            ok &= (expected == grids[:, x + 1]).all(axis=(1, 2))
        return ok

    def other_parameters(self, sample, rng):
        # Either another tag colour (unused by the quiz) or another pair of tagged colours
        # (the untagged one replaces a tagged one), applied to B.
        colours = sample.params["colors"]
        n = len(colours)
        rows = np.arange(n)
        unused = np.ones((n, 11), dtype=bool)
        unused[:, 0] = False
        unused[rows[:, None], colours] = False
        other_tag = np.argmax(rng.random((n, 11)) * unused, axis=1)
        swap_tag = rng.random(n) < 0.5
        tag_colour = np.where(swap_tag, other_tag, colours[:, N_RECT])
        tagged = np.zeros((n, 11), dtype=bool)
        tagged[rows, colours[:, 0]] = True
        tagged[rows, colours[:, 1]] = True
        drop = colours[rows, rng.integers(0, N_TAGGED, n)]
        tagged[rows, drop] = swap_tag
        tagged[rows, colours[:, 2]] = ~swap_tag
        return tag(sample.grids[:, 2], tagged, tag_colour)


@cache
def _tag_table(height: int, width: int) -> np.ndarray:
    """[R, H, W] the L tag cells of every rectangle of `shapes.rectangle_table(height, width)`."""
    rects = shapes.rectangle_table(height, width).rects
    i1, j1 = rects[:, 0, None, None], rects[:, 1, None, None]
    rr = np.arange(height)[None, :, None]
    cc = np.arange(width)[None, None, :]
    t = ((rr == i1) & ((cc == j1) | (cc == j1 + 1))) | ((rr == i1 + 1) & (cc == j1))
    t.setflags(write=False)
    return t


TASK = Detect()
