"""The sparse autoencoder: one module for the four architectures.

Parameter names and shapes follow SAELens (W_enc [d_in, d_sae], b_enc, W_dec [d_sae, d_in],
b_dec, JumpReLU `threshold`), so files convert without reshaping. Encoding:
    pre = (x - b_dec) @ W_enc + b_enc
    relu:      f = relu(pre)                    (trained with an L1 penalty weighted by |W_dec|)
    topk:      keep the k largest relu(pre) per row
    batchtopk: keep the k * rows largest over the whole batch while training; at inference a
               learned global threshold (`threshold`, one value) replaces the batch ranking
    jumprelu:  f = pre * (pre > threshold) with a per-latent threshold (straight-through
               estimates for its gradient, see `jumprelu` below)
    gated:     its own class, gridlens.sae.gated.GatedSAE (build any with gated.build_sae)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn as nn

from gridlens.errors import ConfigError, unknown_name
from gridlens.sae.architectures import ARCHITECTURES


@dataclass(frozen=True)
class SAEConfig:
    """What defines an SAE's shape and encoder (training settings live elsewhere)."""

    d_in: int
    d_sae: int
    architecture: str = "topk"
    hook_name: str = "blocks.3.hook_mlp_out"
    k: int = 32  # topk / batchtopk: active latents per row (on average for batchtopk)
    jumprelu_bandwidth: float = 0.05  # width of the rectangle kernel of the threshold's gradient
    jumprelu_init_threshold: float = 0.01

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise unknown_name("SAE architecture", self.architecture, ARCHITECTURES)
        if self.d_in < 1 or self.d_sae < 1:
            raise ConfigError(f"d_in and d_sae must be >= 1, got {self.d_in}, {self.d_sae}")
        if self.architecture in ("topk", "batchtopk") and not 1 <= self.k <= self.d_sae:
            raise ConfigError(f"k must lie in [1, d_sae={self.d_sae}], got {self.k}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SAEConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown SAE config fields {unknown}; known: {sorted(known)}")
        return cls(**data)


class _JumpStep(torch.autograd.Function):
    """Heaviside step H(pre - threshold); gradient to the threshold through a rectangle kernel
    of width `bandwidth` (Rajamanoharan et al. 2024), none to `pre`."""

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        near = ((pre - threshold).abs() < ctx.bandwidth / 2).to(pre.dtype)
        grad_threshold = -(grad * near / ctx.bandwidth).reshape(-1, pre.shape[-1]).sum(0)
        return None, grad_threshold, None


class _JumpReLU(torch.autograd.Function):
    """pre * H(pre - threshold): the usual gradient to `pre` where active, and the rectangle
    kernel estimate (-threshold / bandwidth) to the threshold near the jump."""

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        active = (pre > threshold).to(pre.dtype)
        near = ((pre - threshold).abs() < ctx.bandwidth / 2).to(pre.dtype)
        grad_threshold = -(grad * near * threshold / ctx.bandwidth)
        return grad * active, grad_threshold.reshape(-1, pre.shape[-1]).sum(0), None


def jump_step(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """The L0 count's differentiable stand-in for JumpReLU training."""
    return _JumpStep.apply(pre, threshold, bandwidth)


class SparseAutoencoder(nn.Module):
    """x [..., d_in] -> latents [..., d_sae] -> reconstruction [..., d_in]."""

    def __init__(self, cfg: SAEConfig, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        generator = torch.Generator().manual_seed(seed)
        w_dec = torch.randn(cfg.d_sae, cfg.d_in, generator=generator)
        w_dec = w_dec / w_dec.norm(dim=1, keepdim=True) * 0.1
        self.W_dec = nn.Parameter(w_dec)
        self.W_enc = nn.Parameter(w_dec.t().clone())  # tied initialisation
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        if cfg.architecture == "jumprelu":
            self.threshold = nn.Parameter(torch.full((cfg.d_sae,), cfg.jumprelu_init_threshold))
        elif cfg.architecture == "batchtopk":
            # learned at the end of training: the inference threshold replacing the batch ranking
            self.register_buffer("threshold", torch.zeros(()))

    @property
    def b_in(self) -> torch.Tensor:
        """What the encoder subtracts from its input (b_dec; a transcoder's is zero)."""
        return self.b_dec

    def centred(self, x: torch.Tensor) -> torch.Tensor:
        """x - b_dec, after checking x's width."""
        if x.shape[-1] != self.cfg.d_in:
            raise ConfigError(
                f"SAE for {self.cfg.hook_name} expects d_in={self.cfg.d_in}, got {x.shape[-1]}"
            )
        return x - self.b_dec

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        return self.centred(x) @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent activations [..., d_sae] (inference behaviour for batchtopk)."""
        return self.activate(self.pre_activation(x))

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        """The architecture's nonlinearity on pre-activations (lets a training step that also
        needs `pre`, e.g. JumpReLU's L0 term, compute the encoder matmul once)."""
        arch = self.cfg.architecture
        if arch == "relu":
            return torch.relu(pre)
        if arch == "topk":
            return topk_rows(torch.relu(pre), self.cfg.k)
        if arch == "batchtopk":
            if self.training:
                return topk_batch(torch.relu(pre), self.cfg.k)
            return pre * (pre > self.threshold)
        return _JumpReLU.apply(pre, self.threshold, self.cfg.jumprelu_bandwidth)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction, latents)."""
        latents = self.encode(x)
        return self.decode(latents), latents

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Unit-norm decoder rows (scale moved into the encoder, so outputs do not change)."""
        norms = self.W_dec.norm(dim=1).clamp_min(1e-8)
        self.W_dec /= norms[:, None]
        self.W_enc *= norms[None, :]
        self.b_enc *= norms
        if self.cfg.architecture == "jumprelu":
            self.threshold *= norms


def topk_rows(acts: torch.Tensor, k: int) -> torch.Tensor:
    """Keep each row's k largest entries, zero the rest."""
    values, index = acts.topk(k, dim=-1)
    return torch.zeros_like(acts).scatter(-1, index, values)


def topk_batch(acts: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k * rows largest entries of the whole batch (BatchTopK)."""
    flat = acts.reshape(-1)
    rows = acts.reshape(-1, acts.shape[-1]).shape[0]
    values, index = flat.topk(min(k * rows, flat.numel()))
    return torch.zeros_like(flat).scatter(0, index, values).reshape(acts.shape)
