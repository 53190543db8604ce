"""The gated SAE (Rajamanoharan et al. 2024), with its auxiliary loss.

A gate decides which latents fire, a magnitude path how much, sharing encoder directions:
    pi_gate = (x - b_dec) @ W_enc + b_gate
    pi_mag  = (x - b_dec) @ (W_enc * exp(r_mag)) + b_mag
    f       = 1[pi_gate > 0] * relu(pi_mag)
Training loss: MSE + l1_coefficient * sum_i relu(pi_gate)_i * ||W_dec_i|| + the auxiliary
reconstruction of x from relu(pi_gate) through a frozen copy of the decoder (W_dec and b_dec
detached, as in the paper; SAELens lets it train the decoder), which gives the gate's
parameters the gradient the Heaviside step cannot. Parameters are named as SAELens's "gated"
architecture (no b_enc), so files load in either library.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from gridlens.sae.model import SAEConfig, SparseAutoencoder
from gridlens.sae.sparse import gated_encode, sparse_decode
from gridlens.sae.transcoder import Transcoder, TranscoderConfig

GATED_WEIGHTS = ("W_enc", "W_dec", "b_dec", "b_gate", "b_mag", "r_mag")


class GatedSAE(SparseAutoencoder):
    """x [..., d_in] -> gated latents [..., d_sae] -> reconstruction [..., d_in]."""

    def __init__(self, cfg: SAEConfig, seed: int = 0):
        super().__init__(cfg, seed)
        del self.b_enc
        self.b_gate = nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_mag = nn.Parameter(torch.zeros(cfg.d_sae))
        self.r_mag = nn.Parameter(torch.zeros(cfg.d_sae))

    def gate_and_magnitude(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pi_gate, pi_mag), both [..., d_sae], with one encoder matmul."""
        shared = self.centred(x) @ self.W_enc
        return shared + self.b_gate, shared * self.r_mag.exp() + self.b_mag

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return gated_latents(*self.gate_and_magnitude(x))

    def auxiliary_loss(self, x: torch.Tensor, pi_gate: torch.Tensor) -> torch.Tensor:
        """||x - (relu(pi_gate) @ W_dec + b_dec)||^2 per row, averaged, decoder frozen."""
        via_gate = torch.relu(pi_gate) @ self.W_dec.detach() + self.b_dec.detach()
        return (via_gate - x).pow(2).sum(-1).mean()

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Unit-norm decoder rows; W_enc, b_gate and b_mag absorb the norms (r_mag unchanged)."""
        norms = self.W_dec.norm(dim=1).clamp_min(1e-8)
        self.W_dec /= norms[:, None]
        self.W_enc *= norms[None, :]
        self.b_gate *= norms
        self.b_mag *= norms


# Above this share of open gates the dense products beat the sparse kernels (about 15% at 1024
# latents on one CPU thread: benchmarks/sae_speed.py, "gated at L0 = k")
SPARSE_GATES_BELOW = 0.1


def sparse_gated_terms(sae: GatedSAE, x: torch.Tensor):
    """The gated loss's pieces through the sparse kernels: (reconstruction, L1 of relu(pi_gate)
    weighted by decoder norms, auxiliary loss, latent values [nnz], their indices [nnz]); None
    when too many gates are open for the kernels to pay. Equal to the dense terms."""
    encoded = gated_encode(
        x, sae.W_enc, sae.b_gate, sae.r_mag, sae.b_mag, sae.b_dec, SPARSE_GATES_BELOW
    )
    if encoded is None:
        return None
    gate, magnitude, index, offsets = encoded
    recon = sparse_decode(magnitude, index, sae.W_dec, sae.b_dec, offsets)
    sparsity = (gate * sae.W_dec.norm(dim=1)[index]).sum() / x.shape[0]
    via_gate = sparse_decode(gate, index, sae.W_dec.detach(), sae.b_dec.detach(), offsets)
    aux = (via_gate - x).pow(2).sum(-1).mean()
    return recon, sparsity, aux, magnitude, index


def gated_latents(pi_gate: torch.Tensor, pi_mag: torch.Tensor) -> torch.Tensor:
    """1[pi_gate > 0] * relu(pi_mag): no gradient through the gate (the auxiliary loss's job)."""
    return (pi_gate > 0).to(pi_mag.dtype) * torch.relu(pi_mag)


def build_sae(cfg: SAEConfig, seed: int = 0) -> SparseAutoencoder:
    """The module of cfg's architecture (GatedSAE for "gated"; a Transcoder for its config)."""
    if isinstance(cfg, TranscoderConfig):
        return Transcoder(cfg, seed)
    return GatedSAE(cfg, seed) if cfg.architecture == "gated" else SparseAutoencoder(cfg, seed)


def weight_names(cfg: SAEConfig) -> tuple[str, ...]:
    """The SAELens weight names of an architecture (thresholds apart)."""
    return GATED_WEIGHTS if cfg.architecture == "gated" else ("W_enc", "b_enc", "W_dec", "b_dec")
