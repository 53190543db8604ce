"""Every task: the checker accepts the original generator's quizzes and ours, and rejects
corrupted final grids; generation is seeded, annotated and never loops forever."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gridlens.world import TASKS, check, generate, get_task
from gridlens.world.tokens import tokens_to_grids

N = 400


@pytest.fixture(scope="module")
def reference(reference_dir):
    return np.load(reference_dir / "fleuret_reference_quizzes.npz")


def _ours(task: str, n: int = N, seed: int = 0):
    batch = generate(task, n, seed=seed)
    return batch, tokens_to_grids(batch.tokens)[0]


@pytest.mark.parametrize("task", TASKS)
def test_checker_accepts_every_reference_quiz(task, reference):
    tokens = torch.as_tensor(reference[task].astype(np.int64))
    ok = check(task, tokens)
    assert ok.all(), (
        f"{task}: rejected reference quizzes {torch.nonzero(~ok).flatten()[:10].tolist()}"
    )


@pytest.mark.parametrize("task", TASKS)
def test_checker_accepts_every_generated_quiz(task):
    batch, _ = _ours(task)
    ok = check(task, batch.tokens)
    assert ok.all(), f"{task}: rejected our quizzes {torch.nonzero(~ok).flatten()[:10].tolist()}"


@pytest.mark.parametrize("task", TASKS)
def test_checker_rejects_one_changed_cell(task):
    _, grids = _ours(task, seed=1)
    rng = np.random.default_rng(2)
    n, _, h, w = grids.shape
    bad = grids.copy()
    i, j = rng.integers(0, h, n), rng.integers(0, w, n)
    old = bad[np.arange(n), 3, i, j]
    bad[np.arange(n), 3, i, j] = (old + rng.integers(1, 11, n)) % 11
    rejected = ~get_task(task).check(bad)
    assert rejected.mean() >= 0.99, f"{task}: only {rejected.mean():.3f} rejected"


@pytest.mark.parametrize("task", TASKS)
def test_checker_rejects_other_rule_parameters(task):
    rng = np.random.default_rng(3)
    sample = get_task(task).generate(N, rng)
    wrong = get_task(task).other_parameters(sample, rng)
    differs = (wrong != sample.grids[:, 3]).any(axis=(1, 2))
    assert differs.mean() > 0.5, f"{task}: other_parameters rarely changes f(B)"
    bad = sample.grids[differs].copy()
    bad[:, 3] = wrong[differs]
    rejected = ~get_task(task).check(bad)
    assert rejected.mean() >= 0.99, f"{task}: only {rejected.mean():.3f} rejected"


@pytest.mark.parametrize("task", TASKS)
def test_generation_is_seeded_and_annotated(task):
    a, grids = _ours(task, n=50, seed=7)
    b, _ = _ours(task, n=50, seed=7)
    c, _ = _ours(task, n=50, seed=8)
    assert torch.equal(a.tokens, b.tokens)
    assert not torch.equal(a.tokens, c.tokens)
    # Object and role annotations cover exactly the coloured cells of every grid.
    coloured = grids != 0
    assert np.array_equal(a.objects >= 0, coloured)
    assert (a.roles[coloured] > 0).all()
    assert (a.roles[~coloured] == 0).all()
    assert np.array_equal(a.changes[:, 0], grids[:, 0] != grids[:, 1])


@pytest.mark.parametrize("task", TASKS)
def test_x_differs_from_fx(task):
    """The original drops quizzes where X == f(X) as trivial; generated ones never are."""
    _, grids = _ours(task, n=200, seed=4)
    assert (grids[:, 0] != grids[:, 1]).any(axis=(1, 2)).all()
    assert (grids[:, 2] != grids[:, 3]).any(axis=(1, 2)).all()
