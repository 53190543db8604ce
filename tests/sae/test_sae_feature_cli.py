"""`gridlens sae attribute / steer / dashboard` with the shipped SAE, end to end through the
entry point; the numbers they write are checked against plain hooks and forwards (by_hand)."""

from __future__ import annotations

import json
import re

import by_hand
import pytest
from cli_runner import run

from gridlens.analysis.core import quiz_set
from gridlens.models.checkpoints import load
from gridlens.sae.io import load_sae

QUIZZES = ["--tasks", "frame,contact", "--n-per-task", "1"]


@pytest.fixture(scope="module")
def shipped():
    model, sae = load("default"), load_sae("default")
    return model, sae, quiz_set(("frame", "contact"), 1, seed=0).tokens


def _on_grid(hook_name: str, change):
    """A hook applying change(x) to the predicted grid's positions (full forwards only)."""

    def hook(act, hook):
        act = act.clone()
        act[:, -by_hand.CELLS :] = change(act[:, -by_hand.CELLS :])
        return act

    return hook_name, hook


def test_attribute_writes_the_clean_metric_and_a_causal_ablation(capsys, tmp_path, shipped):
    model, sae, tokens = shipped
    args = [*QUIZZES, "--top-k", "1", "--out", str(tmp_path)]
    code, out, err = run(capsys, "sae", "attribute", *args)
    assert code == 0, err
    assert f"{tmp_path / 'attribution.json'}" in out and (tmp_path / "attribution.png").is_file()
    data = json.loads((tmp_path / "attribution.json").read_text())
    logprob = -by_hand.grid_losses(model, tokens) * by_hand.CELLS  # summed over the cells
    metric = data["attribution"]["clean_metric"]
    assert [metric["frame"], metric["contact"]] == pytest.approx(logprob.tolist(), rel=1e-4)
    # zeroing frame's top latent, the error kept: x minus that latent's decoder contribution
    latent = data["attribution"]["top_latents"]["frame"][0][0]
    edited = data["causal"]["frame"]["ablate"]
    assert edited["latents"] == [latent]

    def remove(x):
        return x - sae.encode(x)[..., latent, None] * sae.W_dec[latent]

    loss = by_hand.grid_losses(model, tokens[:1], [_on_grid(sae.cfg.hook_name, remove)])
    assert edited["edited"]["loss"]["frame"] == pytest.approx(float(loss[0]), rel=1e-4)
    assert edited["edited"]["loss"]["frame"] > 2 * edited["baseline"]["loss"]["frame"]


def test_steer_generates_with_the_decoder_row_added(capsys, tmp_path, shipped):
    """Latent 228 at scale 8 on the grid: contact's answer goes wrong, frame's stays right."""
    model, sae, tokens = shipped
    args = [*QUIZZES, "--latents", "228", "--scales", "0,8", "--check-tasks", "frame"]
    code, _, err = run(capsys, "sae", "steer", *args, "--out", str(tmp_path))
    assert code == 0, err
    data = json.loads((tmp_path / "steering.json").read_text())
    assert (tmp_path / "steering.png").is_file() and data["scales"] == [0.0, 8.0]
    for scale, correct in zip(data["scales"], data["correct"], strict=True):
        push = _on_grid(sae.cfg.hook_name, lambda x, s=scale: x + s * sae.W_dec[228].detach())
        grids = by_hand.greedy_grids(model, tokens, [push])
        right = (grids == tokens[:, -by_hand.CELLS :]).all(1).float()
        assert [correct["frame"], correct["contact"]] == right.tolist()
    assert data["correct"][0]["all"] != data["correct"][1]["all"]


def test_dashboard_has_a_page_for_each_latent_asked(capsys, tmp_path):
    args = ["--tasks", "frame", "--n-per-task", "1", "--latents", "3,7", "--n-examples", "2"]
    code, _, err = run(capsys, "sae", "dashboard", *args, "--out", str(tmp_path / "d"))
    assert code == 0, err
    index = (tmp_path / "d" / "index.html").read_text()
    pages = sorted(set(re.findall(r'href="(latent_\d+\.html)"', index)))
    assert pages == ["latent_00003.html", "latent_00007.html"]
    assert all((tmp_path / "d" / page).is_file() for page in pages)
    assert json.loads((tmp_path / "d" / "dashboard.json").read_text())["latents"] == [3, 7]
