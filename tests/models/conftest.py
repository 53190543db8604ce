"""Fixtures for the model tests: small models and quizzes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gridlens.models import GridGPT, GridGPTConfig


def structured_model(seed: int = 1, **overrides) -> GridGPT:
    """A small random-init model whose greedy outputs depend on the context (the embedding is
    scaled up so that tokens dominate the positions; MyGPT's 0.02 init gives near-constant
    outputs)."""
    fields = dict(d_model=64, n_layers=2, n_heads=4, d_head=16, d_mlp=128)
    cfg = GridGPTConfig(**{**fields, **overrides})
    model = GridGPT(cfg, seed=seed).eval()
    with torch.no_grad():
        model.embed.weight.mul_(50)
    return model


@pytest.fixture(scope="session")
def reference(reference_dir):
    data = np.load(reference_dir / "mygpt_small_io.npz")
    return {
        "path": reference_dir / "mygpt_small.pth",
        "quizzes": torch.from_numpy(data["quizzes"]).long(),
        "logits": torch.from_numpy(data["logits"]),
        "config": data["config"].tolist(),
    }


@pytest.fixture(scope="session")
def quizzes():
    from gridlens.world import generate

    return generate("replace_color", 500, seed=123).tokens


@pytest.fixture(scope="session")
def tiny():
    return structured_model()


@pytest.fixture(scope="session")
def make_model():
    """The factory behind `tiny`, for tests that need other shapes."""
    return structured_model
