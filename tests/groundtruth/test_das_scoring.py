"""DAS in ground-truth scoring: on the shipped parenthesis model, the subspace DAS learns for
a variable beats the class-mean subspace of the same dimension on held-out interchanges;
score_mlp and `groundtruth eval` offer it next to (or instead of) the class means."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cli_runner import run

from gridlens.errors import GridlensError
from gridlens.groundtruth import iit
from gridlens.groundtruth.iit import load_run
from gridlens.groundtruth.scoring import (
    _subspace_swap,
    patched_iia,
    score_mlp,
    variable_subspaces,
)
from gridlens.groundtruth.shipped import resolve_run
from gridlens.groundtruth.spec import single_benchmark

TINY = {"d_model": 16, "n_layers": 2, "n_heads": 4, "d_head": 4, "d_mlp": 16}


def test_das_beats_class_means_on_the_shipped_model():
    model, bench, _ = load_run(resolve_run("parenthesis")[0])
    rng = np.random.default_rng(0)
    fit, _ = bench.generate(100, rng)
    test, _ = bench.generate(200, rng)
    var = "parenthesis.below"
    refs = variable_subspaces(model, bench, 0, fit, "both", das_steps=60, seed=0)[var]
    q_means, q_das = refs["class_means"][0], refs["das"][0]
    assert q_das.shape == q_means.shape == (bench.config.d_mlp, 1)
    torch.testing.assert_close(q_das.t() @ q_das, torch.eye(1))
    swaps = {"class_means": _subspace_swap(q_means), "das": _subspace_swap(q_das)}
    iia = patched_iia(model, bench, test, 0, var, {**swaps, "none": lambda a, s: a})
    assert iia["das"] > 0.99 and iia["das"] > iia["class_means"] + 0.01 > iia["none"]


def test_score_mlp_subspace_option():
    torch.manual_seed(0)
    bench = single_benchmark("parenthesis", n_ctx=9, **TINY)
    model = iit.make_model(bench, seed=0).eval()
    x, _ = bench.generate(16, np.random.default_rng(0))
    x2, _ = bench.generate(16, np.random.default_rng(1))
    args = dict(n_latents=8, k=2, sae_steps=5, das_steps=3)
    default = score_mlp(model, bench, 0, x, x2, **args)
    both = score_mlp(model, bench, 0, x, x2, subspace="both", **args)
    das = score_mlp(model, bench, 0, x, x2, subspace="das", **args)
    assert "das" not in default["methods"] and "class_means" not in das["methods"]
    assert both["methods"]["class_means"]["iia"] == default["methods"]["class_means"]["iia"]
    assert both["methods"]["das"]["iia"] == das["methods"]["das"]["iia"]
    assert both["methods"]["das"]["dims"] == {"parenthesis.below": 1}
    assert both["methods"]["das"]["seconds"]["parenthesis.below"] > 0
    wider = score_mlp(model, bench, 0, x, x2, subspace="das", das_dims=3, **args)
    assert wider["methods"]["das"]["dims"] == {"parenthesis.below": 3}
    with pytest.raises(GridlensError, match="subspace"):
        score_mlp(model, bench, 0, x, x2, subspace="pca", **args)


def _neuron_best_f1(rows: list[dict]) -> list[float]:
    """Per reported value of `eval --run parenthesis --n-per-task 40` (seed 1), the best F1 of
    any MLP-0 neuron as a detector of it on the command's test inputs, counted by hand: a
    neuron detects the value where it is positive, on the positions that have a label."""
    model, bench, _ = load_run(resolve_run("parenthesis")[0])
    rng = np.random.default_rng(1)
    bench.generate(20, rng)  # the inputs the SAEs are fitted on
    test, _ = bench.generate(20, rng)
    seen = []
    with torch.no_grad(), model.hooks([("blocks.0.mlp.hook_post", lambda a, h: seen.append(a))]):
        model(test)
    values = bench.run_high_level(test)
    labelled = values["output"] >= 0
    fires = (seen[0][labelled] > 0).numpy()  # [rows, neurons]
    best = []
    for row in rows:
        truth = (values[row["variable"]][labelled] == row["value"]).numpy()[:, None]
        tp = (fires & truth).sum(0)
        f1 = 2 * tp / np.maximum(fires.sum(0) + truth.sum(), 1)
        best.append(float(f1.max()))
    return best


def test_eval_cli_scores_das(capsys, tmp_path):
    out = tmp_path / "ev"
    args = ["--run", "parenthesis", "--out", str(out), "--n-per-task", "40", "--sae-steps", "5"]
    code, stdout, err = run(
        capsys, "groundtruth", "eval", *args, "--subspace", "both", "--das-steps", "5"
    )
    assert code == 0, err
    report = json.loads((out / "eval.json").read_text())
    methods = report["sae"]["L0"]["methods"]
    assert set(methods["das"]["iia"]) == {"parenthesis.below"} and "class_means" in methods
    assert "parenthesis.below: subspace IIA class_means" in stdout and " das " in stdout
    neurons = methods["neurons"]["per_value"]
    assert [row["best_f1"] for row in neurons] == pytest.approx(_neuron_best_f1(neurons))
    code, _, err = run(capsys, "groundtruth", "eval", *args, "--das-steps", "0")
    assert code == 2 and "--das-steps" in err
    fresh = tmp_path / "never"
    bad = ["--run", "parenthesis", "--out", str(fresh), "--das-dims", "129"]
    code, _, err = run(capsys, "groundtruth", "eval", *bad)
    assert code == 2 and "width 128" in err and not fresh.exists()
