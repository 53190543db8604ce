"""bounce: a walk from a start cell that goes straight and turns when blocked.

Original (`task_bounce`): three distinct colours shared by both pairs: c0 obstacles, c1 the
walk's end points, c2 its path. Each pair, retried as a whole until the walk is long enough:
  - (H*W)//10 obstacle cells drawn uniformly with replacement (c0 in X and f(X));
  - a direction uniform among the 4 axis directions and a start cell uniform on the grid
    (c1, drawn over any obstacle there);
  - the walk: at each step go straight if that cell is free (inside the grid and empty in
    f(X), so the walk never crosses itself), else turn to (-dj, di) if free, else to (dj, -di)
    if free, else stop; it also stops after `width` moves. The pair is kept when the step
    counter ends above 3, i.e. after at least 3 moves (4 when the cap ends it, which needs
    width >= 4).
  - X: obstacles, start (c1), the first cell moved to (c2, the heading) and the last one
    (c1). f(X): obstacles, start and first cell (c1), the rest of the path (c2), last cell (c1).
The original's random choice after a left turn (`if free(i + dj, j - di)` with the updated
direction) tests the cell straight ahead, which is never free there, so it never fires and
the walk is deterministic once obstacles, start and direction are drawn; we reproduce that
(the checker re-runs the walk). All walks of a batch step together for at most `width` steps,
with masks for those that have stopped. Other sizes (non-square too) keep the original's
formulas: (H*W)//10 obstacles and at most `width` moves.
"""

from __future__ import annotations

import numpy as np

from gridlens.world import shapes
from gridlens.world.tasks.base import Task, TaskSample, recolour_unused

DIRECTIONS = np.array([[-1, 0], [1, 0], [0, -1], [0, 1]], dtype=np.int64)

# Cell codes of a drawn pair; they double as role indices.
EMPTY, OBSTACLE, START, HEADING, PATH, END = range(6)
# Objects: the obstacles are object 0, the walk (start, heading, path, end) object 1.
_OBJECT_OF_CODE = np.array([-1, 0, 1, 1, 1, 1], dtype=np.int8)


def _walk(occ, pos, d, steps, height, width, max_steps, path, moves, active):
    """Advance every active walk until it is blocked or its step counter reaches max_steps.

    In place: occ [m, H*W] (cells that are not free), pos [m, 2], d [m, 2], steps [m] (the
    original's counter `l`), path [m, max_steps] (flat cells moved to), moves [m], active [m].
    """
    rows = np.arange(len(pos))

    def free(p):
        inside = (p[:, 0] >= 0) & (p[:, 0] < height) & (p[:, 1] >= 0) & (p[:, 1] < width)
        flat = np.where(inside, p[:, 0] * width + p[:, 1], 0)
        return inside & ~occ[rows, flat]

    active &= steps < max_steps
    for _ in range(max_steps):
        if not active.any():
            break
        steps += active
        left = np.stack([-d[:, 1], d[:, 0]], axis=1)
        right = np.stack([d[:, 1], -d[:, 0]], axis=1)
        f_s, f_l, f_r = free(pos + d), free(pos + left), free(pos + right)
        new_d = np.where(f_s[:, None], d, np.where(f_l[:, None], left, right))
        active &= f_s | f_l | f_r
        d[:] = np.where(active[:, None], new_d, d)
        pos += d * active[:, None]
        flat = pos[:, 0] * width + pos[:, 1]
        occ[rows[active], flat[active]] = True
        path[rows[active], moves[active]] = flat[active]
        moves += active
        active &= steps < max_steps


def _draw_codes(obstacles, start, path, moves, hw):
    """Codes [m, 2, H*W] of X and f(X) from obstacle masks, start cells and walks."""
    m = len(start)
    rows = np.arange(m)
    codes = np.where(obstacles, OBSTACLE, EMPTY).astype(np.int8)
    codes = np.repeat(codes[:, None], 2, axis=1)
    codes[rows, :, start] = START
    first = path[:, 0]
    last = path[rows, moves - 1]
    codes[rows, 0, first] = HEADING
    steps = np.arange(path.shape[1])
    interior = (steps >= 1) & (steps[None, :] < (moves - 1)[:, None])  # [m, max_steps]
    r, k = np.nonzero(interior)
    codes[r, 1, path[r, k]] = PATH
    codes[rows, 1, first] = HEADING
    codes[rows, :, last] = END
    return codes


class Bounce(Task):
    name = "bounce"
    roles = ("background", "obstacle", "start", "heading", "path", "end")
    min_height = 4
    min_width = 4
    description = "a walk from a start cell, turning when blocked by obstacle cells"

    def _pairs(self, n, rng, height, width):
        hw = height * width
        n_obstacles = hw // 10

        def propose(m):
            obstacles = np.zeros((m, hw), dtype=bool)
            cells = rng.integers(0, hw, size=(m, n_obstacles))
            obstacles[np.arange(m)[:, None], cells] = True
            heading = DIRECTIONS[rng.integers(0, 4, size=m)]
            start = rng.integers(0, hw, size=m)
            occ = obstacles.copy()
            occ[np.arange(m), start] = True
            pos = np.stack([start // width, start % width], axis=1)
            d = heading.copy()
            steps = np.zeros(m, dtype=np.int64)
            path = np.zeros((m, width), dtype=np.int64)
            moves = np.zeros(m, dtype=np.int64)
            _walk(occ, pos, d, steps, height, width, width, path, moves, np.ones(m, dtype=bool))
            ok = steps > 3
            codes = _draw_codes(obstacles, start, path, np.maximum(moves, 1), hw)
            return ok, {
                "codes": codes,
                "start": start,
                "heading": heading,
                "moves": moves,
                "end": path[np.arange(m), np.maximum(moves, 1) - 1],
            }

        return shapes.rejection_sample(n, propose, self.name)

    def generate(self, n, rng, height=10, width=10):
        self.validate_size(height, width)
        colours = shapes.distinct_colours(rng, n, 3)  # c0 obstacles, c1 end points, c2 path
        walks = self._pairs(2 * n, rng, height, width)
        codes = walks["codes"].reshape(n, 4, -1)  # int8, grids A, f_A, B, f_B
        zero = np.zeros((n, 1), dtype=np.int64)
        c0, c1, c2 = colours[:, :1], colours[:, 1:2], colours[:, 2:]
        # code -> colour for X (first 6) and f(X) (last 6): the heading is c2 in X, c1 in f(X).
        palette = np.concatenate([zero, c0, c1, c2, c2, c1, zero, c0, c1, c1, c2, c1], axis=1)
        index = codes.astype(np.int64)
        index[:, 1::2] += 6
        grids = np.take_along_axis(palette, index.reshape(n, -1), axis=1)
        roles = codes
        objects = _OBJECT_OF_CODE[codes]
        shape = (n, 4, height, width)

        def cell(flat):
            f = flat.reshape(n, 2)
            return np.stack([f // width, f % width], axis=-1)

        return TaskSample(
            grids=grids.reshape(shape),
            params={
                "colors": colours,
                "start": cell(walks["start"]),  # [n, 2 pairs, (i, j)]
                "heading": walks["heading"].reshape(n, 2, 2),  # initial direction drawn
                "end": cell(walks["end"]),
                "moves": walks["moves"].reshape(n, 2),
            },
            objects=objects.reshape(shape),
            roles=roles.reshape(shape),
        )

    def check(self, grids):
        grids = np.asarray(grids).astype(np.int64)
        n, _, h, w = grids.shape
        if h < self.min_height or w < self.min_width:
            return np.zeros(n, dtype=bool)
        hw = h * w
        flat = grids.reshape(n, 4, hw)
        x, fx = flat[:, 0::2], flat[:, 1::2]  # [n, 2, HW]
        ok = ((flat >= 0) & (flat <= 10)).all(axis=(1, 2))  # colours only
        # The heading cell is the only coloured cell of X that changes: c2 -> c1.
        head = (x != fx) & (x != 0)
        ok &= (head.sum(-1) == 1).all(-1)
        p1 = head.argmax(-1)  # [n, 2]
        c2 = np.take_along_axis(x, p1[..., None], -1)[..., 0]
        c1 = np.take_along_axis(fx, p1[..., None], -1)[..., 0]
        ok &= ((c1 != 0) & (c1 != c2)).all(-1)
        present = (x[..., None] == np.arange(1, 11)).any(axis=2)  # [n, 2, 10]
        others = present.copy()
        others[np.arange(n)[:, None], np.arange(2)[None], np.clip(c1 - 1, 0, 9)] = False
        others[np.arange(n)[:, None], np.arange(2)[None], np.clip(c2 - 1, 0, 9)] = False
        # Obstacles: one more colour (absent only if every obstacle lies under the start).
        ok &= (others.sum(-1) <= 1).all(-1)
        c0 = np.where(others.any(-1), others.argmax(-1) + 1, -1)
        # Colours shared by both pairs.
        ok &= (c0[:, 0] == c0[:, 1]) | (c0 < 0).any(-1)
        ok &= (c1[:, 0] == c1[:, 1]) & (c2[:, 0] == c2[:, 1])
        obst = x == c0[..., None]
        ok &= (obst == (fx == c0[..., None])).all(axis=(1, 2))
        ok &= (obst.sum(-1) <= hw // 10).all(-1)
        ends = x == c1[..., None]
        ok &= (ends.sum(-1) == 2).all(-1)
        # Re-run the walk from each c1 cell of X next to the heading (the start is one of them).
        a = ends.argmax(-1)
        b = hw - 1 - ends[..., ::-1].argmax(-1)
        m = n * 2 * 2
        start = np.stack([a, b], axis=-1).reshape(m)
        first = np.repeat(p1.reshape(-1), 2)
        si, sj, fi, fj = start // w, start % w, first // w, first % w
        d = np.stack([fi - si, fj - sj], axis=1)
        adjacent = np.abs(d).sum(1) == 1
        occ = np.repeat(obst.reshape(n * 2, hw), 2, axis=0)
        rows = np.arange(m)
        occ[rows, start] = True
        occ[rows, first] = True
        path = np.zeros((m, w), dtype=np.int64)
        path[:, 0] = first
        moves = np.ones(m, dtype=np.int64)
        steps = np.ones(m, dtype=np.int64)
        pos = np.stack([fi, fj], axis=1)
        _walk(occ, pos, d, steps, h, w, w, path, moves, adjacent.copy())
        valid = adjacent & (steps > 3)
        codes = _draw_codes(np.repeat(obst.reshape(n * 2, hw), 2, axis=0), start, path, moves, hw)
        codes = codes.astype(np.int64).reshape(n, 2, 2, 2, hw)  # quiz, pair, candidate, X/fX
        zero = np.zeros_like(c0)
        pal_x = np.stack([zero, c0, c1, c2, c2, c1], axis=-1)  # [n, 2, 6]
        pal_fx = np.stack([zero, c0, c1, c1, c2, c1], axis=-1)
        match = valid.reshape(n, 2, 2)
        for g, (pal, grid) in enumerate(((pal_x, x), (pal_fx, fx))):
            exp = np.take_along_axis(pal[:, :, None, :], codes[:, :, :, g], axis=-1)
            match &= (exp == grid[:, :, None]).all(-1)
        ok &= match.any(-1).all(-1)
        return ok

    def other_parameters(self, sample, rng):
        # Draw B's path in a colour unused by the quiz instead of the shared path colour.
        return recolour_unused(sample, rng, 3, 2)


TASK = Bounce()
