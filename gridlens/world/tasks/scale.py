"""scale: a small pattern next to an L marker is scaled x2 from the grid's origin; the marker
stays where it is (the original `task_scale`).

Per quiz, shared by both pairs: the pattern colour c0, the marker colour c1 and the marker
position (i, j), i < H // 2, j < W // 2. Per pair: the pattern S is the union of three
rectangles with corners (i1, j1, i2, j2) in [0, H//2] x [0, W//2], i1 < i2, j1 < j2 and the
smaller side at most 3, each uniform over those (the original redraws until they hold). X shows
S shifted by (i, j); f(X) shows S scaled x2 at the origin (cells [2 i1, 2 i2) x [2 j1, 2 j2));
both then get the marker, cells (i, j), (i + 1, j), (i, j + 1) in colour c1, drawn last.

Other grid sizes: the ranges above follow H and W as in the original; the bound 3 on the smaller
side, hard-coded for 10x10 (3/5 of the 5-cell half grid), becomes round(0.6 * min(H//2, W//2))
(at least 1), which is 3 on 10x10. Grids must be at least 4x4.

The marker hides up to three cells of S in X, so f(X) is not always a function of X; the checker
accepts every f(X) consistent with some choice of the hidden cells. The original keeps quizzes
whose X equals f(X) (it happens with probability about 4e-9 per pair); we redraw them.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from gridlens.errors import GridSizeError
from gridlens.world import shapes
from gridlens.world.tasks.base import Task, TaskSample

N_RECT = 3


def side_limit(height: int, width: int) -> int:
    """The bound on the smaller side of each pattern rectangle (3 on 10x10)."""
    return max(1, (3 * min(height // 2, width // 2) + 2) // 5)


@cache
def pattern_rectangles(height: int, width: int) -> np.ndarray:
    """[R, 4] every rectangle (i1, j1, i2, j2) the original's redraw loop can accept, relative
    to the marker (each equally likely)."""
    h, w, limit = height // 2, width // 2, side_limit(height, width)
    rects = np.array(
        [
            (i1, j1, i2, j2)
            for i1 in range(h + 1)
            for i2 in range(i1 + 1, h + 1)
            for j1 in range(w + 1)
            for j2 in range(j1 + 1, w + 1)
            if min(i2 - i1, j2 - j1) <= limit
        ],
        dtype=np.int64,
    )
    rects.setflags(write=False)
    return rects


def _marker(i: np.ndarray, j: np.ndarray, height: int, width: int) -> np.ndarray:
    """[n, H, W] the L marker cells (i, j), (i + 1, j), (i, j + 1)."""
    r = np.arange(height)[None, :, None]
    c = np.arange(width)[None, None, :]
    i, j = i[:, None, None], j[:, None, None]
    return ((r == i) & ((c == j) | (c == j + 1))) | ((r == i + 1) & (c == j))


def _pattern(rects: np.ndarray, height: int, width: int) -> np.ndarray:
    """[n, H, W] uint8: 0 background, k + 1 where rectangle k of rects [n, 3, 4] is the last
    drawn over the cell."""
    masks = shapes.rectangle_masks(rects, height, width)
    obj = masks[:, 0].astype(np.uint8)
    for k in range(1, N_RECT):
        np.copyto(obj, np.uint8(k + 1), where=masks[:, k])
    return obj


MAX_TABLE_CELLS = 1 << 25
"""Above this many cells, the per-origin mask table is not built and masks are computed."""


@cache
def _mask_tables(height: int, width: int) -> tuple[np.ndarray | None, np.ndarray]:
    """uint8 0/1 cell masks of every pattern rectangle: in X for every marker position
    ([h * w, R, H, W], None when too large) and in f(X), scaled x2 ([R, H, W])."""
    h, w = height // 2, width // 2
    rects = pattern_rectangles(height, width)
    scaled = shapes.rectangle_masks(2 * rects, height, width).astype(np.uint8)
    scaled.setflags(write=False)
    if h * w * len(rects) * height * width > MAX_TABLE_CELLS:
        return None, scaled
    origins = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij"), -1).reshape(-1, 2)
    shift = np.concatenate([origins, origins], axis=1)[:, None, :]
    shifted = shapes.rectangle_masks(rects[None] + shift, height, width).astype(np.uint8)
    shifted.setflags(write=False)
    return shifted, scaled


def _labels(masks: list[np.ndarray]) -> np.ndarray:
    """0/1 uint8 masks of rectangles 0..2 -> the label of the last drawn over each cell."""
    obj = masks[0].copy()
    for k in range(1, N_RECT):
        np.maximum(obj, masks[k] * np.uint8(k + 1), out=obj)
    return obj


class Scale(Task):
    name = "scale"
    roles = ("background", "pattern", "marker")
    min_height = 4
    min_width = 4
    description = "a pattern beside an L marker is scaled x2 from the origin; the marker stays"

    def _draw(self, n, rng, height, width):
        h, w = height // 2, width // 2
        table = pattern_rectangles(height, width)
        colours = shapes.distinct_colours(rng, n, 2)  # c0 pattern, c1 marker
        origin = np.stack([rng.integers(0, h, n), rng.integers(0, w, n)], axis=1)
        i, j = origin[:, 0], origin[:, 1]
        marker = _marker(i, j, height, width)
        c0 = colours[:, 0].astype(np.uint8)[:, None, None]
        c1 = colours[:, 1].astype(np.uint8)[:, None, None]
        out = {"colors": colours, "origin": origin}
        grids = np.empty((n, 4, height, width), dtype=np.uint8)
        objects = np.empty(grids.shape, dtype=np.int8)
        roles = np.empty(grids.shape, dtype=np.int8)
        shifted, scaled = _mask_tables(height, width)
        at = i * w + j
        for pair, key in ((0, "rects_A"), (1, "rects_B")):
            r = rng.integers(0, len(table), (n, N_RECT))
            rel = table[r]  # [n, 3, 4]
            out[key] = rel
            if shifted is None:
                obj_x = _pattern(rel + np.concatenate([origin, origin], 1)[:, None], height, width)
            else:
                obj_x = _labels([shifted[at, r[:, k]] for k in range(N_RECT)])
            obj_f = _labels([scaled[r[:, k]] for k in range(N_RECT)])
            for g, obj in ((2 * pair, obj_x), (2 * pair + 1, obj_f)):
                shape = (obj > 0).view(np.uint8)
                grid = shape * c0
                np.copyto(grid, c1, where=marker)
                grids[:, g] = grid
                np.copyto(obj, np.uint8(N_RECT + 1), where=marker)  # the marker is object 3
                objects[:, g] = obj.view(np.int8) - 1
                np.copyto(shape, np.uint8(2), where=marker)
                roles[:, g] = shape
        trivial = (grids[:, 0::2] == grids[:, 1::2]).all(axis=(2, 3)).any(1)
        return grids, objects, roles, out, trivial

    def generate(self, n, rng, height=10, width=10):
        self.validate_size(height, width)
        grids, objects, roles, params, trivial = self._draw(n, rng, height, width)
        for _ in range(100):  # X == f(X) has probability ~4e-9 per pair on 10x10
            bad = np.flatnonzero(trivial)
            if not len(bad):
                break
            g, o, r, p, t = self._draw(len(bad), rng, height, width)
            grids[bad], objects[bad], roles[bad], trivial[bad] = g, o, r, t
            for k, v in p.items():
                params[k][bad] = v
        else:
            raise GridSizeError(f"could not draw non-trivial scale quizzes on {height}x{width}")
        return TaskSample(grids=grids.astype(np.int64), params=params, objects=objects, roles=roles)

    def check(self, grids):
        grids, ok = shapes.colour_grids(grids)
        n, _, height, width = grids.shape
        h, w = height // 2, width // 2
        if h < 1 or w < 1:
            return np.zeros(n, dtype=bool)
        rows = np.arange(n)
        counts, boxes = shapes.colour_boxes(grids)  # [n, 4, 11], [n, 4, 11, 4]
        # The marker colour: exactly three cells in every grid, the same 2x2 box everywhere.
        b = boxes[:, :, 1:]
        candidate = (
            (counts[:, :, 1:] == 3).all(1)
            & (b == b[:, :1]).all(axis=(1, 3))
            & (b[:, 0, :, 2] - b[:, 0, :, 0] == 2)
            & (b[:, 0, :, 3] - b[:, 0, :, 1] == 2)
        )
        ok &= candidate.sum(1) == 1
        c1 = np.argmax(candidate, 1) + 1
        i, j = boxes[rows, 0, c1, 0], boxes[rows, 0, c1, 1]
        i1, j1 = np.minimum(i + 1, height - 1), np.minimum(j + 1, width - 1)
        ok &= (grids[rows, :, i1, j1] != c1[:, None]).all(1)  # an L, not another triple
        ok &= (i < h) & (j < w)
        i, j = np.minimum(i, h - 1), np.minimum(j, w - 1)
        # The pattern colour: the one other colour of the quiz.
        others = (counts[:, :, 1:] > 0).any(1)
        others[rows, c1 - 1] = False
        ok &= others.sum(1) == 1
        c0 = np.argmax(others, 1) + 1
        marker = _marker(i, j, height, width)
        rr = (i[:, None] + np.arange(h))[:, :, None]
        cc = (j[:, None] + np.arange(w))[:, None, :]
        for x in (0, 2):
            gx, gf = grids[:, x], grids[:, x + 1]
            s = gx[rows[:, None, None], rr, cc] == c0[:, None, None]  # [n, h, w] visible S
            blocks = gf[:, : 2 * h, : 2 * w] == c0[:, None, None]
            blocks = blocks.reshape(n, h, 2, w, 2).any(axis=(2, 4))
            for a, bb in ((0, 0), (1, 0), (0, 1)):  # cells the marker may hide in X
                if a < h and bb < w:
                    s[:, a, bb] = blocks[:, a, bb]
            ok &= s.any(axis=(1, 2))
            coloured = np.where(s, c0[:, None, None], 0)
            ex = np.zeros_like(gx)
            ex[rows[:, None, None], rr, cc] = coloured
            ef = np.zeros_like(gf)
            ef[:, : 2 * h, : 2 * w] = coloured.repeat(2, axis=1).repeat(2, axis=2)
            for e, g in ((ex, gx), (ef, gf)):
                np.copyto(e, c1[:, None, None], where=marker)
                ok &= (e == g).all(axis=(1, 2))
        return ok

    def other_parameters(self, sample, rng):
        # f(B) with the marker at another position (i', j') of the allowed range.
        colours, origin = sample.params["colors"], sample.params["origin"]
        n, _, height, width = sample.grids.shape
        h, w = height // 2, width // 2
        k = (origin[:, 0] * w + origin[:, 1] + rng.integers(1, h * w, n)) % (h * w)
        obj = _pattern(2 * sample.params["rects_B"], height, width)
        f = np.where(obj > 0, colours[:, :1, None], 0)
        return np.where(_marker(k // w, k % w, height, width), colours[:, 1:, None], f)


TASK = Scale()
