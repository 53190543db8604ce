"""Pursuit encoders against constructed answers: the support of synthetic sparse codes over a
random (near-orthogonal) dictionary, and exact codes over an orthonormal one."""

from __future__ import annotations

import pytest
import torch

from gridlens.errors import ConfigError
from gridlens.sae.model import SAEConfig, SparseAutoencoder
from gridlens.sae.pursuit import PursuitSAE, gradient_pursuit, matching_pursuit

PURSUITS = (matching_pursuit, gradient_pursuit)


def sparse_problem(n=400, d_in=128, d_sae=512, k=4, seed=0):
    """x = codes @ decoder with k codes per row in [1, 2] over random atoms of norms 0.5-1.5."""
    g = torch.Generator().manual_seed(seed)
    decoder = torch.randn(d_sae, d_in, generator=g)
    decoder = (
        decoder / decoder.norm(dim=1, keepdim=True) * (0.5 + torch.rand(d_sae, 1, generator=g))
    )
    support = torch.stack([torch.randperm(d_sae, generator=g)[:k] for _ in range(n)])
    codes = torch.zeros(n, d_sae).scatter(1, support, 1 + torch.rand(n, k, generator=g))
    return codes @ decoder, decoder, codes


@pytest.mark.parametrize("pursuit", PURSUITS)
def test_pursuit_recovers_the_support(pursuit):
    x, decoder, codes = sparse_problem()
    found = pursuit(x, decoder, 4)
    assert found.shape == codes.shape
    same_support = ((found != 0) == (codes != 0)).all(1).float().mean()
    assert same_support >= 0.98
    residual = (found @ decoder - x).pow(2).sum(1) / x.pow(2).sum(1)
    assert residual.mean() < 0.05


@pytest.mark.parametrize("pursuit", PURSUITS)
def test_orthonormal_dictionary_gives_the_exact_codes(pursuit):
    g = torch.Generator().manual_seed(1)
    basis, _ = torch.linalg.qr(torch.randn(64, 64, generator=g))  # rows orthonormal
    codes = torch.zeros(50, 64).scatter(1, torch.randint(0, 64, (50, 3), generator=g), 2.0)
    codes = codes.scatter(1, torch.randint(0, 64, (50, 1), generator=g), 0.5)
    found = pursuit(codes @ basis, basis, 4)
    torch.testing.assert_close(found, codes, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pursuit", PURSUITS)
def test_at_most_k_nonnegative_codes_on_dense_inputs(pursuit):
    g = torch.Generator().manual_seed(2)
    x, decoder = torch.randn(300, 32, generator=g), torch.randn(96, 32, generator=g)
    for k in (1, 5, 17):
        found = pursuit(x, decoder, k)
        assert (found >= 0).all()
        assert int((found != 0).sum(1).max()) <= k
    signed = pursuit(x, decoder, 5, nonnegative=False)
    assert (signed < 0).any() and int((signed != 0).sum(1).max()) <= 5


def test_more_atoms_reconstruct_better():
    x, decoder, _ = sparse_problem(k=12, seed=3)
    errors = [(gradient_pursuit(x, decoder, k) @ decoder - x).pow(2).sum() for k in (2, 6, 12)]
    assert errors[0] > errors[1] > errors[2]


def test_bad_shapes_and_k_raise():
    with pytest.raises(ConfigError, match="d_in"):
        matching_pursuit(torch.zeros(3, 4), torch.zeros(8, 5), 2)
    with pytest.raises(ConfigError, match="k must"):
        gradient_pursuit(torch.zeros(3, 4), torch.zeros(8, 4), 9)


def test_pursuit_sae_encodes_x_minus_b_dec_with_the_decoder():
    x, decoder, _ = sparse_problem(n=64, d_in=32, d_sae=64, k=2, seed=4)
    sae = SparseAutoencoder(SAEConfig(32, 64, "topk", hook_name="blocks.0.hook_mlp_out", k=8))
    b_dec = torch.randn(32)
    with torch.no_grad():
        sae.W_dec.copy_(decoder)
        sae.b_dec.copy_(b_dec)
    for method, pursuit in (("mp", matching_pursuit), ("gp", gradient_pursuit)):
        wrapped = PursuitSAE(sae, method, 2, chunk=10)
        latents = wrapped.encode((x + b_dec).reshape(8, 8, 32))
        torch.testing.assert_close(latents.reshape(64, 64), pursuit(x, decoder, 2))
        assert wrapped.cfg == sae.cfg and wrapped.W_enc is not sae.W_enc
