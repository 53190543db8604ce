"""The model shipped inside the package loads and solves the tasks it learned best."""

from __future__ import annotations

import torch

from gridlens.models import DEFAULT_MODEL_DIR, load
from gridlens.world import check, generate


def test_default_model_loads_with_its_recorded_size():
    model = load("default")
    assert (DEFAULT_MODEL_DIR / "model.safetensors").is_file()
    assert (model.cfg.d_model, model.cfg.n_layers, model.cfg.vocab_size) == (128, 4, 15)
    assert sum(p.numel() for p in model.parameters()) < 2_000_000


def test_default_model_completes_frame_quizzes():
    """frame reached 98.5% greedy accuracy in the shipped run; a broken file or loader gives ~0."""
    model = load("default")
    batch = generate("frame", 32, seed=123)
    done = model.complete(batch.tokens, temperature=0.0, seed=0)
    assert torch.equal(done[:, :303], batch.tokens[:, :303])  # the prompt is left alone
    exact = (done == batch.tokens).all(dim=1).float().mean().item()
    assert exact >= 0.85
    assert check("frame", done).float().mean().item() >= 0.85
