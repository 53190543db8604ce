"""Training configuration: presets, files, overrides and validation."""

from __future__ import annotations

import json

import pytest

from gridlens.errors import ConfigError, UnknownNameError
from gridlens.training.config import PRESETS, TrainConfig, get_preset
from gridlens.world import DEFAULT_TASKS


def test_defaults_follow_the_original_run():
    cfg = TrainConfig()
    assert cfg.tasks == DEFAULT_TASKS
    assert set(cfg.structures) == {
        "forward",
        "inverse",
        "backward",
        "backward_inverse",
        "generation",
    }
    assert cfg.noise == 0.05
    assert {"cpu", "37m"} <= set(PRESETS)
    big = get_preset("37m")
    assert (big.d_model, big.n_layers, big.n_heads, big.d_head, big.d_mlp) == (512, 12, 8, 64, 2048)


def test_file_then_overrides(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('preset = "cpu"\nsteps = 77\ntasks = ["replace_color", "grow"]\n')
    cfg = TrainConfig.build(file=toml, overrides={"lr": 0.5, "steps": None})
    assert cfg.steps == 77 and cfg.lr == 0.5 and cfg.tasks == ("replace_color", "grow")
    assert cfg.d_model == get_preset("cpu").d_model
    js = tmp_path / "run.json"
    js.write_text(json.dumps({"train": {"batch-size": 8}}))
    assert TrainConfig.build(preset="tiny", file=js).batch_size == 8
    # round trip
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "data, needle",
    [
        ({"tasks": ["replace_colour"]}, "unknown task 'replace_colour'"),
        ({"structures": "sideways"}, "unknown structure"),
        ({"steps": 0}, "steps must be a positive integer"),
        ({"noise": 2.0}, "noise must be a probability"),
        ({"learning_rate": 1.0}, "unknown option(s) ['learning_rate']"),
        ({"d_model": 30, "n_heads": 4}, "divisible"),
    ],
)
def test_bad_options(data, needle):
    with pytest.raises((ConfigError, UnknownNameError)) as info:
        TrainConfig.from_dict(data, "cfg.json")
    assert needle in str(info.value)


def test_bad_files(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("steps = = 3")
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML"):
        TrainConfig.build(file=bad)
    with pytest.raises(ConfigError, match="config file not found"):
        TrainConfig.build(file=tmp_path / "missing.json")
    with pytest.raises(UnknownNameError, match="training preset"):
        TrainConfig.build(preset="gigantic")
