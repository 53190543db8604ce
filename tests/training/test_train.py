"""Training runs: outputs, exact resume, checkpoints under bad conditions, populations, the CLI."""

from __future__ import annotations

import json
import os

import pytest
import torch

from gridlens.cli import main
from gridlens.errors import CheckpointError, ConfigError
from gridlens.models import load
from gridlens.training import checkpoint as ckpt
from gridlens.training.population import train_population
from gridlens.training.trainer import lr_at, read_log, train
from tests.training.conftest import tiny_config


def silent(*_args, **_kw):
    pass


def weights(path):
    return load(path).state_dict()


def same_weights(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_run_directory_and_schedule(tmp_path):
    cfg = tiny_config(final_eval_n=2, plot=True, steps=4, checkpoint_every=2)
    summary = train(cfg, tmp_path / "run", echo=silent)
    run = tmp_path / "run"
    assert summary["finished"] and summary["step"] == 4
    for name in ("config.json", "log.jsonl", "eval.json", "curve.png", "eval_bars.png"):
        assert (run / name).is_file(), name
    records = read_log(run / "log.jsonl")
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
    assert all(r["tokens_per_s"] > 0 for r in records if "loss" in r)
    metrics = json.loads((run / "eval.json").read_text())["tasks"]["replace_color"]
    assert set(metrics) >= {"accuracy_greedy", "accuracy_sampled", "cell_accuracy", "loss"}
    assert load(run / "model").cfg.d_model == 16
    # warm-up then cosine down to min_lr_ratio
    big = cfg.replace(steps=100, warmup_steps=10)
    assert lr_at(big, 0) < lr_at(big, 9) == pytest.approx(big.lr)
    assert lr_at(big, 99) == pytest.approx(big.lr * big.min_lr_ratio, rel=0.05)


def test_resume_is_bit_identical(tmp_path):
    cfg = tiny_config(steps=7, checkpoint_every=2)
    train(cfg, tmp_path / "full", echo=silent)
    # "killed" after step 4 (the last checkpoint), then resumed
    partial = train(cfg, tmp_path / "cut", stop_after=5, echo=silent)
    assert not partial["finished"] and not (tmp_path / "cut" / "model").exists()
    assert ckpt.latest_checkpoint(tmp_path / "cut").name == "step_00000005.pt"
    # simulate a kill between checkpoints: drop the newest, resume from step 4
    ckpt.latest_checkpoint(tmp_path / "cut").unlink()
    train(cfg, tmp_path / "cut", resume=True, echo=silent)
    steps = [r["step"] for r in read_log(tmp_path / "cut" / "log.jsonl") if "loss" in r]
    assert steps == list(range(1, 8))  # the records past the checkpoint were not duplicated
    assert same_weights(weights(tmp_path / "full" / "model"), weights(tmp_path / "cut" / "model"))
    full = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "full"))
    cut = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "cut"))
    for k in full["optimizer"]["state"]:
        assert torch.equal(
            full["optimizer"]["state"][k]["exp_avg"], cut["optimizer"]["state"][k]["exp_avg"]
        )


def test_resume_checks_the_config(tmp_path):
    cfg = tiny_config(steps=3)
    train(cfg, tmp_path / "run", stop_after=3, echo=silent)
    with pytest.raises(ConfigError) as info:
        train(cfg.replace(lr=0.1, noise=0.0), tmp_path / "run", resume=True, echo=silent)
    assert "lr: 0.003 (checkpoint) vs 0.1 (now)" in str(info.value)
    assert "noise: 0.05 (checkpoint) vs 0.0 (now)" in str(info.value)
    with pytest.raises(ConfigError, match="already holds a training run; pass --resume"):
        train(cfg, tmp_path / "run", echo=silent)
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        train(cfg, tmp_path / "empty", resume=True, echo=silent)


def test_corrupted_checkpoint_is_a_clear_error(tmp_path):
    cfg = tiny_config(steps=4, checkpoint_every=2)
    train(cfg, tmp_path / "run", stop_after=4, echo=silent)
    good, bad = ckpt.list_checkpoints(tmp_path / "run")
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(CheckpointError) as info:
        train(cfg, tmp_path / "run", resume=True, echo=silent)
    assert "corrupted or unreadable checkpoint" in str(info.value) and good.name in str(info.value)
    assert ckpt.load_checkpoint(good)["step"] == 2  # the older one is intact and usable
    summary = train(cfg, tmp_path / "run", resume=good, echo=silent)
    assert summary["finished"]
    (tmp_path / "foreign.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"foreign\.pt: corrupted"):
        ckpt.load_checkpoint(tmp_path / "foreign.pt")


def test_full_disk_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = tiny_config(steps=6, checkpoint_every=2)
    train(cfg, tmp_path / "run", stop_after=2, echo=silent)
    real_save = torch.save

    def full_disk(obj, f, *a, **kw):
        real_save(obj, f, *a, **kw)  # a partial file exists when the error strikes
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError) as info:
        train(cfg, tmp_path / "run", resume=True, echo=silent)
    assert "No space left on device" in str(info.value) and "step_00000002.pt is intact" in str(
        info.value
    )
    monkeypatch.setattr(torch, "save", real_save)
    files = os.listdir(tmp_path / "run" / "checkpoints")
    assert files == ["step_00000002.pt"]  # no temporary or partial file left
    assert ckpt.load_checkpoint(tmp_path / "run" / "checkpoints" / files[0])["step"] == 2


def test_keeps_the_last_k_checkpoints(tmp_path):
    train(tiny_config(steps=5, checkpoint_every=1, keep_checkpoints=2), tmp_path / "r", echo=silent)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "r")] == [
        "step_00000004.pt",
        "step_00000005.pt",
    ]
    state = torch.load(ckpt.latest_checkpoint(tmp_path / "r"), weights_only=True)
    assert {"model", "optimizer", "scheduler", "rng", "step", "config"} <= set(state)


def test_population_layout(tmp_path):
    train_population(tiny_config(steps=2, checkpoint_every=2), tmp_path / "pop", 2, echo=silent)
    index = json.loads((tmp_path / "pop" / "population.json").read_text())
    assert (
        index["k"] == 2 and index["seeds"] == [0, 1] and index["members"] == ["model_0", "model_1"]
    )
    a, b = (weights(tmp_path / "pop" / f"model_{k}" / "model") for k in range(2))
    assert not same_weights(a, b)
    # resuming a finished population trains nothing: every member says so, weights unchanged
    said = []
    train_population(
        tiny_config(steps=2, checkpoint_every=2),
        tmp_path / "pop",
        2,
        resume=True,
        echo=said.append,
    )
    assert [line for line in said if "finished already" in line] == [
        f"member {k}: finished already ({tmp_path / 'pop' / f'model_{k}'})" for k in range(2)
    ]
    assert same_weights(a, weights(tmp_path / "pop" / "model_0" / "model"))


def run_cli(capsys, *args):
    try:
        main(list(args))
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_cli_train_and_eval(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    code, out, err = run_cli(
        capsys,
        "train",
        "--preset",
        "tiny",
        "--tasks",
        "replace_color",
        "--steps",
        "2",
        "--d-model",
        "16",
        "--n-heads",
        "2",
        "--out",
        str(run),
        "--no-progress",
        "--final-eval-n",
        "2",
    )
    assert code == 0, err
    assert (run / "model" / "training.json").is_file() and (run / "curve.png").is_file()
    code, out, err = run_cli(capsys, "train", "plot", str(run), "--png", str(tmp_path / "c.png"))
    assert code == 0 and (tmp_path / "c.png").is_file()
    js = tmp_path / "e.json"
    code, out, err = run_cli(
        capsys, "eval", str(run), "--json", str(js), "-n", "3", "--out", str(tmp_path / "ev")
    )
    assert code == 0, err
    data = json.loads(js.read_text())
    m = data["tasks"]["replace_color"]
    assert set(m) >= {"accuracy_greedy", "accuracy_sampled", "cell_accuracy", "loss"}
    assert set(data["structures"]) == {"forward", "inverse", "backward", "backward_inverse"}
    assert (tmp_path / "ev" / "bars.png").is_file()
    assert "replace_color" in out and "overall" in out
    # the shipped-model path: a run's model/ directory copied to the package is `default`
    from gridlens.models import checkpoints

    monkeypatch.setattr(checkpoints, "DEFAULT_MODEL_DIR", run / "model")
    code, out, err = run_cli(
        capsys, "eval", "default", "-n", "2", "--no-sampled", "--json", str(tmp_path / "d.json")
    )
    assert code == 0, err
    again = json.loads((tmp_path / "d.json").read_text())
    assert again["test_seed"] == 0 and again["tasks"]["replace_color"]["accuracy_sampled"] is None


def test_cli_bad_input(tmp_path, capsys):
    code, _, err = run_cli(
        capsys, "train", "--tasks", "replace_colour", "--out", str(tmp_path / "x")
    )
    assert (
        code == 2 and "unknown task 'replace_colour'" in err and len(err.strip().splitlines()) == 1
    )
    assert not (tmp_path / "x").exists()
    code, _, err = run_cli(capsys, "eval", str(tmp_path / "nothing"))
    assert code == 2 and "no such file or directory" in err
