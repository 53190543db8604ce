"""KL fine-tuning: the KL against torch's own, and that fine-tuning lowers the spliced KL on
held-out quizzes while leaving the model and the original SAE untouched."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from sae_feature_helpers import identity_sae

from gridlens.analysis.core import quiz_set
from gridlens.models.gpt import GridGPT, GridGPTConfig
from gridlens.sae.finetune import FinetuneConfig, finetune_sae, grid_kl, splice_score
from gridlens.sae.model import SAEConfig, SparseAutoencoder

HOOK = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = GridGPTConfig(d_model=16, n_layers=1, n_heads=2, d_head=8, d_mlp=32)
    return GridGPT(cfg, seed=3).eval()


def test_grid_kl_matches_torch():
    clean, spliced = torch.randn(3, 404, 15), torch.randn(3, 404, 15)
    tokens = torch.zeros(3, 404, dtype=torch.long)
    expected = (
        F.kl_div(
            F.log_softmax(spliced[:, -100:], -1),
            F.log_softmax(clean[:, -100:], -1),
            log_target=True,
            reduction="none",
        )
        .sum(-1)
        .mean(1)
    )
    torch.testing.assert_close(grid_kl(clean, spliced, tokens), expected)
    assert float(grid_kl(clean, clean, tokens).abs().max()) < 1e-6


@pytest.mark.parametrize("arch", ["topk", "relu"])
def test_finetuning_lowers_held_out_kl(tiny, arch):
    """From an exact dictionary (identity_sae) with a noisy decoder: the KL has room to fall."""
    sae = SparseAutoencoder(SAEConfig(16, 32, arch, hook_name=HOOK, k=16)).eval()
    sae.load_state_dict(identity_sae(16, HOOK).state_dict())
    with torch.no_grad():
        sae.W_dec.add_(0.3 * torch.randn(32, 16, generator=torch.Generator().manual_seed(0)))
    held_out = quiz_set("translate,contact", 2, seed=50)
    weights = {n: p.clone() for n, p in sae.state_dict().items()}
    model_weights = {n: p.clone() for n, p in tiny.state_dict().items()}
    cfg = FinetuneConfig(25, 4, 3e-3, recon_coefficient=0.0, tasks="translate,contact")
    result = finetune_sae(tiny, sae, cfg, held_out, progress=False)
    assert result.after.kl < 0.7 * result.before.kl
    rescored = splice_score(tiny, result.sae, held_out)
    assert rescored.kl == pytest.approx(result.after.kl, rel=1e-5)
    for name, value in sae.state_dict().items():
        assert torch.equal(value, weights[name])
    for name, value in tiny.state_dict().items():
        assert torch.equal(value, model_weights[name])
    assert all(p.requires_grad for p in tiny.parameters())
    if arch == "topk":
        assert result.after.l0 <= 16
    assert len(result.history) == 25 and result.to_json()["format"] == "gridlens.sae_finetune"
