"""Autoregressive generation with a KV cache: greedy or temperature sampling, batched, seeded.

`generate(model, tokens, positions)` regenerates the tokens at any set of positions (the same
for the whole batch or one mask per sequence), feeding every other position as given
(teacher forcing). `complete` regenerates the last grid of each quiz.

With shift_input=True (MyGPT), the logits at position p predict token p, so generating token p
needs the model input up to position p (tokens < p). With shift_input=False, token p is read
from the logits at p - 1.
"""

from __future__ import annotations

from typing import Any

import torch

from gridlens.errors import ConfigError, TokenError


def positions_mask(positions: Any, n: int, length: int, device: torch.device) -> torch.Tensor:
    """A bool mask [n, length] from a mask ([length] or [n, length]), a slice, a (start, end)
    pair or an iterable of positions."""
    if isinstance(positions, slice):
        mask = torch.zeros(length, dtype=torch.bool)
        mask[positions] = True
    elif (
        isinstance(positions, tuple)
        and len(positions) == 2
        and all(isinstance(p, int) for p in positions)
    ):
        start, end = positions
        if not 0 <= start <= end <= length:
            raise TokenError(f"span ({start}, {end}) outside [0, {length}]")
        mask = torch.zeros(length, dtype=torch.bool)
        mask[start:end] = True
    else:
        mask = torch.as_tensor(positions)
        if mask.dtype != torch.bool:
            idx = mask.long().flatten()
            if idx.numel() and (idx.min() < 0 or idx.max() >= length):
                raise TokenError(f"positions must lie in [0, {length}), got {idx.tolist()[:10]}")
            mask = torch.zeros(length, dtype=torch.bool)
            mask[idx] = True
    if mask.shape == (length,):
        mask = mask.expand(n, length)
    if mask.shape != (n, length):
        raise TokenError(
            f"positions mask must be [{length}] or [{n}, {length}], got {tuple(mask.shape)}"
        )
    return mask.to(device)


def _pick(
    logits: torch.Tensor, temperature: float, generator: torch.Generator | None
) -> torch.Tensor:
    if temperature == 0.0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


@torch.no_grad()
def generate(
    model,
    tokens: torch.Tensor,
    positions: Any,
    temperature: float = 0.0,
    seed: int | None = 0,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> torch.Tensor:
    """A copy of `tokens` [n, L] with the tokens at `positions` generated left to right.

    temperature 0 is greedy (argmax); otherwise samples from softmax(logits / temperature) with
    `generator`, or a torch.Generator seeded with `seed`. use_cache=False recomputes the whole
    prefix at every step (the reference the cache is tested against).
    """
    from gridlens.models.gpt import KVCache

    tokens = model.check_tokens(tokens)
    if not temperature >= 0.0:
        raise ConfigError(f"temperature must be >= 0, got {temperature}")
    n, length = tokens.shape
    mask = positions_mask(positions, n, length, tokens.device)
    out = tokens.clone()
    columns = mask.any(0).nonzero().flatten()
    if columns.numel() == 0:
        return out
    first, last = int(columns[0]), int(columns[-1])
    offset = 0 if model.cfg.shift_input else 1  # logits at q predict token q + offset
    if first - offset < 0:
        raise TokenError("a model without the BOS shift cannot generate token 0 (nothing to read)")
    if temperature > 0.0 and generator is None:
        generator = torch.Generator(device=tokens.device)
        generator.manual_seed(0 if seed is None else int(seed))

    active = model._active()
    if use_cache:
        cache = KVCache(model.cfg, n, length, model.device, model.dtype)
        q = first - offset
        logits = model._forward(model.model_input(out)[:, : q + 1], active, kv=cache, shifted=True)
        for p in range(first, last + 1):
            if p > first:
                q = p - offset
                step = out[:, q - 1 : q] if model.cfg.shift_input else out[:, q : q + 1]
                logits = model._forward(step, active, kv=cache, start=q, shifted=True)
            choice = _pick(logits[:, -1], temperature, generator)
            out[:, p] = torch.where(mask[:, p], choice, out[:, p])
    else:
        for p in range(first, last + 1):
            q = p - offset
            logits = model._forward(out[:, : q + 1], active)
            choice = _pick(logits[:, -1], temperature, generator)
            out[:, p] = torch.where(mask[:, p], choice, out[:, p])
    return out


def last_grid_positions(length: int) -> slice:
    """Positions of the cells of the last grid of a quiz of `length` tokens (4 x (1 + H*W))."""
    if length % 4 or length < 8:
        raise TokenError(f"a quiz has 4 x (1 + H*W) tokens; {length} is not of that form")
    cells = length // 4 - 1
    return slice(length - cells, length)


def complete(
    model,
    tokens: torch.Tensor,
    temperature: float = 0.0,
    seed: int | None = 0,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> torch.Tensor:
    """The quizzes with their last grid (the predicted one) regenerated autoregressively."""
    tokens = model.check_tokens(tokens)
    return generate(
        model, tokens, last_grid_positions(tokens.shape[1]), temperature, seed, generator, use_cache
    )
