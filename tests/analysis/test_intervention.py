"""generate_under against plain generation and plain loops."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gridlens.analysis.ablation import ablation_hooks
from gridlens.analysis.core import predicted_cells, quiz_set
from gridlens.analysis.intervention import generate_under
from gridlens.models.checkpoints import load


@pytest.fixture(scope="module")
def model():
    return load("default")


@pytest.fixture(scope="module")
def quizzes():
    return quiz_set(n_per_task=1, seed=7)


def first_wrong(generated, truth):
    out = []
    for row, right in zip(generated.tolist(), truth.tolist(), strict=True):
        out.append(next((i for i, (a, b) in enumerate(zip(row, right, strict=True)) if a != b), -1))
    return np.array(out)


def test_without_hooks_it_is_plain_generation(model, quizzes):
    tokens = quizzes.tokens
    cells = predicted_cells(tokens)
    generated = model.complete(tokens)[:, cells]
    result = generate_under(model, quizzes, [])
    right = (generated == tokens[:, cells]).all(1).numpy()
    np.testing.assert_array_equal(result.clean_correct, right)
    np.testing.assert_array_equal(result.correct, right)
    assert (result.first_departure == -1).all()
    np.testing.assert_array_equal(result.first_error, first_wrong(generated, tokens[:, cells]))


def test_first_error_is_the_first_mismatch_under_the_hooks(model, quizzes, tmp_path):
    tokens = quizzes.tokens
    cells = predicted_cells(tokens)

    def zero(x, hook):
        return torch.zeros_like(x)

    hooks = [("blocks.0.hook_attn_out", zero)]
    result = generate_under(model, quizzes, hooks)
    with model.hooks(hooks):
        generated = model.complete(tokens)[:, cells]
    clean = model.complete(tokens)[:, cells]
    np.testing.assert_array_equal(result.first_error, first_wrong(generated, tokens[:, cells]))
    np.testing.assert_array_equal(result.first_departure, first_wrong(generated, clean))
    assert (result.first_error >= 0).all() and not result.correct.any()
    right = (generated == tokens[:, cells]).double().mean(1).numpy()
    np.testing.assert_allclose(result.cells, right)  # partial credit where whole grids fail
    assert 0 < right.mean() < 1

    data = json.loads(json.dumps(result.to_json()))
    assert data["hooks"] == ["blocks.0.hook_attn_out"]
    assert data["greedy_accuracy"]["intervened"]["all"] == 0.0
    maps = result.error_maps()
    assert maps["all"].sum() == len(tokens) and maps["all"].shape == (10, 10)
    assert sum(v.sum() for k, v in maps.items() if k != "all") == len(tokens)
    assert len(result.findings()) >= 2
    result.plot(tmp_path / "first_errors.png")
    assert (tmp_path / "first_errors.png").read_bytes()[:4] == b"\x89PNG"


def test_resample_hooks_line_up_with_the_quizzes(model, quizzes):
    """Resample hooks built for the set run on it in one batch; a one-quiz set is its own donor,
    so resampling changes nothing."""
    one = quizzes.subset([2])
    result = generate_under(model, one, ablation_hooks(model, one, "L1.attn", "resample"))
    assert (result.first_departure == -1).all()
    np.testing.assert_array_equal(result.correct, result.clean_correct)
