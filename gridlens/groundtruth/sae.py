"""A minimal sparse autoencoder for scoring against the ground truth (TopK or ReLU + L1).

Deliberately small: encode ``f = act(W_enc (x - b_dec) + b_enc)``, decode ``x̂ = W_dec f + b_dec``,
decoder rows kept at unit norm, Adam on MSE (+ L1 on the latents for ``relu``). TopK keeps the
``k`` largest pre-activations (after ReLU) per row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from gridlens.errors import ConfigError


class SAE(nn.Module):
    def __init__(self, d_in: int, n_latents: int, arch: str = "topk", k: int = 8, seed: int = 0):
        super().__init__()
        if arch not in ("topk", "relu"):
            raise ConfigError(f"SAE arch must be 'topk' or 'relu', got {arch!r}")
        if arch == "topk" and not 0 < k <= n_latents:
            raise ConfigError(f"SAE k must be in [1, n_latents={n_latents}], got {k}")
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(n_latents, d_in, generator=g)
        w = w / w.norm(dim=1, keepdim=True)
        self.arch, self.k = arch, k
        self.W_dec = nn.Parameter(w.clone())
        self.W_enc = nn.Parameter(w.t().clone())
        self.b_enc = nn.Parameter(torch.zeros(n_latents))
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    @property
    def n_latents(self) -> int:
        return self.W_dec.shape[0]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)
        if self.arch == "relu":
            return pre
        top = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, top.values)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        self.W_dec.data /= self.W_dec.data.norm(dim=1, keepdim=True).clamp(min=1e-8)


@dataclass
class SAEReport:
    fvu: float  # fraction of variance unexplained on the training activations
    l0: float  # mean active latents per row
    dead_fraction: float


def train_sae(
    acts: torch.Tensor,
    n_latents: int,
    arch: str = "topk",
    k: int = 8,
    l1: float = 1e-3,
    steps: int = 1000,
    batch_size: int = 512,
    lr: float = 1e-3,
    seed: int = 0,
) -> tuple[SAE, SAEReport]:
    """Train an SAE on ``acts`` [N, d]; the decoder bias starts at the data mean."""
    acts = acts.detach().float()
    sae = SAE(acts.shape[1], n_latents, arch, k, seed)
    with torch.no_grad():
        sae.b_dec.copy_(acts.mean(0))
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    scale = acts.var(0).sum().clamp(min=1e-8)
    for _ in range(steps):
        x = acts[torch.randint(len(acts), (min(batch_size, len(acts)),), generator=g)]
        f = sae.encode(x)
        loss = (sae.decode(f) - x).pow(2).sum(-1).mean() / scale
        if arch == "relu":
            loss = loss + l1 * f.sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sae.normalise_decoder()
    with torch.no_grad():
        f = sae.encode(acts)
        fvu = float((sae.decode(f) - acts).pow(2).sum() / (acts - acts.mean(0)).pow(2).sum())
        report = SAEReport(
            fvu, float((f > 0).float().sum(-1).mean()), float(((f > 0).sum(0) == 0).float().mean())
        )
    return sae, report
