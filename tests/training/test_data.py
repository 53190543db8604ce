"""The training stream is a function of (seed, step, rank) and never shows a test quiz."""

from __future__ import annotations

import numpy as np
import torch

from gridlens.training.data import QuizStream, TestSet, quiz_hash
from gridlens.world import generate

TASKS = ("replace_color", "translate")


def stream(**kw):
    args = dict(
        tasks=TASKS, structures=("forward", "generation"), noise=0.05, batch_size=16, seed=3
    )
    return QuizStream(**{**args, **kw})


def test_batches_are_a_function_of_seed_step_and_rank():
    a, b = stream(), stream()
    assert torch.equal(a.batch(5), b.batch(5))  # same position, fresh object: same data
    b.batch(0)
    assert torch.equal(a.batch(7), b.batch(7))  # independent of what was drawn before
    assert not torch.equal(a.batch(5), a.batch(6))
    assert not torch.equal(a.batch(5), stream(rank=1).batch(5))
    assert not torch.equal(a.batch(5), stream(seed=4).batch(5))
    assert a.batch(2).shape == (16, 404) and a.batch(2).dtype == torch.long


def test_hash_is_deterministic_and_separates_quizzes():
    grids = generate(TASKS, 4000, seed=0).grids
    h = quiz_hash(grids)
    assert h.dtype == np.uint64 and np.array_equal(h, quiz_hash(grids.copy()))
    unique_quizzes = len(np.unique(grids.reshape(len(grids), -1), axis=0))
    assert len(np.unique(h)) == unique_quizzes
    changed = grids.copy()
    changed[:, 3, 0, 0] = (changed[:, 3, 0, 0] + 1) % 11
    assert not np.any(quiz_hash(changed) == h)


def test_training_quizzes_in_the_test_set_are_dropped():
    base = stream(noise=0.0, structures=("forward",))
    wanted = base.batch(4)
    # Make batch 4's quizzes the "test set": every one must be replaced.
    grids = wanted.reshape(16, 4, 101)[:, :, 1:].reshape(16, 4, 10, 10).numpy()
    excl = stream(noise=0.0, structures=("forward",), exclude=quiz_hash(grids))
    got = excl.batch(4)
    assert got.shape == wanted.shape and excl.dropped == 16
    got_h = quiz_hash(got.reshape(16, 4, 101)[:, :, 1:].reshape(16, 4, 10, 10).numpy())
    assert not np.isin(got_h, quiz_hash(grids)).any()
    assert torch.equal(got, excl.batch(4))  # still deterministic


def test_test_set_is_seeded_and_split_by_structure():
    a = TestSet.build(TASKS, 40, seed=1)
    b = TestSet.build(TASKS, 40, seed=1)
    c = TestSet.build(TASKS, 40, seed=2)
    assert np.array_equal(a.pools["translate"], b.pools["translate"])
    assert not np.array_equal(a.pools["translate"], c.pools["translate"])
    fwd, g_fwd = a.quizzes("translate", "forward", 10)
    inv, g_inv = a.quizzes("translate", "inverse", 10)
    assert fwd.shape == (10, 404) and not np.array_equal(g_fwd, g_inv)
    assert fwd[0, 0] == 11 and inv[0, 0] == 12  # markers: A first, f_A first
