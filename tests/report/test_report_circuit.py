"""The report's edge-circuit stage on a tiny model: EAP-IG on the task the MLP study picks, its
circuit drawn and its faithfulness curve recomputed here by path patching and plain forwards
(the full report build is tested elsewhere)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from gridlens.analysis.circuits import EdgeGraph, path_patch
from gridlens.models.gpt import GridGPT
from gridlens.report.circuit_stage import circuit_problem, stage_circuit


def answer_logprob(logits: torch.Tensor, answer: torch.Tensor) -> float:
    """Mean over examples of the mean log-probability of the answers at the scored cells."""
    logp = logits.log_softmax(-1)
    per_example = []
    for row in range(len(answer)):
        cells = torch.nonzero(answer[row] >= 0)[:, 0]
        per_example.append(logp[row, cells, answer[row, cells]].mean())
    return float(torch.stack(per_example).mean())


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    # float64: a random model barely tells the clean answer from the corrupted one (a log-prob
    # gap near 1e-3), so faithfulness, a ratio over that gap, needs the precision
    model = GridGPT(d_model=16, n_layers=2, n_heads=2, d_head=8, d_mlp=32, seed=0).eval().double()
    folder = tmp_path_factory.mktemp("report")
    size, study = SimpleNamespace(pairs_per_task=2), SimpleNamespace(task="contact")
    run = SimpleNamespace(model=model, study=study, seed=0, size=size, folder=folder, results={})
    return run, stage_circuit(run)


def test_section_draws_the_circuit_of_the_study_task(stage):
    run, section = stage
    data = run.results["edge_circuit"]
    assert section.title == "Edge circuit" and "contact" in section.findings[0]
    assert data["task"] == "contact" and data["method"] == "eap_ig" and data["n_pairs"] == 2
    for name in ("edge_circuit.png", "edge_faith.png"):
        with Image.open(run.folder / name) as image:
            assert image.format == "PNG" and min(image.size) > 50
    scores = data["scores"]
    assert len(scores) == data["n_edges"] == len(EdgeGraph(run.model.cfg)) == 46
    top = sorted(scores, key=lambda e: -scores[e])[:30]
    assert set(data["circuit"]) == set(top)  # the 30 strongest edges
    assert [p["edges"] for p in data["faithfulness_curve"]] == [5, 10, 20, 46]


def test_faithfulness_recomputed_by_path_patching(stage):
    run, _ = stage
    data = run.results["edge_circuit"]
    problem, kind = circuit_problem("contact", 2, seed=0)
    assert kind == "parameter"
    scores = data["scores"]
    ranked = sorted(scores, key=lambda e: -scores[e])
    graph = EdgeGraph(run.model.cfg)
    with torch.no_grad():
        clean = answer_logprob(run.model(problem.clean), problem.answer)
        corrupt = answer_logprob(run.model(problem.corrupted), problem.answer)
    curve = {p["edges"]: p["faithfulness"] for p in data["faithfulness_curve"]}
    for k in (10, 30):
        assert scores[ranked[k - 1]] > scores[ranked[k]]  # the top k is unambiguous
        outside = [tuple(e.split("->")) for e in ranked[k:]]
        with torch.no_grad():
            logits = path_patch(run.model, graph, problem.clean, problem.corrupted, outside)
        faith = (answer_logprob(logits, problem.answer) - corrupt) / (clean - corrupt)
        assert faith == pytest.approx(curve[k] if k in curve else data["faithfulness"], abs=1e-6)
    assert curve[46] == pytest.approx(1.0, abs=1e-6)
