"""Transcoders: sparse dictionaries that read an MLP's input and write its output.

A transcoder is an SAE whose input and target sites differ (Dunefsky et al. 2024; the
replacement layers of Ameisen et al. 2025). Ours reads `blocks.L.ln2.hook_normalized` (the MLP
input before LayerNorm's affine map, which the encoder absorbs) and predicts
`blocks.L.hook_mlp_out`:
    pre  = x @ W_enc + b_enc                      (no b_dec shift: b_dec lives in output space)
    f    = the SAE architecture's nonlinearity (topk, jumprelu, ...)
    out  = f @ W_dec + b_dec (+ x @ W_skip when `skip`)
It trains through gridlens.sae.train like an SAE (the store yields input and target side by
side) and is saved in a directory like an SAE's (gridlens.sae.transcoder_io: SAELens 6's format
for the ReLU and JumpReLU transcoders it has, ours for TopK and BatchTopK).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from gridlens.errors import ConfigError
from gridlens.sae.model import SAEConfig, SparseAutoencoder


def transcoder_sites(layer: int) -> tuple[str, str]:
    """(input site, target site) of the transcoder replacing block `layer`'s MLP."""
    return f"blocks.{layer}.ln2.hook_normalized", f"blocks.{layer}.hook_mlp_out"


def site_layer(hook_name: str) -> int:
    """The block index in a `blocks.L....` hook name."""
    parts = hook_name.split(".")
    if len(parts) < 3 or parts[0] != "blocks" or not parts[1].isdigit():
        raise ConfigError(f"{hook_name!r} is not a block site (blocks.L....)")
    return int(parts[1])


@dataclass(frozen=True)
class TranscoderConfig(SAEConfig):
    """An SAEConfig whose reconstruction target is another site (`target_hook_name`, width
    `d_out`); `skip` adds a linear skip connection W_skip [d_in, d_out]."""

    target_hook_name: str = "blocks.3.hook_mlp_out"
    d_out: int = 0
    skip: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.architecture == "gated":
            raise ConfigError("transcoders take the relu, topk, batchtopk or jumprelu encoders")
        if self.d_out < 1:
            raise ConfigError(f"a transcoder needs d_out >= 1, got {self.d_out}")

    @classmethod
    def for_layer(cls, layer: int, d_model: int, d_sae: int, **kwargs: Any) -> TranscoderConfig:
        """The transcoder of block `layer`'s MLP."""
        source, target = transcoder_sites(layer)
        return cls(
            d_model, d_sae, hook_name=source, target_hook_name=target, d_out=d_model, **kwargs
        )


class Transcoder(SparseAutoencoder):
    """x [..., d_in] -> latents [..., d_sae] -> prediction of the target [..., d_out]."""

    def __init__(self, cfg: TranscoderConfig, seed: int = 0):
        super().__init__(cfg, seed)
        generator = torch.Generator().manual_seed(seed + 1)
        w_dec = torch.randn(cfg.d_sae, cfg.d_out, generator=generator)
        self.W_dec = nn.Parameter(w_dec / w_dec.norm(dim=1, keepdim=True) * 0.1)
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_out))
        self.W_skip = nn.Parameter(torch.zeros(cfg.d_in, cfg.d_out)) if cfg.skip else None
        self.register_buffer("_zero_in", torch.zeros(cfg.d_in), persistent=False)

    @property
    def b_in(self) -> torch.Tensor:
        """What the encoder subtracts from its input: nothing (b_dec is in output space)."""
        return self._zero_in

    def centred(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.cfg.d_in:
            raise ConfigError(
                f"transcoder for {self.cfg.hook_name} expects d_in={self.cfg.d_in}, "
                f"got {x.shape[-1]}"
            )
        return x

    def skip_out(self, x: torch.Tensor) -> torch.Tensor | float:
        """The skip connection's output (0 without one)."""
        return x @ self.W_skip if self.W_skip is not None else 0.0

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(prediction of the target site, latents)."""
        latents = self.encode(x)
        return self.decode(latents) + self.skip_out(x), latents


@torch.no_grad()
def fold_transcoder_scales(tc: Transcoder, scale_in: float, scale_out: float) -> Transcoder:
    """Make a transcoder trained on (x * scale_in -> y * scale_out) work on raw activations."""
    tc.W_enc *= scale_in
    tc.W_dec /= scale_out
    tc.b_dec /= scale_out
    if tc.W_skip is not None:
        tc.W_skip *= scale_in / scale_out
    return tc


def replacement_hooks(transcoders: dict[int, Transcoder]) -> list:
    """Hooks replacing each listed block's MLP output by its transcoder's prediction (from the
    same forward pass's MLP input)."""
    hooks = []
    for layer, tc in transcoders.items():
        source, target = transcoder_sites(layer)
        seen: dict[str, torch.Tensor] = {}

        def read(x, hook, seen=seen):
            seen["x"] = x

        def write(out, hook, seen=seen, tc=tc):
            pred, _ = tc(seen.pop("x").to(tc.W_enc.dtype))
            return pred.to(out.dtype)

        hooks += [(source, read), (target, write)]
    return hooks


@torch.no_grad()
def evaluate_transcoders(
    model, transcoders: dict[int, Transcoder], quizzes, batch_size: int = 64
) -> dict[str, Any]:
    """Per layer: explained variance of the MLP output, mse, l0 and dead fraction on the
    predicted grid's cells; and the loss recovered with every listed MLP replaced at once:
    (L_zero - L_replaced) / (L_zero - L_clean), L_zero with those MLP outputs zeroed."""
    from gridlens.analysis.core import grid_metrics
    from gridlens.sae.activations import collect
    from gridlens.sae.metrics import loss_recovered, reconstruction_stats

    layers: dict[str, dict[str, float]] = {}
    for layer, tc in sorted(transcoders.items()):
        source, target = transcoder_sites(layer)
        rows = collect(model, quizzes.tokens, source, "grid", batch_size, target_hook=target)
        rows = rows.to(tc.W_enc.device, tc.W_enc.dtype)
        pred, latents = tc(rows[:, : tc.cfg.d_in])
        stats = reconstruction_stats(rows[:, tc.cfg.d_in :], pred, latents)
        layers[str(layer)] = {k: stats[k] for k in ("explained_variance", "mse", "l0")}
        layers[str(layer)]["dead_fraction"] = stats["dead_fraction"]
    zero = [
        (transcoder_sites(layer)[1], lambda out, hook: torch.zeros_like(out))
        for layer in transcoders
    ]
    tokens = quizzes.tokens
    clean = float(grid_metrics(model, tokens, batch_size=batch_size).loss.mean())
    zeroed = float(grid_metrics(model, tokens, zero, batch_size=batch_size).loss.mean())
    replaced = grid_metrics(model, tokens, replacement_hooks(transcoders), batch_size=batch_size)
    loss = float(replaced.loss.mean())
    return {
        "format": "gridlens.transcoder_metrics",
        "format_version": 1,
        "layers": layers,
        "loss_clean": clean,
        "loss_zero": zeroed,
        "loss_replaced": loss,
        "loss_recovered": loss_recovered(zeroed, loss, clean),
        "cell_accuracy_replaced": float(replaced.cell_accuracy.mean()),
    }
