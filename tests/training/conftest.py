"""Fixtures for the training tests: a very small configuration that trains in a second."""

from __future__ import annotations

import pytest

from gridlens.training.config import TrainConfig


def tiny_config(**overrides) -> TrainConfig:
    base = dict(
        d_model=16,
        n_layers=1,
        n_heads=2,
        d_head=8,
        d_mlp=32,
        tasks=("replace_color",),
        batch_size=4,
        steps=6,
        checkpoint_every=3,
        keep_checkpoints=3,
        log_every=1,
        eval_every=0,
        eval_n=2,
        final_eval_n=0,
        progress=False,
        plot=False,
        test_pool=32,
        warmup_steps=2,
        lr=3e-3,
    )
    return TrainConfig(**{**base, **overrides})


@pytest.fixture
def tiny():
    return tiny_config
