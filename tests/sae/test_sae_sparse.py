"""The sparse TopK/BatchTopK kernels equal the dense formulation in values and gradients."""

from __future__ import annotations

import torch

from gridlens.sae.model import topk_batch, topk_rows
from gridlens.sae.sparse import batch_topk_encode, sparse_decode, topk_encode

ROWS, D_IN, D_SAE, K = 48, 12, 40, 5


def params(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(D_IN, D_SAE), (D_SAE,), (D_SAE, D_IN), (D_IN,)]
    return [torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_() for s in shapes]


def data(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(ROWS, D_IN, generator=g, dtype=torch.float64)
    target = torch.randn(ROWS, D_IN, generator=g, dtype=torch.float64)
    return x, target


def dense(x, p, select):
    w_enc, b_enc, w_dec, b_dec = p
    latents = select(torch.relu((x - b_dec) @ w_enc + b_enc))
    return latents @ w_dec + b_dec, latents


def check(sparse_recon, p_sparse, dense_recon, p_dense, target):
    torch.testing.assert_close(sparse_recon, dense_recon)
    ((sparse_recon - target) ** 2).sum().backward()
    ((dense_recon - target) ** 2).sum().backward()
    for a, b in zip(p_sparse, p_dense, strict=True):
        torch.testing.assert_close(a.grad, b.grad)


def test_topk_matches_dense_values_and_gradients():
    x, target = data()
    p1, p2 = params(), params()
    values, indices = topk_encode(x, p1[0], p1[1], p1[3], K)
    recon = sparse_decode(values, indices, p1[2], p1[3])
    want, latents = dense(x, p2, lambda a: topk_rows(a, K))
    scattered = torch.zeros_like(latents).scatter(1, indices, values.detach())
    torch.testing.assert_close(scattered, latents.detach())
    check(recon, p1, want, p2, target)


def test_batch_topk_matches_dense_values_and_gradients():
    x, target = data(2)
    p1, p2 = params(3), params(3)
    values, indices, offsets = batch_topk_encode(x, p1[0], p1[1], p1[3], K)
    assert values.numel() == K * ROWS and (values > 0).all()
    recon = sparse_decode(values, indices, p1[2], p1[3], offsets)
    want, _ = dense(x, p2, lambda a: topk_batch(a, K))
    check(recon, p1, want, p2, target)


def test_batch_topk_on_a_large_batch_uses_the_bracketed_cut():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2048, 16, generator=g)
    w_enc, b_enc, b_dec = torch.randn(16, 64, generator=g), torch.zeros(64), torch.zeros(16)
    values, indices, offsets = batch_topk_encode(x, w_enc, b_enc, b_dec, 3)
    want = topk_batch(torch.relu(x @ w_enc), 3)
    rows = torch.repeat_interleave(
        torch.arange(2048), torch.diff(offsets, append=torch.tensor([values.numel()]))
    )
    got = torch.zeros_like(want).index_put_((rows, indices), values)
    torch.testing.assert_close(got, want)


def test_sparse_decode_gradient_to_the_input():
    x, _ = data()
    x.requires_grad_(True)
    p1 = params()
    values, _ = topk_encode(x, p1[0], p1[1], p1[3], K)
    values.sum().backward()
    pre = (x.detach() - p1[3].detach()) @ p1[0].detach() + p1[1].detach()
    top = pre.topk(K, dim=-1).indices
    mask = torch.zeros_like(pre).scatter(1, top, 1.0) * (pre > 0)
    torch.testing.assert_close(x.grad, mask @ p1[0].detach().t())
