"""Inference-time optimised encoders: a trained dictionary's decoder, codes found by pursuit.

Seed 001 ("Replacing SAE encoders with inference-time optimisation", after Blumensath & Davies
2008) throws the encoder away and solves the sparse approximation problem
min ||x - codes @ decoder|| with at most k non-zero (and, as SAE latents, non-negative) codes:

- matching pursuit: k times, take the atom whose unit direction has the largest inner product
  with the residual, add that projection to its code and subtract it from the residual (an atom
  may be picked again; earlier codes are never revised);
- gradient pursuit: k times, add the best atom to the active set, then take one exact line-search
  step along the gradient restricted to the active set (an approximation of orthogonal matching
  pursuit made of matrix products), clipping codes at 0.

Both run on all rows at once ([n, d_sae] dense codes) and return at most k non-zeros per row.
`PursuitSAE` wraps a trained SAE so that every tool (metrics, splicing, labels) uses a pursuit
encoder with its decoder; `x - b_dec` is the signal, as for the learned encoder.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from gridlens.errors import ConfigError, unknown_name
from gridlens.sae.model import SparseAutoencoder

ENCODERS = ("learned", "mp", "gp")


def _check(x: torch.Tensor, decoder: torch.Tensor, k: int) -> None:
    if x.dim() != 2 or decoder.dim() != 2 or x.shape[1] != decoder.shape[1]:
        raise ConfigError(
            f"pursuit takes x [n, d_in] and decoder [d_sae, d_in], got {tuple(x.shape)} and "
            f"{tuple(decoder.shape)}"
        )
    if not 1 <= k <= decoder.shape[0]:
        raise ConfigError(f"k must lie in [1, d_sae={decoder.shape[0]}], got {k}")


def _pick(scores: torch.Tensor, nonnegative: bool) -> torch.Tensor:
    """Each row's best atom: the largest score (nonnegative codes) or largest |score|."""
    return scores.argmax(1) if nonnegative else scores.abs().argmax(1)


@torch.no_grad()
def matching_pursuit(
    x: torch.Tensor, decoder: torch.Tensor, k: int, nonnegative: bool = True
) -> torch.Tensor:
    """Codes [n, d_sae] with at most k non-zeros per row such that codes @ decoder ~ x."""
    _check(x, decoder, k)
    norms = decoder.norm(dim=1).clamp_min(1e-12)
    unit = decoder / norms[:, None]
    rows = torch.arange(x.shape[0], device=x.device)
    codes = x.new_zeros(x.shape[0], decoder.shape[0])
    residual = x.clone()
    for _ in range(k):
        scores = residual @ unit.T
        best = _pick(scores, nonnegative)
        step = scores[rows, best]
        if nonnegative:
            step = step.clamp_min(0.0)
        codes[rows, best] += step / norms[best]
        residual -= step[:, None] * unit[best]
    return codes


@torch.no_grad()
def gradient_pursuit(
    x: torch.Tensor, decoder: torch.Tensor, k: int, nonnegative: bool = True
) -> torch.Tensor:
    """Codes [n, d_sae] with at most k non-zeros per row such that codes @ decoder ~ x."""
    _check(x, decoder, k)
    norms = decoder.norm(dim=1).clamp_min(1e-12)
    rows = torch.arange(x.shape[0], device=x.device)
    codes = x.new_zeros(x.shape[0], decoder.shape[0])
    for _ in range(k):
        residual = x - codes @ decoder
        grad = residual @ decoder.T  # minus half the gradient of ||residual||^2
        active = codes != 0
        active[rows, _pick(grad / norms, nonnegative)] = True
        grad = grad * active
        direction = grad @ decoder
        step = (direction * residual).sum(1) / (direction * direction).sum(1).clamp_min(1e-30)
        codes = codes + step[:, None] * grad
        if nonnegative:
            codes = codes.clamp_min(0.0)
    return codes


PURSUITS: dict[str, Callable[..., torch.Tensor]] = {
    "mp": matching_pursuit,
    "gp": gradient_pursuit,
}


class PursuitSAE(SparseAutoencoder):
    """A trained SAE's dictionary (W_dec, b_dec) with a pursuit encoder at L0 <= k."""

    def __init__(self, sae: SparseAutoencoder, method: str, k: int, chunk: int = 4096):
        if method not in PURSUITS:
            raise unknown_name("pursuit encoder", method, tuple(PURSUITS))
        super().__init__(sae.cfg)
        self.to(sae.W_dec.device, sae.W_dec.dtype)
        with torch.no_grad():  # only the dictionary is used
            self.W_dec.copy_(sae.W_dec)
            self.b_dec.copy_(sae.b_dec)
        self.method, self.k, self.chunk = method, k, chunk
        self.eval()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        flat = self.centred(x).reshape(-1, self.cfg.d_in)
        pursuit = PURSUITS[self.method]
        codes = [pursuit(c, self.W_dec, self.k) for c in flat.split(self.chunk)]
        return torch.cat(codes).reshape(*x.shape[:-1], self.cfg.d_sae)


def with_encoder(sae: SparseAutoencoder, encoder: str, k: int | None) -> SparseAutoencoder:
    """`sae` itself for "learned", else a PursuitSAE on its dictionary at L0 <= k."""
    if encoder not in ENCODERS:
        raise unknown_name("encoder", encoder, ENCODERS)
    if encoder == "learned":
        return sae
    if k is None:
        raise ConfigError(f"the {encoder} encoder needs a target L0 k")
    return PursuitSAE(sae, encoder, k)
