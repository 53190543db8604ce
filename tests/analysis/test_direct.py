"""Direct paths: a hand-built copying head against a random one, LayerNorm scales measured
independently, the logit lens against the model's own readout, and direct logit attribution
summing to the logit difference and matching last-layer ablations."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gridlens.analysis.core import grid_metrics, per_task, quiz_set
from gridlens.analysis.direct import copy_scores, ln_scales, logit_lens
from gridlens.errors import GridlensError
from gridlens.models import GridGPT, GridGPTConfig
from gridlens.models.checkpoints import load

SCALE = 10.0


def copy_model() -> GridGPT:
    """One layer, two heads, d_model 32 (value size 16). Token v embeds as SCALE * e_v, so the
    tokens dominate the positions; head 0 reads and writes dims 0..15 unchanged and the
    unembedding reads dims 0..14: its OV circuit is (centred) identity. Head 1 is random."""
    cfg = GridGPTConfig(d_model=32, n_layers=1, n_heads=2, d_head=8, d_mlp=16)
    model = GridGPT(cfg, seed=0).eval()
    g = torch.Generator().manual_seed(5)
    eye = torch.eye(32)
    with torch.no_grad():
        model.embed.weight.copy_(SCALE * eye[:15])
        attn = model.blocks[0].attn
        attn.w_v[0] = eye[:16]
        attn.w_v[1] = torch.randn(16, 32, generator=g)
        attn.w_o[:16] = eye[:16]
        attn.w_o[16:] = torch.randn(16, 32, generator=g)
        model.unembed.weight.copy_(eye[:15])
    return model


@pytest.fixture(scope="module")
def quizzes():
    return quiz_set(["frame", "replace_color"], n_per_task=3, seed=1)


def test_copying_head_scores_one_and_random_head_does_not(quizzes):
    model = copy_model()
    result = copy_scores(model, quizzes)
    assert result.heads == ["L0H0", "L0H1"]
    assert result.copy_score[0] == 1.0
    assert result.trace_score[0] > 0.99
    assert result.copy_score[1] < 0.5
    assert result.trace_score[1] < 0.9
    # attending only to the previous grid's copy of the cell, head 0 reproduces it exactly
    assert result.prev_vs_prev["L0H0"]["all"] == 1.0
    assert result.prev_vs_prev["L0H1"]["all"] < 0.9
    tokens = quizzes.tokens
    same = (tokens[:, 304:404] == tokens[:, 203:303]).double().mean(1)
    assert result.baseline == pytest.approx(per_task(same, quizzes.tasks))
    assert result.prev_vs_truth["L0H0"] == pytest.approx(result.baseline)
    # cells where copying the previous grid differs from copying the cell before or above
    grids = tokens.reshape(len(tokens), 4, 101)[:, :, 1:].reshape(len(tokens), 4, 10, 10)
    prev_g, last = grids[:, 2], grids[:, 3]
    before = torch.cat([torch.full_like(last[..., :1], -1), last[..., :-1]], -1)  # row-major
    before[:, 1:, 0] = last[:, :-1, -1]
    above = torch.cat([torch.full_like(last[:, :1], -1), last[:, :-1]], 1)
    distinct = (prev_g != before) & (prev_g != above)
    assert result.distinct_share == pytest.approx(
        per_task(distinct.double().mean((1, 2)), quizzes.tasks)
    )
    json.dumps(result.to_json())


def test_direct_path_uses_measured_layernorm_scale(quizzes):
    model = copy_model()
    inputs = model.model_input(quizzes.tokens)
    x = model.embed(inputs) + model.pos  # the residual LN1 reads
    scale = (x.var(-1, unbiased=False) + model.cfg.ln_eps).sqrt()
    expected = torch.stack([scale[inputs == v].mean() for v in range(15)])
    seen = torch.bincount(inputs.flatten(), minlength=15) > 0  # others: the overall mean
    measured = ln_scales(model, quizzes)[0]
    assert 3 <= int(seen.sum()) < 15
    torch.testing.assert_close(measured.float()[seen], expected.detach()[seen], rtol=1e-5, atol=0)
    torch.testing.assert_close(measured.float()[~seen], scale.mean().expand(int((~seen).sum())))
    # head 0's direct-path matrix is SCALE * (I - 1/32) / scale[v], row by row
    ov = copy_scores(model, quizzes).ov[0]
    analytic = SCALE * (np.eye(15) - 1 / 32) / measured.numpy()[:, None]
    np.testing.assert_allclose(ov, analytic, rtol=1e-5, atol=1e-6)


def lens_model() -> GridGPT:
    cfg = GridGPTConfig(d_model=32, n_layers=2, n_heads=4, d_head=8, d_mlp=64)
    model = GridGPT(cfg, seed=3).eval()
    with torch.no_grad():
        model.embed.weight.mul_(50)  # tokens matter next to the positions
    return model


def logit_difference(logits: torch.Tensor, tokens: torch.Tensor, cells: slice) -> torch.Tensor:
    """[n] correct-token logit minus the mean logit, averaged over the cells in `cells`."""
    chosen = logits[:, cells].double()
    own = chosen.gather(-1, tokens[:, cells, None])[..., 0]
    return (own - chosen.mean(-1)).mean(1)


@pytest.mark.parametrize("cell", [None, 7])
def test_dla_sums_to_the_logit_difference(quizzes, cell):
    model = lens_model()
    tokens = quizzes.tokens
    result = logit_lens(model, quizzes, cell=cell)
    cells = slice(304, 404) if cell is None else slice(304 + cell, 305 + cell)
    with torch.no_grad():
        clean = logit_difference(model(tokens), tokens, cells)
    np.testing.assert_allclose(result.dla_per_quiz.sum(1), clean.numpy(), atol=1e-4)
    assert len(result.components) == 2 + 2 * 4 + 2 + 1
    # no final LN: removing a last-layer component, with the last MLP held at its clean output
    # (so only the direct path changes), removes exactly its direct term
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names="blocks.1.hook_mlp_out")
    mlp = cache["blocks.1.hook_mlp_out"]
    for name, hooks in [
        (
            "L1H2",
            [
                ("blocks.1.attn.hook_z", lambda z, hook: z.index_fill(2, torch.tensor([2]), 0)),
                ("blocks.1.hook_mlp_out", lambda out, hook: mlp),
            ],
        ),
        ("L1.mlp", [("blocks.1.hook_mlp_out", lambda out, hook: torch.zeros_like(out))]),
    ]:
        with torch.no_grad():
            ablated = logit_difference(model.run_with_hooks(tokens, hooks), tokens, cells)
        i = result.components.index(name)
        np.testing.assert_allclose(result.dla_per_quiz[:, i], (clean - ablated).numpy(), atol=1e-4)


def test_logit_lens_matches_the_readout(quizzes):
    model = lens_model()
    tokens = quizzes.tokens
    result = logit_lens(model, quizzes)
    assert result.sites == ["embed", "L0", "L1"]
    target = tokens[:, 304:]
    with torch.no_grad():
        final = model(tokens)[:, 304:]
        first = model.unembed(model.embed(model.model_input(tokens)) + model.pos)[:, 304:]
    for site, logits in (("L1", final), ("embed", first)):
        acc = (logits.argmax(-1) == target).double().mean(1)
        loss = F.cross_entropy(logits.transpose(1, 2), target, reduction="none").mean(1)
        assert result.accuracy[site] == pytest.approx(per_task(acc, quizzes.tasks), abs=1e-6)
        assert result.loss[site] == pytest.approx(per_task(loss, quizzes.tasks), rel=1e-5)


def test_bad_cell(quizzes):
    with pytest.raises(GridlensError, match=r"cell index 0\.\.99"):
        logit_lens(lens_model(), quizzes, cell=100)


def test_default_model_smoke(tmp_path):
    model = load("default")
    quizzes = quiz_set(["frame", "replace_color"], n_per_task=4, seed=0)
    copies = copy_scores(model, quizzes)
    assert copies.copy_score.shape == (16,)
    # the layer-0 copy head: its actual output alone mostly names the previous grid's cell
    assert copies.actual_vs_prev["L0H2"]["all"] > 0.5
    lens = logit_lens(model, quizzes)
    metrics = grid_metrics(model, quizzes.tokens)
    last = per_task(metrics.cell_accuracy, quizzes.tasks)
    assert lens.accuracy["L3"] == pytest.approx(last, abs=1e-6)
    for result, name in ((copies, "ov.png"), (lens, "lens.png")):
        json.dumps(result.to_json())
        assert 1 <= len(result.findings()) <= 4
        result.plot(tmp_path / name)
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
