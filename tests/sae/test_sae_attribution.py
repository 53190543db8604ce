"""Gradient x activation against finite differences, causal edits that must change nothing,
and the learned mask's bookkeeping."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sae_feature_helpers import HOOK, random_sae, with_dead_latent

from gridlens.analysis.core import grid_metrics, quiz_set
from gridlens.models.checkpoints import load
from gridlens.sae.attribution import (
    ablate_latents,
    amplify_latents,
    attribute,
    grid_logprob,
    learned_mask,
)
from gridlens.sae.splice import splice_hooks


@pytest.fixture(scope="module")
def model64():
    return load("default", dtype=torch.float64)


def test_grad_times_activation_matches_finite_difference(model64):
    """For one quiz, scaling latent j at position p by (1 + eps) changes the metric by
    eps x attribution(p, j) to first order."""
    sae = random_sae(model64, d_sae=32, seed=3).double()
    quizzes = quiz_set("contact", 1, seed=2)
    result = attribute(model64, sae, quizzes, top_k=3)
    tokens = quizzes.tokens
    with torch.no_grad():
        clean = float(grid_logprob(model64(tokens), tokens)[0])
    assert result.metric["all"] == pytest.approx(clean, rel=1e-9)
    eps = 1e-4
    for position, latent, value in result.top_pairs["contact"]:
        scale = torch.ones(sae.cfg.d_sae, dtype=torch.float64)
        scale[latent] = 1 + eps
        hooks = splice_hooks(
            sae, keep_error=True, edit=lambda f, s=scale: f * s, positions=[position]
        )
        with torch.no_grad():
            moved = float(grid_logprob(model64.run_with_hooks(tokens, fwd_hooks=hooks), tokens)[0])
        assert (moved - clean) / eps == pytest.approx(value, rel=1e-3, abs=1e-8)
    totals = result.latent_total[0]
    assert abs(totals).max() > 0


@pytest.fixture(scope="module")
def small():
    model = load("default")
    sae = with_dead_latent(random_sae(model, d_sae=32, seed=4), 0)
    quizzes = quiz_set(("frame", "contact"), 1, seed=3)
    clean = grid_metrics(model, quizzes.tokens, greedy=True).summary(quizzes.tasks)
    return model, sae, quizzes, clean


def test_ablating_a_latent_that_never_fires_changes_nothing(small):
    model, sae, quizzes, clean = small
    kept = ablate_latents(model, sae, quizzes, [0])
    assert kept.baseline == kept.edited == clean
    spliced = ablate_latents(model, sae, quizzes, [0], keep_error=False)
    assert spliced.edited == spliced.baseline
    amplified = amplify_latents(model, sae, quizzes, [0], 10.0, baseline=clean)
    assert amplified.edited == clean


def test_keeping_no_latent_equals_the_zero_edit(small):
    """invert=True with no latent kept zeroes every latent, as ablating all of them does; both
    equal a hand-written hook that removes the SAE's reconstruction (less b_dec) from the
    grid's positions, keeping the error: x - (decode(encode(x)) - b_dec)."""
    model, sae, quizzes, clean = small
    every = list(range(sae.cfg.d_sae))
    zero_all = ablate_latents(model, sae, quizzes, every, baseline=clean)
    keep_none = ablate_latents(model, sae, quizzes, [], invert=True, baseline=clean)
    start = quizzes.tokens.shape[1] - 100

    def by_hand(act, hook):
        act = act.clone()
        x = act[:, start:]
        act[:, start:] = x - (sae.decode(sae.encode(x)) - sae.b_dec)
        return act

    with torch.no_grad():
        reference = grid_metrics(model, quizzes.tokens, [(HOOK, by_hand)]).summary(quizzes.tasks)
    for edited in (zero_all.edited, keep_none.edited):
        for metric in ("loss", "cell_accuracy"):
            for task, value in reference[metric].items():
                assert edited[metric][task] == pytest.approx(value, rel=1e-5), (metric, task)
    # the edit moves the loss by far more than the tolerance above (0.07% of it, 60x 1e-5)
    moved = abs(reference["loss"]["all"] - clean["loss"]["all"])
    assert moved > 20 * 1e-5 * clean["loss"]["all"]


def test_learned_mask_losses_and_dead_latents(small):
    model, sae, quizzes, _ = small
    result = learned_mask(model, sae, quizzes, penalty=1e-2, steps=3, lr=0.5, batch_size=4)
    clean = grid_metrics(model, quizzes.tokens).loss.mean()
    assert result.loss_full == pytest.approx(float(clean), rel=1e-5)
    assert result.gates[0] < 1 / (1 + np.exp(-3.0))  # the dead latent only feels the penalty
    assert result.kept == sorted(result.kept, key=lambda j: -result.gates[j])
    assert all(result.gates[j] > 0.5 for j in result.kept)
    hard = learned_mask(model, sae, quizzes, steps=0, gate="hard_concrete", batch_size=4)
    assert len(hard.kept) == sae.cfg.d_sae
    assert hard.loss_masked == pytest.approx(hard.loss_full, rel=1e-6)
