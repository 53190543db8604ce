"""symbols: four 3x3 squares; square 0 (the symbol) carries a 3-cell L pointer in one of its
corners, and in f(X) its centre takes the colour of the square q (1..3) the pointer aims at.

As in the original `task_symbols`: five distinct colours shared by both pairs (squares 0..3 and
the pointer); per pair four top-left corners uniform on [0, H-3] x [0, W-3] redrawn until every
two are at Chebyshev distance > 3 (the squares never touch), and q uniform in {1, 2, 3}. The
pointer's corner is the sign of square q's top-left corner minus the mean of the four corners,
on each axis. The original asserts that neither sign is zero (and crashes otherwise); its
quizzes are thus drawn conditioned on that, which is what rejecting such draws reproduces. The
pointer only names a quadrant: up to 10x10 no other square can share q's quadrant, but on
wider or taller grids one sometimes does (8% of pairs on 12x12), so the checker accepts any
square in the quadrant the pointer shows.

Grids must be at least 8x8 (on 7x7 the four squares fit only at the corners and almost every
draw is rejected).
"""

from __future__ import annotations

import numpy as np

from gridlens.world import shapes
from gridlens.world.tasks.base import Task, TaskSample

N_SQUARES = 4
SIDE = 3
GAP = SIDE  # corners at Chebyshev distance > GAP


def _sample_pairs(rng: np.random.Generator, n: int, height: int, width: int) -> dict:
    """n pairs: corners [n, 4, 2] (square 0 is the symbol), target q [n], pointer signs [n, 2].

    Every proposal is four uniform corners and a uniform q, rejected unless the squares are
    pairwise apart and neither pointer sign is zero; corners are drawn one square at a time
    and only for proposals still alive, which changes the cost, not the distribution."""
    ph, pw = height - SIDE + 1, width - SIDE + 1

    def propose(m: int):
        alive = np.arange(m)
        ci = [rng.integers(0, ph, size=m)]
        cj = [rng.integers(0, pw, size=m)]
        for _ in range(1, N_SQUARES):
            ni = rng.integers(0, ph, size=len(alive))
            nj = rng.integers(0, pw, size=len(alive))
            good = np.ones(len(alive), dtype=bool)
            for a, b in zip(ci, cj, strict=True):
                good &= np.maximum(np.abs(a - ni), np.abs(b - nj)) > GAP
            alive = alive[good]
            ci = [a[good] for a in ci] + [ni[good]]
            cj = [b[good] for b in cj] + [nj[good]]
        i, j = np.stack(ci, -1), np.stack(cj, -1)
        q = rng.integers(1, N_SQUARES, size=len(alive))
        r = np.arange(len(alive))
        # sign(corner_q - mean corner), kept in integers: 4 * corner_q - sum of corners
        si = np.sign(N_SQUARES * i[r, q] - i.sum(-1))
        sj = np.sign(N_SQUARES * j[r, q] - j.sum(-1))
        good = (si != 0) & (sj != 0)
        alive = alive[good]
        ok = np.zeros(m, dtype=bool)
        ok[alive] = True
        corners = np.zeros((m, N_SQUARES, 2), dtype=np.int64)
        corners[alive] = np.stack([i[good], j[good]], -1)
        qs = np.zeros(m, dtype=np.int64)
        qs[alive] = q[good]
        pointer = np.zeros((m, 2), dtype=np.int64)
        pointer[alive] = np.stack([si[good], sj[good]], -1)
        return ok, {"corners": corners, "q": qs, "pointer": pointer}

    return shapes.rejection_sample(n, propose, "symbols")


class Symbols(Task):
    name = "symbols"
    roles = ("background", "symbol", "pointer", "target", "square", "answer")
    min_height = 8
    min_width = 8
    description = "the symbol square's centre takes the colour of the square its L pointer aims at"

    def generate(self, n, rng, height=10, width=10):
        self.validate_size(height, width)
        colours = shapes.distinct_colours(rng, n, N_SQUARES + 1)  # squares 0..3, pointer
        grids = np.empty((n, 4, height, width), dtype=np.int64)
        objects = np.empty(grids.shape, dtype=np.int8)
        roles = np.empty(grids.shape, dtype=np.int8)
        params = {"colors": colours}
        rows = np.arange(n)
        # Object labels 0..3 squares, 4 pointer; looked up as label + 1.
        colour_lut = np.concatenate([np.zeros((n, 1), np.int64), colours], axis=1)
        for pair, tag in ((0, "A"), (1, "B")):
            s = _sample_pairs(rng, n, height, width)
            corners, q, pointer = s["corners"], s["q"], s["pointer"]
            params[f"corners_{tag}"] = corners
            params[f"target_{tag}"] = q
            params[f"pointer_{tag}"] = pointer
            rects = np.concatenate([corners, corners + SIDE], axis=-1)  # [n, 4, 4]
            masks = shapes.rectangle_masks(rects, height, width)  # [n, 4, H, W]
            label = masks[:, 0].astype(np.int8)
            for k in range(1, N_SQUARES):
                label += (k + 1) * masks[:, k].astype(np.int8)
            ci, cj = corners[:, 0, 0] + 1, corners[:, 0, 1] + 1  # the symbol's centre
            pi, pj = ci + pointer[:, 0], cj + pointer[:, 1]
            for a, b in ((pi, pj), (ci, pj), (pi, cj)):
                label[rows, a, b] = N_SQUARES + 1
            role_lut = np.full((n, N_SQUARES + 2), 4, dtype=np.int8)  # other squares
            role_lut[:, 0], role_lut[:, 1], role_lut[:, -1] = 0, 1, 2
            role_lut[rows, q + 1] = 3
            x, fx = 2 * pair, 2 * pair + 1
            grids[:, x] = shapes.label_lookup(colour_lut, label)
            grids[:, fx] = grids[:, x]
            grids[rows, fx, ci, cj] = colours[rows, q]
            objects[:, x] = objects[:, fx] = label - 1
            roles[:, x] = roles[:, fx] = shapes.label_lookup(role_lut, label)
            roles[rows, fx, ci, cj] = 5
        return TaskSample(grids=grids, params=params, objects=objects, roles=roles)

    def check(self, grids):
        grids = np.asarray(grids)
        n, _, h, w = grids.shape
        x = grids[:, 0::2].reshape(2 * n, h, w)  # A, B
        fx = grids[:, 1::2].reshape(2 * n, h, w)
        counts, boxes = shapes.colour_boxes(x)  # [2n, 11], [2n, 11, 4]
        counts[:, 0] = 0
        hh = boxes[..., 2] - boxes[..., 0]
        ww = boxes[..., 3] - boxes[..., 1]
        square = shapes.is_filled_box(counts, boxes) & (hh == SIDE) & (ww == SIDE)
        symbol = (counts == 6) & (hh == SIDE) & (ww == SIDE)
        pointer = (counts == 3) & (hh == 2) & (ww == 2)
        ok = (counts > 0).sum(-1) == N_SQUARES + 1
        ok &= (square.sum(-1) == N_SQUARES - 1) & (symbol.sum(-1) == 1) & (pointer.sum(-1) == 1)
        rows = np.arange(2 * n)
        s, m = np.argmax(symbol, -1), np.argmax(pointer, -1)
        ci = np.minimum(boxes[rows, s, 0] + 1, h - 1)  # clipped: garbage rows stay in range
        cj = np.minimum(boxes[rows, s, 1] + 1, w - 1)
        mi, mj = boxes[rows, m, 0], boxes[rows, m, 1]
        # The pointer's 2x2 box holds the centre, which keeps the symbol's colour in X.
        ok &= ((mi == ci) | (mi == ci - 1)) & ((mj == cj) | (mj == cj - 1))
        ok &= x[rows, ci, cj] == s
        di, dj = np.where(mi == ci, 1, -1), np.where(mj == cj, 1, -1)
        # The four squares never touch: top-left corners at Chebyshev distance > 3.
        sq = square | symbol
        ti, tj = boxes[..., 0], boxes[..., 1]  # [2n, 11]
        cheb = np.maximum(
            np.abs(ti[:, :, None] - ti[:, None, :]), np.abs(tj[:, :, None] - tj[:, None, :])
        )
        both = sq[:, :, None] & sq[:, None, :] & ~np.eye(11, dtype=bool)
        ok &= ~(both & (cheb <= GAP)).any(axis=(1, 2))
        # f(X) is X but for the centre, which takes a square's colour in the pointed quadrant.
        t = fx[rows, ci, cj]
        sum_i, sum_j = (ti * sq).sum(-1), (tj * sq).sum(-1)
        ok &= square[rows, t]
        ok &= np.sign(N_SQUARES * ti[rows, t] - sum_i) == di
        ok &= np.sign(N_SQUARES * tj[rows, t] - sum_j) == dj
        ok &= (x != fx).sum(axis=(1, 2)) == 1
        ok = ok.reshape(n, 2).all(-1)
        # Shared colours: all five, with the same symbol and pointer colours.
        s, m, present = s.reshape(n, 2), m.reshape(n, 2), (counts > 0).reshape(n, 2, 11)
        ok &= (s[:, 0] == s[:, 1]) & (m[:, 0] == m[:, 1])
        ok &= (present[:, 0] == present[:, 1]).all(-1)
        return ok

    def other_parameters(self, sample, rng):
        # The centre takes the colour of a square outside the pointed quadrant (as if the
        # pointer meant another corner); if all three squares share it, the pointer's colour.
        colours = sample.params["colors"]
        corners = sample.params["corners_B"]  # [n, 4, 2]
        pointer = sample.params["pointer_B"]  # [n, 2]
        n = len(colours)
        quadrant = np.sign(N_SQUARES * corners - corners.sum(1, keepdims=True))  # [n, 4, 2]
        outside = (quadrant != pointer[:, None, :]).any(-1)
        outside[:, 0] = False
        pick = np.argmax(rng.random((n, N_SQUARES)) * outside, axis=1)
        colour = np.where(outside.any(-1), colours[np.arange(n), pick], colours[:, N_SQUARES])
        wrong = sample.grids[:, 3].copy()
        wrong[np.arange(n), corners[:, 0, 0] + 1, corners[:, 0, 1] + 1] = colour
        return wrong


TASK = Symbols()
