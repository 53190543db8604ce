"""Interpolated patching: alpha = 1 is activation patching, alpha = 0 scores 0, every other
coefficient (inside and outside [0, 1]) equals mixing the activation through a plain hook; the
curve summaries are right on hand-made curves; the CLI writes its JSON and figures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cli_runner import run

from gridlens.analysis.core import predicted_cells
from gridlens.analysis.interpolate import InterpolationResult, interpolated_patching, parse_alphas
from gridlens.analysis.pairs import as_tokens, make_pairs
from gridlens.analysis.patching import (
    activation_patching,
    answer_logprob,
    normalised_scores,
    parse_site,
)
from gridlens.errors import GridlensError
from gridlens.models.checkpoints import load

NAMES = ["L0.attn", "L3.mlp", "L0H1", "L2H2", "L1N5", "L3N7", "L2.resid[f_A.r4]", "L4.resid[f_B]"]


@pytest.fixture(scope="module")
def model():
    return load("default").eval()


@pytest.fixture(scope="module")
def pairs():
    return make_pairs("parameter", tasks="translate,contact", n_per_task=1, seed=3)


@torch.no_grad()
def _mixed_logprob(model, pairs, name: str, alpha: float) -> np.ndarray:
    """The corrupted run with one component's activation mixed through an ordinary hook."""
    clean, corrupted = as_tokens(pairs)
    site = parse_site(name, model.cfg)
    _, cache = model.run_with_cache(clean, names=[site.hook_name])
    c = cache[site.hook_name]

    def hook(act, point):
        out = act.clone()
        where = (
            (slice(None), slice(None), site.index)
            if site.index is not None
            else (slice(None), slice(site.start, site.stop))
            if site.kind == "resid"
            else (Ellipsis,)
        )
        out[where] = (1 - alpha) * act[where] + alpha * c[where]
        return out

    logits = model.run_with_hooks(corrupted, fwd_hooks=[(site.hook_name, hook)])
    cells = predicted_cells(clean)
    return answer_logprob(logits[:, cells], clean[:, cells]).numpy()


def test_anchors_equal_activation_patching(model, pairs):
    r = interpolated_patching(model, pairs, NAMES, alphas=(0.0, 0.5, 1.0), batch_size=8, chunk=1)
    ap = activation_patching(model, pairs, NAMES)
    assert r.components == NAMES and r.scores["all"].shape == (len(NAMES), 3)
    for task in ap.scores:
        np.testing.assert_allclose(r.at(1.0, task), ap.scores[task], atol=1e-5)
        np.testing.assert_array_equal(r.at(0.0, task), 0.0)
    assert r.clean_logprob == pytest.approx(ap.clean_logprob)


def test_curves_equal_hook_mixing(model, pairs):
    alphas = (-0.5, 0.0, 0.3, 1.0, 1.5)
    names = ["L1.mlp", "L1H3", "L2N11", "L1.resid[f_A]"]
    r = interpolated_patching(model, pairs, names, alphas=alphas)
    m_x = _mixed_logprob(model, pairs, names[0], 0.0)
    m_c = _mixed_logprob(model, pairs, "L0.resid[f_A]", 1.0)  # whole prompt grid: clean run
    for name in names:
        patched = np.stack([_mixed_logprob(model, pairs, name, a) for a in alphas])
        want = normalised_scores(patched, m_c, m_x, pairs.tasks)
        for task, curve in want.items():
            np.testing.assert_allclose(r.curve(name, task), curve, atol=2e-4)
    assert np.abs(r.scores["all"][:, [0, 2, 4]]).max() > 1e-3  # the curves are not trivial


def _made(curves) -> InterpolationResult:
    scores = np.array(curves, dtype=float)
    return InterpolationResult(
        "parameter",
        [f"c{i}" for i in range(len(scores))],
        np.linspace(0, 1, 11),
        {"all": scores},
        {"all": 0.0},
        {"all": -5.0},
        {"all": 4},
        0.1,
    )


def test_midpoint_and_nonlinearity_on_known_curves():
    a = np.linspace(0, 1, 11)
    step = (a >= 0.75).astype(float)  # threshold between 0.7 and 0.8
    r = _made([0.8 * a, step, -np.sqrt(a), np.zeros_like(a)])
    mid, nonlin = r.midpoints(), r.nonlinearity()
    assert mid[0] == pytest.approx(0.5) and nonlin[0] == pytest.approx(0.0, abs=1e-12)
    assert mid[1] == pytest.approx(0.75) and nonlin[1] == pytest.approx(0.7)
    assert mid[2] == pytest.approx(0.2 + 0.1 * (0.5 - np.sqrt(0.2)) / (np.sqrt(0.3) - np.sqrt(0.2)))
    assert 0 < nonlin[2] < 0.3 and np.isnan(mid[3]) and np.isnan(nonlin[3])
    assert r.top(2) == ["c1", "c2"]
    assert "1 threshold-like" in r.findings()[-1]


def test_outputs_and_errors(model, pairs, tmp_path):
    r = interpolated_patching(model, pairs, "layers", alphas=parse_alphas("-0.5:1.5:5"))
    assert r.alphas.tolist() == [-0.5, 0.0, 0.5, 1.0, 1.5]
    data = json.loads(json.dumps(r.to_json()))
    assert data["format"] == "gridlens-interpolated-patching" and len(data["top"]) == 8
    assert set(data["scores"]) == {"translate", "contact", "all"}
    fig = r.plot(tmp_path / "curves.png", top=3)
    assert len(fig.axes[0].lines) == 3 + 4 + 1
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    for bad in ("0.5,1", "0,1,0.5", "a,b", "0:1:x"):
        with pytest.raises(GridlensError, match="alphas"):
            parse_alphas(bad)
    with pytest.raises(GridlensError, match="did you mean"):
        interpolated_patching(model, pairs, ["L0H9x"])


def test_cli(capsys, tmp_path):
    args = ["--tasks", "translate", "-n", "1", "--components", "L1H3,L2.mlp", "--alphas", "0,1"]
    code, out, err = run(capsys, "analyze", "interpolate", *args, "--out", str(tmp_path))
    assert code == 0, err
    data = json.loads((tmp_path / "interpolate_parameter.json").read_text())
    curves = data["interpolated_patching"]
    assert curves["components"] == ["L1H3", "L2.mlp"] and curves["alphas"] == [0.0, 1.0]
    assert (tmp_path / "interpolate_parameter_translate.png").is_file()
    assert "Interpolated patching" in out
    code, _, err = run(
        capsys, "analyze", "interpolate", "--alphas", "0.2,1", "--out", str(tmp_path)
    )
    assert code == 2 and "include 0 and 1" in err
