"""contact: three disjoint rectangles; every rectangle touching rectangle 0 (the anchor) along an
edge gets its border repainted in the anchor's colour (the original `task_contact`).

The three colours are drawn once per quiz and shared by both pairs (c0 is the anchor). Each pair
draws its own three disjoint rectangles (at least 3x3, area at most H*W//2, as
`rec_coo(3, prevent_overlap=True)`), redrawn until rectangle 1 or 2 touches rectangle 0: the
original's `rec_dist(r0, rk) == 0`, i.e. the rectangles share part of an edge (a corner alone
is not contact). Nothing is hard-coded to 10x10: any grid that can hold three disjoint 3x3
squares works.

`contact_rule(x, anchor)` is the rule on its own (f(X) from X and the anchor colour), with
variants (`touching="any"`, `"all"`) that evaluation code can use to recognise a wrong answer
that applies a neighbouring rule, e.g. "repainted the border of every rectangle".
"""

from __future__ import annotations

from functools import cache

import numpy as np

from gridlens.errors import ConfigError, GridSizeError
from gridlens.world import shapes
from gridlens.world.tasks.base import Task, TaskSample

N_RECT = 3
TOUCHING = ("edge", "any", "all")


def rect_gaps(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row and column gaps (v, h) between half-open rectangles a, b [..., 4] (i1, j1, i2, j2):
    the number of empty rows / columns between them, negative where their spans overlap."""
    v = np.maximum(a[..., 0] - b[..., 2], b[..., 0] - a[..., 2])
    h = np.maximum(a[..., 1] - b[..., 3], b[..., 1] - a[..., 3])
    return v, h


def rec_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The original's `rec_dist` between rectangles a, b [..., 4]: 0 exactly when they share
    part of an edge (or overlap), 1 when they touch only at a corner or are one cell apart."""
    v, h = rect_gaps(a, b)
    zero = np.zeros_like(v)
    return np.minimum(
        np.maximum(v, zero) + np.maximum(h + 1, zero), np.maximum(v + 1, zero) + np.maximum(h, zero)
    )


def contact_rule(x: np.ndarray, anchor: np.ndarray | int, touching: str = "edge") -> np.ndarray:
    """f(X) for the contact rule: X's rectangles that touch the anchor rectangle get their border
    (the outermost ring of cells of their bounding box) repainted in the anchor colour.

    x:        one grid [H, W] or a batch [n, H, W] of solid rectangles of distinct colours (any
              number of them, as in the task's X grids; a colour stands for its bounding box).
    anchor:   the anchor colour, an int or [n] (one per grid). A grid without that colour (or
              anchor 0) is returned unchanged.
    touching: which rectangles are repainted:
              "edge": those sharing part of an edge with the anchor rectangle (the task's rule,
                      the original's `rec_dist == 0`);
              "any":  also those touching it only at a corner;
              "all":  every rectangle other than the anchor, touching or not.
    Returns a new array of x's shape and dtype: f(X) under that variant.
    """
    if touching not in TOUCHING:
        raise ConfigError(f"touching must be one of {', '.join(TOUCHING)}, got {touching!r}")
    x = np.asarray(x)
    single = x.ndim == 2
    grids = x[None] if single else x
    n = len(grids)
    anchor = np.broadcast_to(np.asarray(anchor, dtype=np.int64), (n,))
    if ((anchor < 0) | (anchor > 10)).any():
        raise ConfigError("anchor colours must lie in 0..10")
    counts, boxes = shapes.colour_boxes(grids)  # [n, 11], [n, 11, 4]
    out = _apply(grids, anchor, touching, counts, boxes).astype(x.dtype, copy=False)
    return out[0] if single else out


def _apply(grids, anchor, touching, counts, boxes):
    """contact_rule on grids [n, H, W], anchor [n], with their colour_boxes statistics."""
    n, h, w = grids.shape
    rows = np.arange(n)
    colour = np.arange(11)
    anchor_box = boxes[rows, anchor][:, None, :]  # [n, 1, 4]
    if touching == "edge":
        selected = rec_dist(anchor_box, boxes) == 0
    elif touching == "any":
        v, hh = rect_gaps(anchor_box, boxes)
        selected = (v <= 0) & (hh <= 0)
    else:
        selected = np.ones((n, 11), dtype=bool)
    selected &= (counts > 0) & (colour != anchor[:, None]) & (colour > 0)
    selected &= ((counts[rows, anchor] > 0) & (anchor > 0))[:, None]
    r = np.arange(h)[:, None]
    c = np.arange(w)[None, :]
    border = (
        (r == shapes.per_cell(boxes[..., 0], grids))
        | (r == shapes.per_cell(boxes[..., 2], grids) - 1)
        | (c == shapes.per_cell(boxes[..., 1], grids))
        | (c == shapes.per_cell(boxes[..., 3], grids) - 1)
    )
    return np.where(border & shapes.per_cell(selected, grids), anchor[:, None, None], grids)


@cache
def _contact_tables(height: int, width: int):
    """Edge contact between the rectangles of `shapes.rectangle_table(H, W)` ([R, R] bool), its
    neighbour lists, and the alias table drawing rectangle 0 with weight
    (#touching it) x (#disjoint from it)."""
    table = shapes.rectangle_table(height, width)
    rects = table.rects.astype(np.int16)
    touch = np.empty(table.overlap.shape, dtype=bool)
    for start in range(0, len(rects), 512):  # chunks bound the temporaries on large grids
        rows = slice(start, start + 512)
        touch[rows] = rec_dist(rects[rows, None], rects[None, :]) == 0
    touch &= ~table.overlap
    touch.setflags(write=False)
    lists = shapes.neighbour_lists(touch)
    weight = lists[1].astype(np.float64) * shapes.disjoint_neighbours(height, width)[1]
    if not weight.any():
        raise GridSizeError(f"no two rectangles can touch on a {height}x{width} grid (contact)")
    return touch, lists, shapes.alias_table(weight)


def sample_contact_triples(
    rng: np.random.Generator, n: int, height: int, width: int, what: str
) -> np.ndarray:
    """[n, 3] indices into `shapes.rectangle_table(H, W)` of three disjoint rectangles with
    rectangle 1 or 2 touching rectangle 0 along an edge, uniform over such ordered triples: the
    distribution of the original's loop over `rec_coo(3, prevent_overlap=True)`.

    The valid triples are the union of V1 (1 touches 0) and V2 (2 touches 0), which the swap of
    rectangles 1 and 2 maps onto each other. Proposal: rectangle 0 with weight
    t(r0) * d(r0) (t: rectangles touching it, d: disjoint from it), a uniform touching one and a
    uniform disjoint one, kept when those two are disjoint; that is uniform over V1. Swapping
    the two with probability 1/2 and keeping triples in both V1 and V2 with probability 1/2 makes
    it uniform over V1 | V2. 18% are kept on 10x10 against 1.2% in the original's loop.
    """
    touch, touch_lists, first = _contact_tables(height, width)
    overlap = shapes.rectangle_table(height, width).overlap.ravel()
    touch_flat = touch.ravel()
    disjoint_lists = shapes.disjoint_neighbours(height, width)
    n_rect = len(touch)

    def propose(m: int):
        i0 = shapes.pick_weighted(rng, first, m)
        a = shapes.pick_neighbour(rng, touch_lists, i0)
        b = shapes.pick_neighbour(rng, disjoint_lists, i0)
        u = rng.random(m)
        ok = ~overlap[shapes.pair_index(a, b, n_rect)]
        ok &= ~touch_flat[shapes.pair_index(i0, b, n_rect)] | (u < 0.5)
        return ok, {"i0": i0, "a": a, "b": b}

    kept = shapes.rejection_sample(n, propose, what)
    i0, a, b = kept["i0"], kept["a"], kept["b"]
    swap = rng.random(len(i0)) < 0.5
    return np.stack([i0, np.where(swap, b, a), np.where(swap, a, b)], axis=1).astype(np.int64)


@cache
def _border_table(height: int, width: int) -> np.ndarray:
    """[R, H, W] uint8: the border ring of every rectangle of the table."""
    rects = shapes.rectangle_table(height, width).rects
    inner = rects + np.array([1, 1, -1, -1])
    t = shapes.rectangle_table(height, width).masks & ~shapes.rectangle_masks(inner, height, width)
    t = t.astype(np.uint8)
    t.setflags(write=False)
    return t


class Contact(Task):
    name = "contact"
    roles = ("background", "anchor", "touching", "border", "other")
    min_height = 3
    min_width = 3
    description = "rectangles touching the anchor rectangle along an edge get its colour as border"
    room_for = N_RECT

    def generate(self, n, rng, height=10, width=10):
        self.validate_size(height, width)
        colours = shapes.distinct_colours(rng, n, N_RECT)  # c0 anchor
        table = shapes.rectangle_table(height, width)
        touch = _contact_tables(height, width)[0]
        masks, borders = shapes.uint8_masks(height, width), _border_table(height, width)
        c8 = colours.astype(np.uint8)[:, :, None, None]
        grids = np.empty((n, 4, height, width), dtype=np.int64)
        objects = np.empty(grids.shape, dtype=np.int8)
        roles = np.empty(grids.shape, dtype=np.int8)
        params = {"colors": colours}
        for pair, key in ((0, "rects_A"), (1, "rects_B")):
            idx = sample_contact_triples(rng, n, height, width, self.name)
            params[key] = table.rects[idx]
            params[f"touching_{key[-1]}"] = touch[idx[:, :1], idx[:, 1:]]  # [n, 2]: 1, 2
            m0, m1, m2 = (masks[idx[:, k]] for k in range(N_RECT))  # disjoint
            t1, t2 = (touch[idx[:, 0], idx[:, k]].astype(np.uint8)[:, None, None] for k in (1, 2))
            x = m0 * c8[:, 0]
            x += m1 * c8[:, 1]
            x += m2 * c8[:, 2]
            obj = m1 * np.uint8(2)
            obj += m0
            obj += m2 * np.uint8(3)  # 0 background, k + 1 for rectangle k
            role = m0.copy()  # anchor 1, touching 2, other 4
            role += m1 * (np.uint8(4) - t1 - t1)
            role += m2 * (np.uint8(4) - t2 - t2)
            repaint = borders[idx[:, 1]] * t1
            repaint |= borders[idx[:, 2]] * t2
            grids[:, 2 * pair] = x
            roles[:, 2 * pair] = role
            np.copyto(x, c8[:, 0], where=repaint.view(bool))
            np.copyto(role, np.uint8(3), where=repaint.view(bool))
            grids[:, 2 * pair + 1] = x
            roles[:, 2 * pair + 1] = role
            objects[:, 2 * pair] = obj.view(np.int8) - 1
            objects[:, 2 * pair + 1] = objects[:, 2 * pair]
        return TaskSample(grids=grids, params=params, objects=objects, roles=roles)

    def check(self, grids):
        grids, ok = shapes.colour_grids(grids)
        n, _, h, w = grids.shape
        counts, boxes = shapes.colour_boxes(grids[:, 0::2])  # A, B
        ok &= shapes.rectangle_colours_ok(counts, boxes, h, w).all(1)
        present = counts[..., 1:] > 0
        ok &= (present[:, 0] == present[:, 1]).all(-1)
        # The anchor colour is what f_A shows where it differs from A (something must differ in
        # both pairs: the original redraws until a rectangle touches the anchor).
        a, fa = grids[:, 0].reshape(n, h * w), grids[:, 1].reshape(n, h * w)
        changed = a != fa
        ok &= changed.any(1)
        anchor = fa[np.arange(n), np.argmax(changed, axis=1)]
        for k, x in enumerate((0, 2)):
            expected = _apply(grids[:, x], anchor, "edge", counts[:, k], boxes[:, k])
            ok &= (expected == grids[:, x + 1]).all(axis=(1, 2))
            ok &= (expected != grids[:, x]).any(axis=(1, 2))
        return ok

    def other_parameters(self, sample, rng):
        # The rule applied to B with rectangle 1's or 2's colour as the anchor.
        colours = sample.params["colors"]
        n = len(colours)
        anchor = colours[np.arange(n), rng.integers(1, N_RECT, n)]
        return contact_rule(sample.grids[:, 2], anchor)


TASK = Contact()
