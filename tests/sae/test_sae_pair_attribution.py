"""Seed 004's per-example attribution: it sums to the per-task attribution, the pair ablation
hook equals a position-restricted splice edit (also under the KV cache), zeroing supporting /
opposing pairs moves the log-probability the way their sign says, the clustering recovers
planted communities, and the generation metrics score true and corrupted answers (the study
over several SAEs: tests/sae/test_sae_study_cli.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gridlens.analysis.core import quiz_set
from gridlens.models.checkpoints import load
from gridlens.models.generate import complete
from gridlens.sae.attribution import (
    ExampleAttribution,
    ablate_pairs,
    attribute,
    example_attribution,
    pair_ablation_hook,
)
from gridlens.sae.io import load_sae
from gridlens.sae.splice import splice_hooks
from gridlens.sae.steering import generation_metrics


@pytest.fixture(scope="module")
def shipped():
    return load("default"), load_sae("default"), quiz_set(("contact", "frame"), 2, seed=5)


def test_example_attribution_sums_to_the_task_attribution(shipped):
    model, sae, quizzes = shipped
    per_example = example_attribution(model, sae, quizzes, k=3)
    per_task = attribute(model, sae, quizzes, top_k=1)
    for t, task in enumerate(per_task.tasks):
        rows = per_example.by_latent[per_example.tasks == task]
        np.testing.assert_allclose(rows.mean(0), per_task.latent_total[t], rtol=1e-4, atol=1e-5)
    for pairs in per_example.positive:
        values = [a for _, _, a in pairs]
        assert values == sorted(values, reverse=True) and all(a > 0 for a in values)
    assert all(a < 0 for pairs in per_example.negative for _, _, a in pairs)


def test_pair_hook_equals_a_position_restricted_splice(shipped):
    model, sae, quizzes = shipped
    tokens = quizzes.tokens[:1]
    position, latent = 350, int(encode_top(model, sae, tokens, 350))
    scale = torch.ones(sae.cfg.d_sae)
    scale[latent] = 0.0
    edit = splice_hooks(sae, keep_error=True, edit=lambda f: f * scale, positions=[position])
    pair = pair_ablation_hook(sae, [[(position, latent, 1.0)]])
    with torch.no_grad():
        expected = model.run_with_hooks(tokens, fwd_hooks=edit)
        got = model.run_with_hooks(tokens, fwd_hooks=[pair])
        assert not torch.allclose(got, model(tokens))
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        with model.hooks([pair]):
            cached, uncached = complete(model, tokens), complete(model, tokens, use_cache=False)
    assert torch.equal(cached, uncached)


def encode_top(model, sae, tokens, position) -> int:
    """The latent most active at `position`."""
    _, cache = model.run_with_cache(tokens, names=sae.cfg.hook_name)
    return sae.encode(cache[sae.cfg.hook_name][0, position]).argmax()


def test_ablating_each_sign_moves_the_log_probability_its_way(shipped):
    model, sae, quizzes = shipped
    result = example_attribution(model, sae, quizzes, k=3)
    checks = ["contact", "frame"]
    up, _, _ = ablate_pairs(model, sae, quizzes, result.pairs("negative"), checks)
    down, _, _ = ablate_pairs(model, sae, quizzes, result.pairs("positive"), checks)
    assert (down < result.metric).mean() >= 0.75 and (up > result.metric).mean() >= 0.75
    none, _, out = ablate_pairs(model, sae, quizzes, [[] for _ in range(len(quizzes))], checks)
    np.testing.assert_allclose(none, result.metric, rtol=1e-5)
    assert torch.equal(out, complete(model, quizzes.tokens))


def test_expression_clusters_recover_planted_communities():
    """Examples of task a use latents 0-2, examples of task b latents 3-5 (plus noise)."""
    g = np.random.default_rng(0)
    by_latent = g.normal(0, 0.01, (12, 8))
    by_latent[:6, :3] += g.uniform(1, 2, (6, 3))
    by_latent[6:, 3:6] += g.uniform(1, 2, (6, 3))
    tasks = np.array(["a"] * 6 + ["b"] * 6)
    result = ExampleAttribution("s", tasks, np.zeros(12), by_latent, [], [])
    clusters = result.expression(n_latents=6, n_clusters=2)
    assert set(clusters.latents.tolist()) == set(range(6))
    assert clusters.purity() == 1.0
    assert sorted(clusters.composition().values(), key=str) == [{"a": 6}, {"b": 6}]
    assert len(clusters.plot().axes) == 3


def test_generation_metrics_on_true_and_corrupted_answers():
    quizzes = quiz_set(("frame", "grow"), 2, seed=1)
    tokens, tasks = quizzes.tokens, np.asarray(quizzes.tasks)
    truth = generation_metrics(tokens, tokens, tasks, ["frame", "grow"], base=tokens)
    assert truth["accuracy"]["all"] == truth["valid_own"]["all"] == 1.0
    assert truth["valid_none"]["all"] == truth["unseen_colour"]["all"] == 0.0
    assert truth["changed_cells"]["all"] == 0.0
    bad = tokens.clone()
    for i in range(len(bad)):  # a colour the prompt never uses, in 10 cells of the answer
        unused = sorted(set(range(11)) - set(tokens[i, :304].tolist()))[0]
        bad[i, 310:320] = unused
    scored = generation_metrics(bad, tokens, tasks, ["frame", "grow"], base=tokens)
    assert scored["unseen_colour"]["all"] == 1.0 and scored["accuracy"]["all"] == 0.0
    assert scored["changed_cells"]["all"] == pytest.approx(0.1)
    assert scored["valid_own"]["all"] < 1.0
