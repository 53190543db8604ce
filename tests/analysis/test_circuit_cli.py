"""`gridlens analyze circuit`: one culture task's edge circuit, its JSON, drawing and errors."""

import json

import torch
from cli_runner import run
from PIL import Image

from gridlens.analysis.circuits import EdgeGraph, path_patch
from gridlens.analysis.circuits.culture import culture_problem
from gridlens.models.checkpoints import load


def _logprob(logits, problem):
    valid = problem.answer >= 0
    lp = logits.log_softmax(-1).gather(-1, problem.answer.clamp(min=0)[..., None])[..., 0]
    return float(((lp * valid).sum(1) / valid.sum(1)).mean())


def test_circuit_writes_the_kept_edges_and_their_faithfulness(capsys, tmp_path):
    args = ["--task", "contact", "--method", "eap", "-n", "2", "--edges", "12"]
    code, out, err = run(capsys, "analyze", "circuit", *args, "--out", str(tmp_path))
    assert code == 0, err
    data = json.loads((tmp_path / "circuit_contact_eap.json").read_text())["circuit"]
    assert len(data["circuit"]) == 12 and data["n_edges"] == 479
    assert Image.open(tmp_path / "circuit_contact_eap.png").format == "PNG"
    assert "12 of 479 edges" in out
    # faithfulness again, independently: path-patch every edge outside the circuit
    model = load("default").eval()
    problem = culture_problem("contact", 2, 0)
    graph = EdgeGraph(model.cfg)
    outside = [e for e in graph.edges if e.name not in set(data["circuit"])]
    with torch.no_grad():
        kept = _logprob(
            path_patch(model, graph, problem.clean, problem.corrupted, outside), problem
        )
        clean = _logprob(model(problem.clean), problem)
        corrupt = _logprob(model(problem.corrupted), problem)
    assert abs(data["faithfulness"] - (kept - corrupt) / (clean - corrupt)) < 1e-3


def test_bad_circuit_options_are_one_line_errors(capsys, tmp_path):
    code, _, err = run(capsys, "analyze", "circuit", "--task", "contcat", "--out", str(tmp_path))
    assert code == 2 and "contact" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "analyze", "circuit", "--threshold", "-1", "--out", str(tmp_path))
    assert code == 2 and "--threshold" in err
    assert not any(tmp_path.iterdir())
