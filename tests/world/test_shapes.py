"""shapes: the joint rectangle sampler against an exhaustive enumeration of its support, colour
statistics against a per-grid loop, and the small lookup helpers against known answers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from gridlens.errors import GridSizeError
from gridlens.world import shapes


def assert_uniform(idx: np.ndarray, valid: np.ndarray) -> None:
    """Draws idx [N, k] hit only the True cells of valid [R]*k, each about equally often."""
    r = valid.shape[0]
    flat = np.ravel_multi_index(tuple(idx.T), (r,) * idx.shape[1])
    counts = np.bincount(flat, minlength=valid.size)
    assert counts[~valid.ravel()].sum() == 0
    observed = counts[valid.ravel()]
    assert (observed > 0).all()
    expected = len(idx) / valid.sum()
    chi2 = ((observed - expected) ** 2 / expected).sum()
    dof = int(valid.sum()) - 1
    assert chi2 < dof + 5 * np.sqrt(2 * dof) + 10, (chi2, dof)


def disjoint_tuples(size: tuple[int, int], k: int) -> np.ndarray:
    """[R]*k bool: the ordered k-tuples of pairwise disjoint table rectangles, by enumeration."""
    ov = shapes.rectangle_table(*size).overlap
    grids = np.meshgrid(*[np.arange(len(ov))] * k, indexing="ij")
    valid = np.ones(grids[0].shape, dtype=bool)
    for a, b in itertools.combinations(range(k), 2):
        valid &= ~ov[grids[a], grids[b]]
    return valid


@pytest.mark.parametrize("size", [(6, 7), (3, 9)])
def test_triples_are_uniform_over_disjoint_triples(size):
    """The support of rec_coo(3, prevent_overlap=True), every triple equally likely."""
    valid = disjoint_tuples(size, 3)
    idx = shapes.sample_rectangles(np.random.default_rng(5), 60 * int(valid.sum()), 3, *size, "t")
    assert_uniform(idx, valid)


def test_restricted_last_rectangle_is_uniform_over_allowed_triples():
    size = (6, 7)
    rects = shapes.rectangle_table(*size).rects
    last = np.flatnonzero(rects[:, 2] < size[0])  # e.g. translate's "moved one row down" pool
    valid = disjoint_tuples(size, 3)
    valid[:, :, np.setdiff1d(np.arange(len(rects)), last)] = False
    rng = np.random.default_rng(6)
    idx = shapes.sample_rectangles(rng, 60 * int(valid.sum()), 3, *size, "t", last=last)
    assert_uniform(idx, valid)


def test_pairs_with_an_accept_predicate_are_uniform():
    size = (6, 7)
    rects = shapes.rectangle_table(*size).rects
    area = (rects[:, 2] - rects[:, 0]) * (rects[:, 3] - rects[:, 1])
    valid = disjoint_tuples(size, 2) & (area[:, None] > area[None, :])

    def bigger_first(r):
        a = (r[..., 2] - r[..., 0]) * (r[..., 3] - r[..., 1])
        return a[:, 0] > a[:, 1]

    rng = np.random.default_rng(7)
    idx = shapes.sample_rectangles(rng, 200 * int(valid.sum()), 2, *size, "t", accept=bigger_first)
    assert_uniform(idx, valid)


def test_overlapping_draws_are_independent_uniform():
    size = (4, 5)
    r = len(shapes.rectangle_table(*size).rects)
    idx = shapes.sample_rectangles(np.random.default_rng(8), 200 * r * r, 2, *size, "t", False)
    assert_uniform(idx, np.ones((r, r), dtype=bool))


def test_impossible_draws_raise():
    rng = np.random.default_rng(0)
    with pytest.raises(GridSizeError):
        shapes.sample_rectangles(rng, 5, 2, 5, 5, "t")  # two disjoint 3x3 never fit
    with pytest.raises(GridSizeError):
        shapes.sample_rectangles(rng, 5, 3, 10, 10, "t", last=np.zeros(0, dtype=np.int64))
    with pytest.raises(GridSizeError):
        shapes.sample_rectangles(rng, 5, 3, 5, 8, "t")  # pairs fit, triples never do


def test_colour_boxes_match_a_per_grid_loop():
    rng = np.random.default_rng(1)
    grids = rng.integers(-1, 13, size=(40, 3, 5, 7))
    grids[rng.random(grids.shape) < 0.6] = 4  # a common colour, others sparse or absent
    counts, boxes = shapes.colour_boxes(grids)
    assert counts.shape == (40, 3, 11) and boxes.shape == (40, 3, 11, 4)
    for g in itertools.product(range(40), range(3)):
        for c in range(11):
            rows, cols = np.nonzero(grids[g] == c)
            assert counts[g][c] == len(rows)
            expected = (
                [rows.min(), cols.min(), rows.max() + 1, cols.max() + 1] if len(rows) else [0] * 4
            )
            assert boxes[g][c].tolist() == expected
    single = shapes.colour_boxes(grids[0, 0])
    assert np.array_equal(single[0], counts[0, 0]) and np.array_equal(single[1], boxes[0, 0])
    assert np.array_equal(shapes.colour_counts(grids[:, 0]), counts[:, 0])


def test_alias_table_draws_in_proportion_to_the_weights():
    weights = np.array([0.0, 1.0, 3.0, 0.0, 6.0, 0.5])
    table = shapes.alias_table(weights)
    draws = shapes.pick_weighted(np.random.default_rng(2), table, 200_000)
    freq = np.bincount(draws, minlength=len(weights)) / len(draws)
    assert np.abs(freq - weights / weights.sum()).max() < 0.005
    assert freq[[0, 3]].sum() == 0


def test_label_lookups():
    labels = np.array([[[0, 1], [2, 1]], [[2, 2], [0, 1]]], dtype=np.uint8)
    colours = np.array([[5, 7], [9, 3]])
    assert shapes.colour_labels(labels, colours).tolist() == [[[0, 5], [7, 5]], [[3, 3], [0, 9]]]
    lut = np.array([[1, 2, 3], [4, 5, 6]])
    assert shapes.label_lookup(lut, labels).tolist() == [[[1, 2], [3, 2]], [[6, 6], [4, 5]]]


def test_checker_input_validation():
    grids = np.zeros((3, 4, 2, 2), dtype=np.int64)
    grids[1, 2, 0, 1] = 11
    grids[2, 0, 1, 1] = -1
    clean, ok = shapes.colour_grids(grids)
    assert ok.tolist() == [True, False, False]
    assert clean.min() == 0 and clean.max() == 0
    with pytest.raises(ValueError):
        shapes.colour_grids(np.zeros((3, 2, 2)))


@pytest.mark.parametrize(("size", "fits"), [((9, 9), True), ((3, 9), True), ((8, 5), False)])
def test_check_room(size, fits):
    if fits:
        shapes.check_room("t", *size)
    else:
        with pytest.raises(GridSizeError):
            shapes.check_room("t", *size)
