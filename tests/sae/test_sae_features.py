"""Latent activations, top examples, histograms, promoted logits and the expression matrix,
checked against dense computations done here directly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from sae_feature_helpers import HOOK, random_sae

from gridlens.analysis.core import quiz_set
from gridlens.models.checkpoints import load
from gridlens.sae.features import (
    ExpressionMatrix,
    expression_matrix,
    latent_activations,
    plot_histogram,
    promoted_logits,
    render_examples,
)
from gridlens.world.render import HIGHLIGHT_RGB, image_layout


@pytest.fixture(scope="module")
def setup():
    model = load("default")
    sae = random_sae(model)
    quizzes = quiz_set(("frame", "contact", "translate"), 3, seed=5)
    acts = latent_activations(model, sae, quizzes, positions="grid", batch_size=4)
    return model, sae, quizzes, acts


def dense_latents(model, sae, quizzes) -> np.ndarray:
    """[n, 100, d_sae] latents on the predicted grid, straight from the cache."""
    with torch.no_grad():
        _, cache = model.run_with_cache(quizzes.tokens, names=HOOK)
        return sae.encode(cache[HOOK][:, -100:]).numpy()


def test_activations_match_dense_encoding(setup):
    model, sae, quizzes, acts = setup
    dense = dense_latents(model, sae, quizzes)
    assert acts.positions.tolist() == list(range(304, 404))
    assert len(acts.rows) == int((dense > 0).sum())
    for j in (0, 7, 63):
        np.testing.assert_allclose(acts.dense(j), dense[:, :, j], rtol=1e-5, atol=1e-6)


def test_top_examples_are_each_quiz_maximum(setup):
    model, sae, quizzes, acts = setup
    dense = dense_latents(model, sae, quizzes)
    j = int(np.argmax((dense > 0).sum((0, 1))))
    examples = acts.top_examples(j, 4)
    values = [e.value for e in examples]
    assert values == sorted(values, reverse=True)
    assert len({e.quiz for e in examples}) == len(examples)
    per_quiz_max = np.sort(dense[:, :, j].max(1))[::-1][:4]
    np.testing.assert_allclose(values, per_quiz_max, rtol=1e-5)
    for e in examples:
        assert dense[e.quiz, e.position - 304, j] == pytest.approx(e.value, rel=1e-5)


def test_expression_rows_sum_to_one_and_match_definition(setup):
    model, sae, quizzes, acts = setup
    dense = dense_latents(model, sae, quizzes)
    m = expression_matrix(acts)
    tasks = np.asarray(quizzes.tasks)
    for t, name in enumerate(m.tasks):
        rows = dense[tasks == name]
        np.testing.assert_allclose(m.firing[:, t], (rows > 0).mean((0, 1)), atol=1e-9)
        np.testing.assert_allclose(m.mean[:, t], rows.mean((0, 1)), rtol=1e-4, atol=1e-7)
    fires = (dense > 0).any((0, 1))
    np.testing.assert_allclose(m.share.sum(1)[fires], 1.0, rtol=1e-9)
    assert (m.share.sum(1)[~fires] == 0).all()
    shown = m.order.tolist()
    assert shown == sorted(shown, key=lambda j: (m.preferred[j], -m.specificity[j]))


def test_specific_latents_rank_by_share_as_the_findings_do():
    """A rare latent with 90% of its activation on task b outranks a frequent one with 40%:
    both the ranking and the findings' "most task-specific" line go by share, not firing."""
    share = np.array([[0.6, 0.4], [0.1, 0.9], [0.6, 0.4], [0.7, 0.3], [0.45, 0.55]])
    firing = np.array([[0.2, 0.15], [0.0, 0.02], [0.005, 0.3], [0.5, 0.2], [0.3, 0.3]])
    m = ExpressionMatrix(["a", "b"], firing, share, share, np.arange(5))
    by_hand = {
        t: sorted(
            (j for j in range(5) if share[j].argmax() == k and firing[j, k] >= 0.01),
            key=lambda j: -share[j].max(),
        )
        for k, t in enumerate("ab")
    }
    assert by_hand == {"a": [3, 0], "b": [1, 4]}  # latent 2 fires too rarely on a
    assert {t: m.specific_latents(t) for t in "ab"} == by_hand
    line = m.findings()[1]
    assert line.startswith("Most task-specific: latent 1 puts 90% of its activation on b (")


def test_promoted_logits_are_the_last_layer_direct_effect(setup):
    """At the last MLP's output nothing follows but the unembedding (no final LayerNorm), so
    adding W_dec[j] there changes every logit by exactly the promoted-logit row (+ a constant)."""
    model, sae, quizzes, _ = setup
    effects = promoted_logits(model, sae).effects
    tokens = quizzes.tokens[:1]
    j = 5
    add = (HOOK, lambda x, hook: x + sae.W_dec[j].detach())
    with torch.no_grad():
        change = model.run_with_hooks(tokens, fwd_hooks=[add]) - model(tokens)
    change = change - change.mean(-1, keepdim=True)
    np.testing.assert_allclose(change[0, 350].numpy(), effects[j], atol=1e-4)
    top = promoted_logits(model, sae).top(j, 1)[0]
    assert top[1] == pytest.approx(effects[j].max(), rel=1e-6)


def test_rendered_examples_outline_the_firing_cell(setup, tmp_path):
    acts = setup[3]
    j = int(np.argmax(np.diff(acts.offsets)))
    examples = acts.top_examples(j, 3)
    path = render_examples(acts, j, tmp_path / "ex.png", n=3, cell=10)
    image = np.asarray(Image.open(path).convert("RGB"))
    layout = image_layout(3, 10, 10, cell=10, columns=1)
    for i, e in enumerate(examples):
        slot, offset = divmod(e.position, 101)
        x0, y0, x1, y1 = layout.cell_box(i, slot, (offset - 1) // 10, (offset - 1) % 10)
        box = image[y0 : y1 + 1, x0 : x1 + 1]
        assert (box == HIGHLIGHT_RGB).all(-1).any()
    plot_histogram(acts, j, tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 0


def test_features_command_writes_json_and_png(setup, tmp_path):
    from gridlens.sae.feature_commands import features
    from gridlens.sae.io import save_sae

    _, sae, _, _ = setup
    save_sae(sae, tmp_path / "sae")
    out = tmp_path / "out"
    args = [
        "--sae",
        str(tmp_path / "sae"),
        "--tasks",
        "frame,contact",
        "--n-per-task",
        "2",
        "--out",
        str(out),
        "--latents",
        "1,2",
    ]
    result = CliRunner().invoke(features, args)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "features.json").read_text())
    assert set(data["latents"]) == {"1", "2"}
    assert (out / "expression.png").exists() and (out / "labels.json").exists()
