"""fill: three disjoint rectangles and a seed cell; f(X) flood-fills the background region of the
seed (4-connected) with the seed's colour, and the seed cell itself becomes background.

As in the original `task_fill`: four distinct colours shared by both pairs (three rectangle
colours, the seed/fill colour); per pair a coin `accept_full` is tossed once, then three
disjoint rectangles (`rec_coo(3, prevent_overlap=True)`) and a seed uniform over the background
cells are drawn until `accept_full` holds or the seed's region leaves some background cell
unfilled. So half the pairs are unconstrained and half have at least two background regions.

The original draws the seed by retrying uniform cells until one is background, which loops
forever when the three rectangles tile the grid. Here the seed is drawn uniformly among the
background cells directly and a tiling draw is rejected with the rest of the proposal, so
generation is bounded by `shapes.rejection_sample` (GridSizeError where nothing fits).

Grids must be at least 6x6 (three disjoint 3x3 rectangles plus a free cell). The flood fill is
the bit-sliced batch relaxation of `grid_search.flood` (at most H*W steps).
"""

from __future__ import annotations

import numpy as np

from gridlens.world import shapes
from gridlens.world.grid_search import flood
from gridlens.world.tasks.base import Task, TaskSample, recolour_unused

N_RECT = 3


def pick_free_cell(occupied: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A uniform background cell per grid, as the original's retry loop draws it.

    occupied: bool [m, H, W]; u: uniforms [m] in [0, 1). Returns (ok [m]: the grid has a
    background cell at all, flat cell index [m], meaningless where not ok)."""
    free = ~occupied.reshape(len(occupied), occupied.shape[1] * occupied.shape[2])
    n_free = free.sum(-1)
    k = np.floor(u * n_free).astype(np.int64)
    cell = np.argmax(np.cumsum(free, axis=-1, dtype=np.int32) > k[:, None], axis=-1)
    return n_free > 0, cell


def _sample_pairs(
    rng: np.random.Generator,
    n: int,
    height: int,
    width: int,
    need_split: bool,
) -> dict:
    """n pairs: rectangle indices [n, 3] and seed cell [n, 2]; with `need_split` only those
    whose seed region leaves some background cell unfilled. Draws where the rectangles tile
    the grid (the original's endless loop) are rejected like any other."""
    table = shapes.rectangle_table(height, width)
    n_rects = len(table.rects)

    def propose(m: int):
        idx = rng.integers(0, n_rects, size=(m, N_RECT))
        u = rng.random(m)
        ok = ~table.overlap[idx[:, 0], idx[:, 1]]
        cand = np.flatnonzero(ok)
        c0, c1, c2 = (idx[cand, k] for k in range(N_RECT))
        cand = cand[~table.overlap[c0, c2] & ~table.overlap[c1, c2]]
        occupied = table.masks[idx[cand]].any(axis=1)  # [c, H, W]
        has_free, cell = pick_free_cell(occupied, u[cand])
        cand, occupied, cell = cand[has_free], occupied[has_free], cell[has_free]
        if need_split and len(cand):
            seed = np.zeros(occupied.shape, dtype=bool)
            seed.reshape(len(cand), height * width)[np.arange(len(cand)), cell] = True
            region = flood(~occupied, seed)
            split = (~occupied & ~region).any(axis=(1, 2))
            cand, cell = cand[split], cell[split]
        ok = np.zeros(m, dtype=bool)
        ok[cand] = True
        seeds = np.zeros(m, dtype=np.int64)
        seeds[cand] = cell
        return ok, {"rects": idx, "seed": seeds}

    s = shapes.rejection_sample(n, propose, "fill")
    s["seed"] = np.stack([s["seed"] // width, s["seed"] % width], axis=-1)
    return s


class Fill(Task):
    name = "fill"
    roles = ("background", "rectangle", "seed", "fill")
    min_height = 6
    min_width = 6
    description = "the seed's background region is filled with its colour; the seed is erased"

    def generate(self, n, rng, height=10, width=10):
        self.validate_size(height, width)
        colours = shapes.distinct_colours(rng, n, N_RECT + 1)  # c0..c2 rectangles, c3 fill
        grids = np.empty((n, 4, height, width), dtype=np.int64)
        objects = np.empty(grids.shape, dtype=np.int8)
        roles = np.empty(grids.shape, dtype=np.int8)
        params = {"colors": colours}
        table = shapes.rectangle_table(height, width)
        rows = np.arange(n)
        # Object labels 0..2 rectangles, 3 seed / fill; looked up as label + 1.
        colour_lut = np.concatenate([np.zeros((n, 1), np.int64), colours], axis=1)
        x_roles = np.array([0, 1, 1, 1, 2], dtype=np.int8)
        fx_roles = np.array([0, 1, 1, 1, 3], dtype=np.int8)
        for pair, tag in ((0, "A"), (1, "B")):
            accept_full = rng.random(n) < 0.5
            s = {}
            for flag in (True, False):
                where = np.flatnonzero(accept_full == flag)
                part = _sample_pairs(rng, len(where), height, width, need_split=not flag)
                for key, value in part.items():
                    s.setdefault(key, np.zeros((n, *value.shape[1:]), value.dtype))[where] = value
            si, sj = s["seed"][:, 0], s["seed"][:, 1]
            params[f"rects_{tag}"] = table.rects[s["rects"]]
            params[f"seed_{tag}"] = s["seed"]
            params[f"accept_full_{tag}"] = accept_full
            masks = table.masks[s["rects"]]  # [n, 3, H, W]
            label = masks[:, 0] + 2 * masks[:, 1].astype(np.int8) + 3 * masks[:, 2].astype(np.int8)
            seed = np.zeros(label.shape, dtype=bool)
            seed[rows, si, sj] = True
            region = flood(label == 0, seed)
            flabel = np.where(region, np.int8(4), label)
            flabel[rows, si, sj] = 0
            label[rows, si, sj] = 4
            for g, lab, lut in ((2 * pair, label, x_roles), (2 * pair + 1, flabel, fx_roles)):
                grids[:, g] = shapes.label_lookup(colour_lut, lab)
                objects[:, g] = lab - 1
                roles[:, g] = lut[lab]
        return TaskSample(grids=grids, params=params, objects=objects, roles=roles)

    def check(self, grids):
        grids = np.asarray(grids)
        n, _, h, w = grids.shape
        counts, boxes = shapes.colour_boxes(grids[:, 0::2])  # A, B: [n, 2, 11], [n, 2, 11, 4]
        present = counts[..., 1:] > 0
        hh = boxes[..., 2] - boxes[..., 0]
        ww = boxes[..., 3] - boxes[..., 1]
        rect = shapes.is_filled_box(counts, boxes) & (hh >= 3) & (ww >= 3) & (hh * ww <= h * w // 2)
        single = counts == 1
        ok = (present.sum(-1) == N_RECT + 1) & (rect[..., 1:].sum(-1) == N_RECT)
        ok &= single[..., 1:].sum(-1) == 1
        s = np.argmax(single[..., 1:], -1) + 1  # [n, 2] seed colour
        x = grids[:, 0::2].reshape(2 * n, h, w)
        fx = grids[:, 1::2].reshape(2 * n, h, w)
        seed = x == s.reshape(-1, 1, 1)
        region = flood((x == 0) | seed, seed)
        expected = np.where(region & ~seed, s.reshape(-1, 1, 1), np.where(seed, 0, x))
        ok &= (expected == fx).all(axis=(1, 2)).reshape(n, 2)
        ok = ok.all(-1)
        # Shared colours: the fill colour and the rectangle colours (as a set).
        ok &= (s[:, 0] == s[:, 1]) & (present[:, 0] == present[:, 1]).all(-1)
        return ok

    def other_parameters(self, sample, rng):
        # The same region filled with a colour the quiz does not use.
        return recolour_unused(sample, rng, 3, N_RECT)


TASK = Fill()
