"""DAS on a hand-built model whose variable lives in one known direction, mixed into d dims by
a random rotation: DAS finds that direction, its interchange has IIA ~1, and the rotation stays
orthogonal; a subspace that is off the direction does not; the model itself is never changed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gridlens.analysis.das import Rotation, subspace_interchange, train_das
from gridlens.errors import GridlensError
from gridlens.groundtruth import iit
from gridlens.groundtruth.spec import single_benchmark

D = 8


class XorModel:
    """Inputs [n, D] bits; the site "hook_mid" [n, 1, D] holds the bits as +-1 coordinates
    rotated by a random orthogonal `mix`; the output [n, 1, 2] is bit 0 XOR bit 1 (bits 2.. are
    carried but unused). Variable "a" (bit 0) lives in the direction mix[:, 0]."""

    def __init__(self, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.mix = torch.linalg.qr(torch.randn(D, D, generator=g))[0]
        self.scale = torch.linspace(1.0, 3.0, D)  # unequal variances per coordinate

    def _run(self, tokens, fn=None):
        mid = ((2 * tokens.float() - 1) * self.scale) @ self.mix.t()
        mid = mid[:, None]
        if fn is not None:
            mid = fn(mid, None)
        z = (mid[:, 0] @ self.mix) / self.scale
        same = z[:, 0] * z[:, 1]
        return torch.stack([4 * same, -4 * same], -1)[:, None]

    def run_with_cache(self, tokens, names):
        store = {}
        logits = self._run(tokens, lambda a, p: store.setdefault("hook_mid", a))
        return logits, store

    def run_with_hooks(self, tokens, fwd_hooks):
        ((_, fn),) = fwd_hooks
        return self._run(tokens, fn)


def _pairs(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    base, source = torch.randint(2, (n, D), generator=g), torch.randint(2, (n, D), generator=g)
    target = (source[:, 0] ^ base[:, 1])[:, None]  # only variable a interchanged
    return base, source, target


def _iia(model, base, source, target, q) -> float:
    _, cache = model.run_with_cache(source, ["hook_mid"])
    logits = model.run_with_hooks(
        base, [("hook_mid", lambda a, p: subspace_interchange(a, cache["hook_mid"], q))]
    )
    return float((logits.argmax(-1) == target).float().mean())


def test_das_recovers_the_variables_direction():
    model = XorModel()
    fit = train_das(model, "hook_mid", *_pairs(512, 1), k=1, steps=200, lr=0.05)
    truth = model.mix[:, 0]
    assert fit.basis.shape == (D, 1)
    assert abs(float(fit.basis[:, 0] @ truth)) > 0.99
    r = fit.rotation.matrix.detach()
    torch.testing.assert_close(r @ r.t(), torch.eye(D), atol=1e-5, rtol=0)
    held_out = _pairs(512, 2)
    assert _iia(model, *held_out, fit.basis) > 0.99
    assert fit.losses[-1] < 0.1 * fit.losses[0]
    # the references: the true direction has IIA 1; bit 1's direction or the start do not
    assert _iia(model, *held_out, truth[:, None]) == 1.0
    assert _iia(model, *held_out, model.mix[:, 1:2]) < 0.6
    start = Rotation(D, 1, seed=0).basis().detach()
    assert abs(float(start[:, 0] @ truth)) < 0.9


def test_das_input_errors():
    model = XorModel()
    base, source, target = _pairs(8, 0)
    with pytest.raises(GridlensError, match=r"k must be in 1\.\.8"):
        train_das(model, "hook_mid", base, source, target, k=9)
    with pytest.raises(GridlensError, match="as many"):
        train_das(model, "hook_mid", base, source[:4], target)
    with pytest.raises(GridlensError, match="steps"):
        train_das(model, "hook_mid", base, source, target, steps=0)


def test_das_on_one_head_leaves_the_model_alone():
    bench = single_benchmark("parenthesis", n_ctx=9, d_model=16, d_head=4, d_mlp=16)
    model = iit.make_model(bench, seed=0).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, _ = bench.generate(8, np.random.default_rng(0))
    target = bench.labels(x)
    fit = train_das(model, "blocks.0.attn.hook_z", x, x.roll(1, 0), target, k=2, head=1, steps=3)
    assert fit.basis.shape == (4, 2) and len(fit.losses) == 3
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
