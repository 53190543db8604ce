"""SAE metrics against hand computations, and evaluate_sae on the default model with an SAE
that reconstructs exactly (everything recovered) or not at all."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sae_feature_helpers import identity_sae

from gridlens.analysis.core import quiz_set
from gridlens.models.checkpoints import load
from gridlens.sae.metrics import evaluate_sae, loss_recovered, reconstruction_stats

SITE = "blocks.1.hook_resid_post"


def test_reconstruction_stats_by_hand():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 2.0], [2.0, 0.0]])
    recon = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 2.0], [1.0, 0.0]])
    latents = torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 2.0], [0.0, 0.0, 3.0]])
    stats = reconstruction_stats(x, recon, latents)
    # mean (1, 1); total variance 0+1 + 1+1 + 0+1 + 1+1 = 6; squared error 0 + 1 + 0 + 1 = 2
    assert stats["explained_variance"] == pytest.approx(1 - 2 / 6)
    assert stats["mse"] == pytest.approx(2 / 8)
    assert stats["l0"] == pytest.approx((1 + 1 + 2 + 1) / 4)
    assert stats["dead_fraction"] == pytest.approx(1 / 3)  # latent 1 never fires
    assert stats["dense_fraction"] == pytest.approx(2 / 3)  # latents 0 (1/2) and 2 (3/4)
    ratios = [1, 0.5, 1, 0.5]
    assert stats["l2_ratio"] == pytest.approx(np.mean(ratios))
    # gamma = sum ||x_hat||^2 / sum <x_hat, x> = (1 + 1 + 5 + 1) / (1 + 2 + 5 + 2)
    assert stats["shrinkage"] == pytest.approx(8 / 10)


def test_loss_recovered_formula():
    assert loss_recovered(loss_zero=3.0, loss_spliced=1.0, loss_clean=0.5) == pytest.approx(0.8)
    assert np.isnan(loss_recovered(1.0, 1.0, 1.0))


@pytest.fixture(scope="module")
def model():
    return load("default")


@pytest.fixture(scope="module")
def quizzes():
    return quiz_set(["frame", "translate"], n_per_task=1, seed=4)


def test_identity_sae_recovers_everything(model, quizzes, tmp_path):
    result = evaluate_sae(model, identity_sae(128, SITE), quizzes, positions="grid", greedy=True)
    for task in ("frame", "translate", "all"):
        assert result["explained_variance"][task] == pytest.approx(1.0, abs=1e-6)
        assert result["loss_recovered"][task] == pytest.approx(1.0, abs=1e-4)
        assert result["loss_zero"][task] > result["loss_clean"][task] + 0.1
        assert result["accuracy_spliced"][task] == result["accuracy_clean"][task]
        assert result["l2_ratio"][task] == pytest.approx(1.0, abs=1e-6)
    assert result.n_rows == 2 * 100
    data = json.loads(json.dumps(result.to_json(), allow_nan=False))
    assert data["explained_variance"]["all"] == pytest.approx(1.0, abs=1e-6)
    assert (
        sum(data["firing_frequency_histogram"]["counts"])
        + data["firing_frequency_histogram"]["dead"]
        == 256
    )
    result.plot(tmp_path / "sae.png")
    assert (tmp_path / "sae.png").read_bytes()[:4] == b"\x89PNG"
    findings = result.findings()
    assert 1 <= len(findings) <= 4 and "100.0%" in findings[0]


def test_an_sae_that_outputs_a_constant_recovers_what_mean_ablation_would(model, quizzes):
    """W_enc = 0: the SAE returns b_dec everywhere; with b_dec = 0 that is zero ablation."""
    sae = identity_sae(128, SITE)
    with torch.no_grad():
        sae.W_enc.zero_()
    result = evaluate_sae(model, sae, quizzes, positions="grid", greedy=False)
    assert result["loss_recovered"]["all"] == pytest.approx(0.0, abs=1e-6)
    assert result["l0"]["all"] == 0 and result["dead_fraction"]["all"] == 1.0
    assert result["explained_variance"]["all"] < 0  # worse than predicting the mean
    assert np.isnan(result["accuracy_spliced"]["all"])
