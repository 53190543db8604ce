"""Distributed Alignment Search (DAS; Geiger, Wu, Potts, Icard & Goodman 2023): learn the
subspace of a site's activation that holds a high-level variable.

A site's activation a (width d) is rotated by a learned orthogonal matrix R; the first k rotated
coordinates are the candidate subspace. An interchange takes those k coordinates from a source
input and keeps the rest of the base input:

    a' = a + (s - a) Q Q^T,   Q = R[:k]^T  (d x k, orthonormal columns)

and R is trained (the model frozen) so that the model, run on the base with a' at the site,
outputs what the high-level model outputs when only the variable is interchanged. The IIA of
the learned subspace on held-out pairs says how much of the variable lives there. The span of
the variable's class means says where its values sit on average; DAS finds the directions
the rest of the model actually reads.

`train_das` works with any model that has GridGPT's `run_with_cache(tokens, names=[hook])`
and `run_with_hooks(tokens, fwd_hooks=[(hook, fn)])` and per-position logits; per-head hooks
([batch, pos, head, d]) are read at one head, or all heads flattened.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import orthogonal

from gridlens.errors import ConfigError
from gridlens.models.hooks import read_site, write_site

__all__ = ["DASFit", "Rotation", "subspace_interchange", "train_das"]


class Rotation(nn.Module):
    """An orthogonal d x d matrix (kept orthogonal by torch's parametrisation: the seeded
    random rotation it starts at, times the Cayley transform of a learned skew matrix); its
    first k rows span the learned subspace."""

    def __init__(self, d: int, k: int, seed: int = 0):
        super().__init__()
        if not 1 <= k <= d:
            raise ConfigError(f"DAS subspace dimension k must be in 1..{d}, got {k}")
        self.k = k
        start = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed)))
        layer = nn.Linear(d, d, bias=False)
        with torch.no_grad():
            layer.weight.copy_(start[0])
        self.layer = orthogonal(layer, orthogonal_map="cayley")  # 6x matrix_exp's speed

    @property
    def matrix(self) -> torch.Tensor:
        return self.layer.weight

    def basis(self) -> torch.Tensor:
        """[d, k] orthonormal columns: the learned subspace."""
        return self.matrix[: self.k].t()

    def interchange(self, base: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        return subspace_interchange(base, source, self.basis())


def subspace_interchange(base: torch.Tensor, source: torch.Tensor, q: torch.Tensor):
    """The base activation with its component in span(q) (orthonormal columns) from the
    source."""
    return base + ((source - base) @ q) @ q.t()


@dataclass
class DASFit:
    """A trained rotation: the subspace basis [d, k] (detached), the training losses (one per
    step) and the seconds spent."""

    basis: torch.Tensor
    rotation: Rotation
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def train_das(
    model,
    hook: str,
    base: torch.Tensor,
    source: torch.Tensor,
    target: torch.Tensor,
    k: int = 1,
    head: int | None = None,
    steps: int = 300,
    batch_size: int = 64,
    lr: float = 0.01,
    seed: int = 0,
) -> DASFit:
    """Learn a k-dim subspace at ``hook`` (one ``head`` of a per-head hook, or all heads) such
    that interchanging it from ``source`` [n, ...] into ``base`` [n, ...] (pairs by row) makes
    the model output ``target`` [n, pos] (class per position, -1 ignored): Adam on the
    cross-entropy, ``steps`` batches of ``batch_size`` pairs drawn with replacement. The
    model's parameters are not changed (and get no gradient)."""
    if not len(base) == len(source) == len(target) or len(base) == 0:
        raise ConfigError(
            f"DAS needs as many base, source and target rows (> 0), got "
            f"{len(base)}, {len(source)}, {len(target)}"
        )
    if steps < 1 or batch_size < 1:
        raise ConfigError(f"DAS steps and batch_size must be >= 1, got {steps}, {batch_size}")
    t0 = time.perf_counter()
    with torch.no_grad():
        _, cache = model.run_with_cache(source, names=[hook])
    src = read_site(cache[hook], head)
    rotation = Rotation(src.shape[-1], k, seed)
    opt = torch.optim.Adam(rotation.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    frozen = [p for p in _parameters(model) if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    losses = []
    try:
        for _ in range(steps):
            rows = torch.randint(len(base), (min(batch_size, len(base)),), generator=gen)
            s = src[rows]

            def swap(act, point, s=s):
                return write_site(act, head, rotation.interchange(read_site(act, head), s))

            t = target[rows].reshape(-1)
            if not bool((t >= 0).any()):
                continue
            logits = model.run_with_hooks(base[rows], fwd_hooks=[(hook, swap)])
            loss = F.cross_entropy(logits.reshape(len(t), -1), t, ignore_index=-1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    finally:
        for p in frozen:
            p.requires_grad_(True)
    with torch.no_grad():
        q = rotation.basis().detach().clone()
    return DASFit(q, rotation, losses, time.perf_counter() - t0)


def _parameters(model) -> list[torch.Tensor]:
    return list(model.parameters()) if isinstance(model, nn.Module) else []
