"""`gridlens analyze ...` and `gridlens report`: each subcommand writes its PNGs and a JSON of
the numbers and prints its findings; bad input is one line on stderr, exit 2, nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from by_hand import head_patched
from cli_runner import run
from PIL import Image
from scipy.stats import spearmanr

from gridlens.analysis.ablation import ablate
from gridlens.analysis.core import grid_loss, quiz_set
from gridlens.analysis.pairs import as_tokens
from gridlens.analysis.patching import make_pairs
from gridlens.models.checkpoints import load


def test_help_lists_the_subcommands(capsys):
    code, out, _ = run(capsys, "analyze", "--help")
    assert code == 0
    for name in ("ablate", "attention", "direct", "patch", "atp", "generate", "probe"):
        assert name in out
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "report" in out and "analyze" in out


def test_ablate_writes_json_png_and_findings(capsys, tmp_path):
    args = ["--tasks", "frame", "-n", "2", "--components", "L0H1,L2.mlp", "--method", "zero"]
    code, out, err = run(capsys, "analyze", "ablate", *args, "--out", str(tmp_path))
    assert code == 0, err
    data = json.loads((tmp_path / "ablate_zero.json").read_text())["ablation"]
    assert data["components"] == ["L0H1", "L2.mlp"] and data["method"] == "zero"
    assert Image.open(tmp_path / "ablate_zero.png").format == "PNG"
    assert "Zero-ablating" in out and f"wrote {tmp_path / 'ablate_zero.json'}" in out
    # the JSON's clean loss is the model's own grid loss on the same quizzes
    model = load("default")
    quizzes = quiz_set("frame", 2, seed=0)
    with torch.no_grad():
        clean = float(grid_loss(model(quizzes.tokens), quizzes.tokens).mean())
    assert data["clean"]["loss"]["all"] == pytest.approx(clean, rel=1e-4)
    direct = ablate(model, quizzes, ["L0H1"], method="zero")
    ratio = direct.effect("loss_ratio")["L0H1"]["all"]
    assert data["effects"]["L0H1"]["loss_ratio"]["all"] == pytest.approx(ratio, rel=1e-4)


def test_attention_and_direct(capsys, tmp_path):
    args = ["--tasks", "frame", "-n", "1", "--out", str(tmp_path)]
    code, _, err = run(capsys, "analyze", "attention", *args, "--head", "L0H1")
    assert code == 0, err
    assert (tmp_path / "attention.png").is_file() and (tmp_path / "pattern_L0H1.png").is_file()
    heads = json.loads((tmp_path / "attention.json").read_text())["heads"]["heads"]
    assert len(heads) == 16
    for head in heads.values():  # attention mass by category sums to 1 per head
        assert sum(head["mass_predicted_grid"].values()) == pytest.approx(1.0, abs=1e-4)
    code, _, err = run(capsys, "analyze", "direct", *args)
    assert code == 0, err
    data = json.loads((tmp_path / "direct.json").read_text())
    assert {"copy_scores", "logit_lens"} <= set(data)
    assert (tmp_path / "copy_scores.png").is_file() and (tmp_path / "logit_lens.png").is_file()


def test_atp_with_compare_agrees_with_patch(capsys, tmp_path):
    args = ["--tasks", "frame", "-n", "2", "--kind", "parameter", "--out", str(tmp_path)]
    code, _, err = run(capsys, "analyze", "patch", *args)
    assert code == 0, err
    patch = json.loads((tmp_path / "patch_parameter.json").read_text())["activation_patching"]
    # one head's score, by hand on the same pairs
    model = load("default")
    clean, corrupted = as_tokens(make_pairs("parameter", ["frame"], 2, 0))
    head = patch["components"].index("L1H3")
    by_hand = head_patched(model, clean, corrupted, 1, 3)
    assert patch["scores"]["all"][head] == pytest.approx(by_hand, rel=1e-3, abs=1e-5)
    code, out, err = run(capsys, "analyze", "atp", *args, "--method", "atp*", "--compare")
    assert code == 0, err
    data = json.loads((tmp_path / "atpstar_parameter.json").read_text())
    np.testing.assert_allclose(
        data["activation_patching"]["scores"]["all"], patch["scores"]["all"], rtol=1e-5
    )
    # the agreement, recomputed from the two files' scores with scipy
    exact = np.array(patch["scores"]["all"], float)
    estimate = np.array(data["atp*"]["scores"]["all"], float)
    assert data["atp*"]["components"] == patch["components"]
    agreement = data["agreement"]
    assert agreement["a"] == "activation" and agreement["b"] == "atp*"
    assert agreement["spearman"] == pytest.approx(spearmanr(exact, estimate).statistic)
    k = agreement["k"]
    top = [set(np.argsort(-np.abs(v), kind="stable")[:k]) for v in (exact, estimate)]
    assert agreement["top_k_recall"] == len(top[0] & top[1]) / k
    assert "agreement with activation patching" in out
    assert (tmp_path / "atpstar_parameter.png").is_file()


def test_generate_and_probe(capsys, tmp_path):
    args = ["--tasks", "frame", "-n", "2", "--out", str(tmp_path)]
    code, _, err = run(
        capsys, "analyze", "generate", *args, "--ablate", "L0.attn", "--method", "zero"
    )
    assert code == 0, err
    data = json.loads((tmp_path / "generate.json").read_text())
    assert data["ablated"] == "L0.attn" and (tmp_path / "generate.png").is_file()
    code, _, err = run(capsys, "analyze", "probe", *args, "--annotation", "changes")
    assert code == 0, err
    assert (tmp_path / "probe_changes.json").is_file() and (
        tmp_path / "probe_changes.png"
    ).is_file()


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["ablate", "--components", "L0.atn"], ["unknown component 'L0.atn'", "L0.attn"]),
        (["ablate", "--components", "L0H7"], ["head 7 >= n_heads 4"]),
        (["ablate", "--components", " , "], ["no component"]),
        (["ablate", "--method", "half"], ["half"]),
        (["ablate", "--tasks", "fram"], ["unknown task 'fram'", "frame"]),
        (["ablate", "--tasks", ","], ["selects no task"]),
        (["ablate", "-n", "0"], ["--n-per-task must be >= 1"]),
        (["attention", "--head", "L0.mlp"], ["expected a head"]),
        (["attention", "--head", "L5H0"], ["layer 5 >= n_layers 4"]),
        (["patch", "--components", "L0H1,L9.mlp"], ["layer 9"]),
        (["patch", "--kind", "shape"], ["shape"]),
        (["patch", "--tasks", "corners"], ["corners"]),
        (["atp", "--components", "L1Q2"], ["unknown component 'L1Q2'"]),
        (["generate", "--ablate", "L1.mpl"], ["unknown component 'L1.mpl'"]),
        (["probe", "--annotation", "chnages"], ["chnages", "changes"]),
        (["probe", "--sites", "blocks.0.hook_resid_prev"], ["hook_resid_prev"]),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(capsys, tmp_path, args, needles):
    out_dir = tmp_path / "out"
    size = [] if "-n" in args else ["-n", "1"]
    code, out, err = run(capsys, "analyze", *args, *size, "--out", str(out_dir))
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gridlens: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_report_command_bad_input(capsys, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("keep")
    code, _, err = run(capsys, "report", "--out", str(mine), "--tasks", "frame", "--size", "tiny")
    assert code == 2 and "not a gridlens report" in err and len(err.strip().splitlines()) == 1
    assert [p.name for p in mine.iterdir()] == ["thesis.tex"]
    code, _, err = run(capsys, "report", "--size", "huge", "--out", str(tmp_path / "r"))
    assert code == 2 and "huge" in err
    code, _, err = run(capsys, "report", "--tasks", "", "--out", str(tmp_path / "r"))
    assert code == 2 and "selects no task" in err
    assert not (tmp_path / "r").exists()
