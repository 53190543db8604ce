"""Splicing an SAE into the model: its reconstruction (or an edit of its latents) replaces the
activation at its hook site, through full forward passes and KV-cached generation alike.

Hooks see [batch, pos, d_in] (or [batch, pos, heads, d_head] at `attn.hook_z`, flattened to
the SAE's d_in); during cached generation a hook sees only the positions being decoded, and
`hook.start` says which absolute position the tensor's first one is, so position masks stay right.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from gridlens.errors import ConfigError
from gridlens.models.hooks import HookPoint
from gridlens.sae.model import SparseAutoencoder

Edit = Callable[[torch.Tensor], torch.Tensor]
Positions = str | torch.Tensor | Sequence[int] | slice | None


def position_selector(positions: Positions, length: int = 404) -> torch.Tensor | None:
    """A bool mask [length] of absolute positions (None = every position).

    Accepts a name from gridlens.sae.activations.POSITION_MASKS ("all", "grid", "no_markers"),
    a bool mask, a slice or a sequence of positions.
    """
    if positions is None:
        return None
    if isinstance(positions, str):
        from gridlens.sae.activations import position_mask

        return position_mask(positions, length)
    mask = torch.zeros(length, dtype=torch.bool)
    if isinstance(positions, slice):
        mask[positions] = True
        return mask
    given = torch.as_tensor(positions)
    if given.dtype == torch.bool:
        if given.dim() != 1:
            raise ConfigError(f"a position mask is 1-D [length], got {tuple(given.shape)}")
        return given.clone()
    index = given.long().reshape(-1)
    if index.numel() and (index.min() < 0 or index.max() >= length):
        raise ConfigError(f"positions must lie in [0, {length}), got {index.tolist()[:10]}")
    mask[index] = True
    return mask


def window(mask: torch.Tensor | None, hook: HookPoint, n_pos: int) -> torch.Tensor | None:
    """The part of an absolute position mask a hook's tensor covers: positions
    [hook.start, hook.start + n_pos) (False beyond the mask's length); None = all."""
    if mask is None:
        return None
    start = getattr(hook, "start", 0)
    out = torch.zeros(n_pos, dtype=torch.bool)
    covered = mask[start : start + n_pos]
    out[: covered.numel()] = covered
    return out


def encode_inference(sae: SparseAutoencoder, x: torch.Tensor) -> torch.Tensor:
    """Latents with inference behaviour (BatchTopK uses its threshold, not the batch ranking)."""
    if not sae.training:
        return sae.encode(x)
    sae.eval()
    try:
        return sae.encode(x)
    finally:
        sae.train()


def splice_hooks(
    sae: SparseAutoencoder,
    keep_error: bool = False,
    edit: Edit | None = None,
    positions: Positions = None,
) -> list[tuple[str, Callable]]:
    """[(sae.cfg.hook_name, hook_fn)] for `model.hooks(...)` / `run_with_hooks(fwd_hooks=...)`.

    The hook replaces the activation x by decode(edit(encode(x))) at `positions` (all if None).
    keep_error=True adds back the SAE's error x - decode(encode(x)), i.e. returns
    x + decode(edit(latents)) - decode(latents), so that only the edit changes the model (with no
    edit, x exactly). `edit(latents [rows, d_sae]) -> latents` may ablate, amplify or steer.
    Gradients flow through the hook (for attribution through the SAE basis).
    """
    mask = position_selector(positions)
    d_in = sae.cfg.d_in

    def hook_fn(act: torch.Tensor, hook: HookPoint) -> torch.Tensor | None:
        if keep_error and edit is None:
            return None
        shape = act.shape
        if shape[-1] != d_in and act.dim() >= 4 and shape[-1] * shape[-2] == d_in:
            flat = act.reshape(*shape[:-2], d_in)  # attn.hook_z: [batch, pos, head, d_head]
        elif shape[-1] == d_in:
            flat = act
        else:
            raise ConfigError(
                f"SAE for {sae.cfg.hook_name} has d_in={d_in}; the activation at {hook.name} "
                f"has shape {tuple(shape)}"
            )
        chosen = window(mask, hook, flat.shape[1])
        x = flat if chosen is None else flat[:, chosen.to(flat.device)]
        if x.numel() == 0:
            return None
        x_in = x.to(sae.W_enc.dtype)
        latents = encode_inference(sae, x_in)
        edited = latents if edit is None else edit(latents)
        if edited.shape != latents.shape:
            raise ConfigError(
                f"edit must return latents of shape {tuple(latents.shape)}, got "
                f"{tuple(edited.shape)}"
            )
        if keep_error:
            new = x + ((edited - latents) @ sae.W_dec).to(x.dtype)
        else:
            new = sae.decode(edited).to(x.dtype)
        if chosen is None:
            out = new
        else:
            out = flat.clone()
            out[:, chosen.to(flat.device)] = new
        return out.reshape(shape)

    return [(sae.cfg.hook_name, hook_fn)]
