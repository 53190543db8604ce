"""The CLI paths of the dictionary-learning additions, end to end at toy sizes: `sae train`
with a gated architecture and ghost grads, `sae eval --encoder` and `--k-sweep`, `sae finetune`
and `sae split`."""

from __future__ import annotations

import json

import pytest

from gridlens.cli import main
from gridlens.sae.io import load_sae

QUIZ = ["--tasks", "contact", "--n-per-task", "1"]


def test_cli_gated_ghost_train_then_pursuit_eval(tmp_path):
    out = tmp_path / "gated"
    main(["sae", "train", "--preset", "tiny", "--arch", "gated", "--ghost-grads", "improved",
          "--tokens", "1024", "--batch-size", "512", "--buffer-quizzes", "12", "--out", str(out),
          "--no-progress", "--device", "cpu"])  # fmt: skip
    summary = json.loads((out / "training.json").read_text())
    assert summary["sae"]["architecture"] == "gated"
    assert summary["train"]["ghost_grads"] == "improved"
    assert load_sae(out).cfg.architecture == "gated"
    main(["sae", "eval", "--sae", str(out), *QUIZ, "--no-greedy", "--encoder", "learned,mp",
          "--l0", "4", "--out", str(out)])  # fmt: skip
    report = json.loads((out / "sae_encoders.json").read_text())
    assert report["pursuit_l0"] == 4 and set(report["summary"]) == {"learned", "mp"}
    assert report["summary"]["mp"]["l0"] <= 4


def test_cli_k_sweep_and_bad_encoder(tmp_path, capsys):
    main(["sae", "eval", *QUIZ, "--k-sweep", "4,32", "--out", str(tmp_path)])
    sweep = json.loads((tmp_path / "sae_k_sweep.json").read_text())["sweep"]
    assert sweep["4"]["l0"] <= 4 < sweep["32"]["l0"] <= 32
    assert sweep["4"]["explained_variance"] < sweep["32"]["explained_variance"]
    with pytest.raises(SystemExit) as exit_info:
        main(["sae", "eval", *QUIZ, "--encoder", "omp"])
    assert exit_info.value.code == 2 and "encoder" in capsys.readouterr().err


def test_cli_finetune(tmp_path, capsys):
    args = ["sae", "finetune", "--tasks", "contact", "--steps", "2", "-n", "2", "--held-out", "1"]
    main([*args, "--out", str(tmp_path), "--no-progress"])
    data = json.loads((tmp_path / "finetune.json").read_text())
    assert data["format"] == "gridlens.sae_finetune" and len(data["history"]) == 2
    assert load_sae(tmp_path / "sae").cfg.architecture == "topk"
    assert (tmp_path / "finetune.png").is_file()
    with pytest.raises(SystemExit) as exit_info:  # never overwrites
        main([*args, "--out", str(tmp_path), "--no-progress"])
    assert exit_info.value.code == 2 and "already holds" in capsys.readouterr().err


def test_cli_split(tmp_path):
    main(["sae", "split", "--sizes", "8,16", "--k", "4", "--tokens", "2048", "--batch-size",
          "512", "--train-quizzes", "24", "--tasks", "contact", "--n-per-task", "1",
          "--out", str(tmp_path),
          "--no-progress"])  # fmt: skip
    data = json.loads((tmp_path / "split.json").read_text())
    assert data["sizes"] == [8, 16] and len(data["summary"]) == 1
    for level in data["levels"][1:]:
        assert all(0 <= v["parent"] < 8 for v in level["latents"].values())
    assert load_sae(tmp_path / "sae_16").cfg.d_sae == 16 and (tmp_path / "split.png").is_file()
    family = f"{tmp_path / 'sae_8'},{tmp_path / 'sae_16'}"
    main(["sae", "split", "--saes", family, "--tasks", "contact", "--n-per-task", "1", "--out",
          str(tmp_path / "again"), "--no-progress"])  # fmt: skip
    again = json.loads((tmp_path / "again" / "split.json").read_text())
    assert again["levels"] == data["levels"]


def test_cli_pairs_over_two_saes_and_steering_scan(tmp_path):
    from gridlens.sae.io import DEFAULT_SAE_DIR, save_sae

    copy = save_sae(load_sae("default"), tmp_path / "copy")
    quiz = ["--tasks", "contact", "--n-per-task", "2"]
    main(["sae", "pairs", *quiz, "--saes", f"{DEFAULT_SAE_DIR},{copy}", "--k", "2",
          "--n-latents", "6", "--clusters", "2", "--check-tasks", "contact", "--out",
          str(tmp_path / "pairs")])  # fmt: skip
    data = json.loads((tmp_path / "pairs" / "pairs.json").read_text())
    assert set(data["saes"]) == {"default_sae", "copy"}
    assert data["saes"]["copy"]["ablated"] == data["saes"]["default_sae"]["ablated"]
    logprob = data["saes"]["copy"]["ablated_logprob"]
    assert logprob["positive"] < data["saes"]["copy"]["clean_logprob"] < logprob["negative"]
    assert data["saes"]["copy"]["expression"]["clusters"] and len(data["findings"]) == 2
    assert len(list((tmp_path / "pairs").glob("expression_*.png"))) == 2
    main(["sae", "steer", *quiz, "--latents", "5", "--scales", "0", "--check-tasks", "contact",
          "--site", "blocks.1.hook_resid_post", "--scan", "-2:2:3", "--out",
          str(tmp_path / "steer")])  # fmt: skip
    scan = json.loads((tmp_path / "steer" / "steering_scan.json").read_text())
    assert scan["hook_name"] == "blocks.1.hook_resid_post"
    assert scan["coefficients"] == [-2.0, 0.0, 2.0] and "L3.mlp" in scan["direct"]
    assert scan["direct"]["L0.mlp"][0] == pytest.approx(scan["direct"]["L0.mlp"][2], abs=1e-6)
    assert scan["direct"]["vector"][2] != 0  # a residual site: the vector's own direct term


@pytest.mark.parametrize(
    "args, message",
    [(["--sizes", "64,32"], "increasing"), (["--roots", "a"], "--roots"), (["--saes", "x"], "x")],
)
def test_cli_split_refuses_bad_input_before_work(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["sae", "split", *args, "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "split.json").exists()
