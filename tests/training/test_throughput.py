"""The GPU training path, checked on CPU: the FLOP count behind MFU, the unchecked forward, the
prefetching loader, the time budget and continued training."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from gridlens.errors import ConfigError
from gridlens.models import GridGPT, GridGPTConfig, load, save
from gridlens.training.config import PRESETS, TrainConfig
from gridlens.training.data import QuizStream
from gridlens.training.throughput import Prefetcher, flops_per_token, peak_flops
from gridlens.training.trainer import read_log, train
from tests.training.conftest import tiny_config


def silent(*_args, **_kw):
    pass


def same_weights(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_flops_per_token_matches_torchs_flop_counter():
    """torch's counter sees the matrices (mm, addmm) and, on CPU, attention as full T x T
    batched products (bmm); our count takes the causal half of the latter."""
    cfg = GridGPTConfig(d_model=64, n_layers=2, n_heads=4, d_head=8, d_mlp=96, n_ctx=404)
    model = GridGPT(cfg, seed=0)
    tokens = torch.randint(0, 15, (2, 404))
    with FlopCounterMode(display=False) as counter:
        model.train_logits(tokens).sum().backward()
    counts = {str(k).split(".")[-1]: v for k, v in counter.get_flop_counts()["Global"].items()}
    n_tokens = tokens.numel()
    matrices, attention_full = counts["mm"] + counts["addmm"], counts["bmm"]
    assert matrices + attention_full / 2 == pytest.approx(flops_per_token(cfg) * n_tokens)
    d_attn = cfg.n_heads * (cfg.d_head + cfg.d_value)
    assert attention_full == 6 * cfg.n_layers * 404 * d_attn * n_tokens


def test_peak_flops_only_where_known():
    assert peak_flops(torch.device("cpu"), torch.bfloat16) is None


def test_train_logits_is_forward_without_checks():
    model = GridGPT(GridGPTConfig(d_model=32, n_layers=2, n_heads=2, d_head=8, d_mlp=64), seed=1)
    tokens = torch.randint(0, 15, (3, 404))
    assert torch.equal(model.train_logits(tokens), model(tokens))


def test_prefetcher_yields_the_streams_batches_in_order():
    stream = QuizStream(("frame", "grow"), ("forward", "inverse"), 0.05, 6, seed=3)
    reference = QuizStream(("frame", "grow"), ("forward", "inverse"), 0.05, 6, seed=3)
    loader = Prefetcher(stream, 5, 9, torch.device("cpu"), workers=2)
    try:
        for k in range(5, 9):
            assert torch.equal(loader.get(k), reference.batch(k))
        with pytest.raises(RuntimeError, match="batch 9 is next"):
            loader.get(5)
    finally:
        loader.close()
    assert loader.gen_s > 0


def test_training_with_data_workers_is_bit_identical(tmp_path):
    plain = train(tiny_config(steps=5), tmp_path / "plain", echo=silent)["model"]
    workers = train(tiny_config(steps=5, data_workers=2), tmp_path / "w", echo=silent)["model"]
    assert same_weights(plain.state_dict(), workers.state_dict())


@pytest.mark.slow
def test_time_budget_fixes_steps_during_the_warm_up_reproducibly(tmp_path):
    """The calibrated step count lands in config.json and the log; the run equals one started
    with that count (the schedule before the calibration does not depend on it)."""
    cfg = tiny_config(steps=10_000, warmup_steps=20, time_budget=1.0, checkpoint_every=0)
    lines = []
    summary = train(cfg, tmp_path / "timed", echo=lines.append)
    steps = json.loads((tmp_path / "timed" / "config.json").read_text())["steps"]
    assert summary["finished"] and summary["step"] == steps
    assert cfg.warmup_steps < steps < 10_000
    calibrated = [r for r in read_log(tmp_path / "timed" / "log.jsonl") if "calibrated_steps" in r]
    assert [r["calibrated_steps"] for r in calibrated] == [steps]
    assert calibrated[0]["step"] == 10 and any("time budget" in line for line in lines)
    again = train(tiny_config(steps=steps, warmup_steps=20), tmp_path / "fixed", echo=silent)
    assert same_weights(summary["model"].state_dict(), again["model"].state_dict())


def test_time_budget_needs_a_warm_up():
    with pytest.raises(ConfigError, match="warmup_steps must be >= 20"):
        tiny_config(time_budget=10.0, warmup_steps=4)


def test_init_from_starts_at_the_donors_weights(tmp_path):
    donor = GridGPT(tiny_config().model_config(), seed=7)
    save(donor, tmp_path / "donor")
    summary = train(
        tiny_config(init_from=str(tmp_path / "donor")),
        tmp_path / "run",
        stop_after=0,
        echo=silent,
    )
    assert same_weights(summary["model"].state_dict(), load(tmp_path / "donor").state_dict())
    with pytest.raises(ConfigError, match="shape differs"):
        train(tiny_config(d_mlp=64, init_from=str(tmp_path / "donor")), tmp_path / "x", echo=silent)


def test_gpu_presets_are_valid_and_timed():
    for name in ("gpu", "gpu-small"):
        cfg = PRESETS[name]
        assert isinstance(cfg, TrainConfig) and cfg.compile and cfg.time_budget > 0
        assert cfg.warmup_steps // 2 > 1
