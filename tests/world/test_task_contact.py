"""contact: the rule function and its variants, the exact sampler of touching triples, the
distribution against the reference quizzes, other grid sizes and too-small grids."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import reference_grids

from gridlens.errors import ConfigError, GridSizeError
from gridlens.world import generate, get_task, shapes
from gridlens.world.tasks.contact import (
    _contact_tables,
    contact_rule,
    rec_dist,
    sample_contact_triples,
)

TASK = get_task("contact")


@pytest.fixture(scope="module")
def reference(reference_dir):
    return reference_grids(reference_dir, "contact")


@pytest.fixture(scope="module")
def ours():
    return TASK.generate(20000, np.random.default_rng(0))


def anchors_of(grids):
    """The anchor colour of each quiz: what f_A shows where it differs from A."""
    n = len(grids)
    changed = (grids[:, 0] != grids[:, 1]).reshape(n, -1)
    return grids[:, 1].reshape(n, -1)[np.arange(n), np.argmax(changed, 1)]


def test_rule_reproduces_every_reference_pair(reference):
    anchor = anchors_of(reference)
    for x in (0, 2):
        assert np.array_equal(contact_rule(reference[:, x], anchor), reference[:, x + 1])


def test_rule_reproduces_our_pairs(ours):
    anchor = ours.params["colors"][:4000, 0]
    for x in (0, 2):
        expected = ours.grids[:4000, x + 1]
        assert np.array_equal(contact_rule(ours.grids[:4000, x], anchor), expected)


def test_rule_variants_on_a_hand_made_grid():
    x = np.zeros((10, 10), dtype=np.int64)
    x[0:3, 0:3] = 1  # anchor
    x[0:3, 3:6] = 2  # shares the anchor's right edge
    x[3:6, 3:6] = 4  # touches the anchor only at its bottom-right corner; shares 2's edge
    x[3:6, 6:9] = 3  # shares 4's edge, touches 2 at a corner, far from the anchor
    x[7:10, 0:3] = 5  # far from everything
    assert rec_dist(np.array([0, 0, 3, 3]), np.array([3, 3, 6, 6])) == 1
    assert rec_dist(np.array([0, 0, 3, 3]), np.array([0, 3, 3, 6])) == 0
    edge = contact_rule(x, 1)
    changed = edge != x
    assert set(np.unique(x[changed])) == {2}
    assert (edge[changed] == 1).all()
    assert changed.sum() == 8  # the 3x3 rectangle's ring
    any_ = contact_rule(x, 1, touching="any")
    assert set(np.unique(x[any_ != x])) == {2, 4}
    every = contact_rule(x, 1, touching="all")
    assert set(np.unique(x[every != x])) == {2, 3, 4, 5}
    assert (x[every != x] != 1).all()
    # Batched with per-grid anchors; an absent anchor (or 0) changes nothing.
    batch = np.stack([x, x, x])
    out = contact_rule(batch, np.array([1, 7, 0]))
    assert np.array_equal(out[0], edge)
    assert np.array_equal(out[1], x) and np.array_equal(out[2], x)
    # With 2 as the anchor, 1 and 4 (sharing its edges) get 2's colour, not 3 (a corner).
    assert set(np.unique(x[contact_rule(x, 2) != x])) == {1, 4}
    with pytest.raises(ConfigError):
        contact_rule(x, 1, touching="near")
    with pytest.raises(ConfigError):
        contact_rule(x, 11)


def test_rule_recognises_another_rule(ours):
    """The use evaluation makes of it: a wrong f(B) that repaints every rectangle's border."""
    b, fb = ours.grids[:1000, 2], ours.grids[:1000, 3]
    anchor = ours.params["colors"][:1000, 0]
    wrong = contact_rule(b, anchor, touching="all")
    other = ~ours.params["touching_B"][:1000].all(1)  # some rectangle of B does not touch
    assert other.any()
    assert (wrong[other] != fb[other]).any(axis=(1, 2)).all()
    assert (wrong[~other] == fb[~other]).all()
    quizzes = ours.grids[:1000].copy()
    quizzes[:, 3] = wrong
    assert np.array_equal(TASK.check(quizzes), ~other)


@pytest.mark.parametrize("size", [(6, 7), (3, 9)])
def test_triple_sampler_is_uniform_over_touching_triples(size):
    """Exhaustive check on small grids: the support is every ordered triple of pairwise disjoint
    rectangles where rectangle 1 or 2 shares an edge with rectangle 0, each equally likely (the
    original's loop over rec_coo(3, prevent_overlap=True) until min(d[1:]) == 0)."""
    table = shapes.rectangle_table(*size)
    r = len(table.rects)
    i0, i1, i2 = np.meshgrid(np.arange(r), np.arange(r), np.arange(r), indexing="ij")
    ov = table.overlap
    rects = table.rects
    d = rec_dist(rects[:, None], rects[None, :])
    valid = ~ov[i0, i1] & ~ov[i0, i2] & ~ov[i1, i2] & ((d[i0, i1] == 0) | (d[i0, i2] == 0))
    assert np.array_equal(_contact_tables(*size)[0], (d == 0) & ~ov)
    n_valid = int(valid.sum())
    idx = sample_contact_triples(np.random.default_rng(5), 60 * n_valid, *size, "test")
    flat = (idx[:, 0] * r + idx[:, 1]) * r + idx[:, 2]
    counts = np.bincount(flat, minlength=r**3)
    assert counts[~valid.ravel()].sum() == 0
    observed = counts[valid.ravel()]
    assert (observed > 0).all()
    expected = len(idx) / n_valid
    chi2 = ((observed - expected) ** 2 / expected).sum()
    dof = n_valid - 1
    assert chi2 < dof + 5 * np.sqrt(2 * dof) + 10, (chi2, dof)


def test_distribution_matches_the_reference(reference, ours):
    def stats(grids):
        touched, anchor_area = [], []
        anchor = anchors_of(grids)
        for x in (0, 2):
            a, fa = grids[:, x], grids[:, x + 1]
            changed_colours = (a[..., None] == np.arange(11)) & (a != fa)[..., None]
            touched.append(changed_colours.any((1, 2)).sum(1))
            anchor_area.append((a == anchor[:, None, None]).sum((1, 2)))
        return np.concatenate(touched), np.concatenate(anchor_area)

    ref_touched, ref_area = stats(reference)
    touched, area = stats(ours.grids)
    # One or two rectangles touch the anchor; both in 26% of pairs (exactly 5227040 of the
    # 20107232 valid triples on 10x10).
    assert set(np.unique(touched)) == {1, 2} and set(np.unique(ref_touched)) == {1, 2}
    both = (touched == 2).mean()
    assert abs(both - 5227040 / 20107232) < 0.01
    assert abs((ref_touched == 2).mean() - both) < 4 * np.sqrt(both * (1 - both) / 400)
    se = ref_area.std() / np.sqrt(len(ref_area))
    assert abs(ref_area.mean() - area.mean()) < 4 * se
    # Rectangle sizes.
    counts, boxes = shapes.colour_boxes(reference[:, 0::2].reshape(-1, 10, 10))
    ref_sizes = (boxes[..., 2] - boxes[..., 0])[counts > 0][1::2]  # skip background rows
    counts, boxes = shapes.colour_boxes(ours.grids[:2000, 0::2].reshape(-1, 10, 10))
    our_sizes = (boxes[..., 2] - boxes[..., 0])[counts > 0][1::2]
    assert abs(ref_sizes.mean() - our_sizes.mean()) < 4 * ref_sizes.std() / np.sqrt(len(ref_sizes))


@pytest.mark.parametrize("size", [(8, 8), (12, 12), (7, 12), (12, 6), (3, 9)])
def test_other_grid_sizes(size):
    sample = TASK.generate(300, np.random.default_rng(1), *size)
    assert sample.grids.shape == (300, 4, *size)
    assert TASK.check(sample.grids).all()
    anchor = sample.params["colors"][:, 0]
    assert np.array_equal(contact_rule(sample.grids[:, 2], anchor), sample.grids[:, 3])
    bad = sample.grids.copy()
    bad[:, 3] = TASK.other_parameters(sample, np.random.default_rng(2))
    assert not TASK.check(bad).any()
    batch = generate("contact", 20, seed=3, height=size[0], width=size[1])
    assert TASK.check(batch.grids).all()


@pytest.mark.parametrize("size", [(5, 5), (4, 8), (2, 10)])
def test_too_small_grids_raise(size):
    with pytest.raises(GridSizeError):
        TASK.generate(10, np.random.default_rng(0), *size)
    with pytest.raises(GridSizeError):
        generate("contact", 10, height=size[0], width=size[1])
