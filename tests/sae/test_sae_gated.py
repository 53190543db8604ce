"""The gated SAE: its encoder and auxiliary loss against hand computations, the decoder-norm
fold, that its training step moves the gate through the auxiliary loss only, and that its
sparse kernels give the dense loss and gradients."""

from __future__ import annotations

import pytest
import torch

from gridlens.sae import gated
from gridlens.sae.gated import GatedSAE
from gridlens.sae.model import SAEConfig
from gridlens.sae.train import SAETrainConfig, sae_losses


def small_gated() -> GatedSAE:
    sae = GatedSAE(SAEConfig(2, 2, "gated", hook_name="s"))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(2))
        sae.W_dec.copy_(torch.tensor([[1.0, 0.5], [0.0, 1.0]]))
        sae.b_dec.zero_()
        sae.b_gate.copy_(torch.tensor([0.0, -5.0]))
        sae.b_mag.copy_(torch.tensor([1.0, 1.0]))
        sae.r_mag.copy_(torch.tensor([2.0, 1.0]).log())
    return sae


def test_gated_encoding_by_hand():
    sae = small_gated()
    x = torch.tensor([[3.0, 3.0]])
    # gate: (3, 3 - 5) -> only latent 0 open; magnitude: 3 * exp(log 2) + 1 = 7
    torch.testing.assert_close(sae.encode(x), torch.tensor([[7.0, 0.0]]))
    # auxiliary: relu(gate) = (3, 0) decoded -> (3, 1.5); ||x - (3, 1.5)||^2 = 2.25, and its
    # gradient to gate 0 is 2 * <(3, 1.5) - x, W_dec[0]> = 2 * (-1.5 * 0.5) = -1.5
    aux = sae.auxiliary_loss(x, sae.gate_and_magnitude(x)[0])
    assert float(aux.detach()) == pytest.approx(2.25)
    aux.backward()
    assert sae.W_dec.grad is None  # the decoder copy is frozen; the gate learns
    assert float(sae.b_gate.grad[0]) == pytest.approx(-1.5) and sae.b_mag.grad is None


def test_normalize_decoder_keeps_outputs():
    sae = GatedSAE(SAEConfig(6, 12, "gated", hook_name="s"), seed=2)
    with torch.no_grad():
        for p in (sae.b_gate, sae.b_mag, sae.r_mag, sae.b_dec):
            p.copy_(torch.randn(p.shape) * 0.1)
        sae.W_dec.mul_(torch.rand(12, 1) + 0.5)
    x = torch.randn(20, 6)
    before = sae(x)[0]
    sae.normalize_decoder()
    torch.testing.assert_close(sae(x)[0], before, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(12))


def few_open_gates(share: float, seed: int = 3) -> tuple[GatedSAE, torch.Tensor]:
    """A gated SAE whose gate biases open about ``share`` of the gates on the returned batch."""
    sae = GatedSAE(SAEConfig(16, 64, "gated", hook_name="s"), seed=seed)
    x = torch.randn(200, 16, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for p in (sae.b_mag, sae.r_mag, sae.b_dec):
            p.copy_(torch.randn(p.shape) * 0.2)
        shared = (x - sae.b_dec) @ sae.W_enc
        sae.b_gate.copy_(-shared.quantile(1 - share, dim=0))
    return sae, x


def losses_and_grads(sae: GatedSAE, x: torch.Tensor, sparse_below: float, monkeypatch):
    """sae_losses with the sparse kernels allowed up to ``sparse_below`` open gates."""
    monkeypatch.setattr(gated, "SPARSE_GATES_BELOW", sparse_below)
    sae.zero_grad()
    result = sae_losses(sae, x, SAETrainConfig(l1_coefficient=0.3), None)
    result.total.backward()
    grads = {name: p.grad.clone() for name, p in sae.named_parameters()}
    return result, grads


def test_sparse_gated_loss_equals_the_dense_one_with_its_gradients(monkeypatch):
    sae, x = few_open_gates(0.05)
    dense, dense_grads = losses_and_grads(sae, x, 0.0, monkeypatch)
    sparse, sparse_grads = losses_and_grads(sae, x, 1.0, monkeypatch)
    assert gated.sparse_gated_terms(sae, x) is not None  # the sparse path did run
    for field in ("total", "mse", "sparsity", "recon", "l0"):
        torch.testing.assert_close(getattr(sparse, field), getattr(dense, field))
    assert torch.equal(sparse.fired, dense.fired) and 0 < float(dense.l0) < 0.1 * 64
    for name, grad in dense_grads.items():
        torch.testing.assert_close(sparse_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_many_open_gates_take_the_dense_products(monkeypatch):
    sae, x = few_open_gates(0.5)
    monkeypatch.setattr(gated, "SPARSE_GATES_BELOW", 0.1)
    assert gated.sparse_gated_terms(sae, x) is None
    result = sae_losses(sae, x, SAETrainConfig(), None)
    assert float(result.l0) > 0.2 * 64 and torch.isfinite(result.total)
