"""Steering: scale 0 is the clean model, the hook acts at every generated position under the
KV cache, and the rule check recognises true answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sae_feature_helpers import HOOK, random_sae

from gridlens.analysis.core import quiz_set
from gridlens.models.checkpoints import load
from gridlens.models.generate import complete
from gridlens.sae.steering import decoder_direction, rule_validity, steer
from gridlens.world.tasks import TASKS


@pytest.fixture(scope="module")
def setup():
    model = load("default")
    return model, quiz_set(("frame", "contact", "grow"), 2, seed=7)


def test_scale_zero_reproduces_clean_outputs(setup):
    model, quizzes = setup
    sae = random_sae(model, d_sae=16)
    result = steer(
        model,
        quizzes,
        decoder_direction(sae, [3, 4]),
        HOOK,
        scales=(0.0,),
        check_tasks=("frame", "contact", "grow"),
        keep_outputs=True,
    )
    clean = complete(model, quizzes.tokens)
    assert torch.equal(result.outputs[0.0], clean)
    right = (clean == quizzes.tokens).all(1).float().mean()
    assert result.correct[0]["all"] == pytest.approx(float(right))


def test_true_answers_follow_their_own_rule_only():
    quizzes = quiz_set(("frame", "contact", "grow", "translate"), 5, seed=8)
    valid = rule_validity(quizzes.tokens, TASKS)
    tasks = np.asarray(quizzes.tasks)
    for t in quizzes.task_names():
        assert valid[t][tasks == t].all()
    assert valid["frame"][tasks == "contact"].sum() == 0


def test_a_huge_colour_direction_paints_every_generated_cell(setup):
    """Adding a large multiple of (unembedding row of blue - mean row) at the last MLP's output
    on the predicted grid makes every generated cell blue: the hook reaches every position the
    KV-cached generation decodes; restricted to the first row, only that row is forced (the
    last layer's output at p feeds nothing but the logits at p)."""
    model, quizzes = setup
    blue = 3
    w = model.unembed.weight.detach()
    direction = (w[blue] - w.mean(0)) / (w[blue] - w.mean(0)).norm()
    result = steer(
        model, quizzes, direction, HOOK, scales=(0.0, 500.0), check_tasks=TASKS, keep_outputs=True
    )
    out = result.outputs[500.0]
    assert (out[:, 304:] == blue).all()
    first_row = np.zeros(404, dtype=bool)
    first_row[304:314] = True
    row_only = steer(
        model,
        quizzes,
        direction,
        HOOK,
        scales=(500.0,),
        positions=first_row,
        check_tasks=("frame",),
        keep_outputs=True,
    ).outputs[500.0]
    assert (row_only[:, 304:314] == blue).all()
    assert (row_only[:, 314:] != blue).any()
    assert result.none[1]["all"] == 1.0
    assert result.original[1]["all"] == 0.0
    assert result.reference["original"]["all"] == 1.0


def test_component_scan_known_answers(setup):
    """Coefficient 0 is the plain logit lens; a vector added to the last residual moves the
    correct - mean logit exactly linearly, all of it in the `vector` term; steering a layer-1
    site leaves every layer-0 component's attribution unchanged."""
    from gridlens.analysis.direct import logit_lens
    from gridlens.sae.steering import component_scan

    model, quizzes = setup
    quizzes = quizzes.subset(np.arange(2))
    d = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    scan = component_scan(model, quizzes, d, last, [0.0, 1.0, 3.0])
    plain = logit_lens(model, quizzes)
    np.testing.assert_allclose(
        scan.direct[0, :-1], [plain.dla[c]["all"] for c in plain.components], rtol=1e-6
    )
    cells = slice(304, 404)
    w_u = model.unembed.weight.detach().double()
    per_cell = (w_u[quizzes.tokens[:, cells]] - w_u.mean(0)) @ d.double()
    slope = float(per_cell.mean())
    np.testing.assert_allclose(scan.logit_diff - scan.logit_diff[0], [0, slope, 3 * slope],
                               rtol=1e-4, atol=1e-4)  # fmt: skip
    np.testing.assert_allclose(scan.direct[:, -1], [0, slope, 3 * slope], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(scan.direct[:, :-1], scan.direct[[0, 0, 0], :-1], atol=1e-4)
    mid = component_scan(model, quizzes, d, "blocks.1.hook_mlp_out", [-4.0, 0.0, 4.0])
    layer0 = [
        i for i, c in enumerate(mid.components) if c in ("embed", "pos") or c.startswith("L0")
    ]
    np.testing.assert_allclose(mid.direct[:, layer0], mid.direct[[1, 1, 1]][:, layer0], atol=1e-6)
    assert set(mid.movers(3)) & {"L1.mlp", "L2.mlp", "L3.mlp"}
    assert mid.clusters()["embed"] == 0 and mid.to_json()["format"] == "gridlens.steering_scan"
    assert len(mid.plot().axes) == 2
