"""GridGPT: Fleuret's MyGPT, reproduced exactly, with TransformerLens-named hooks and a KV cache.

Architecture (MyGPT): token embedding plus fixed sinusoidal positions
`sin(t / pos_scale^((j - j%2)/D) + pi/2 * (j%2))`; pre-LayerNorm blocks; attention without biases
(q, k of size d_head, v of size d_model / n_heads, output projection without bias); ReLU MLP with
biases; no final LayerNorm; a readout with bias; and (shift_input=True) the BOS shift
`F.pad(x, (1, -1))`, so logits at position p predict token p.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from gridlens.errors import ConfigError, TokenError
from gridlens.models.config import GridGPTConfig, get_preset
from gridlens.models.hooks import (
    BLOCK_SITES,
    PATTERN_SITES,
    ActivationCache,
    HookFn,
    HookPoint,
    NameFilter,
    hook_names,
    resolve_names,
)

_NO_HOOKS: dict[str, list[HookFn]] = {}


def sinusoidal_positions(n_ctx: int, d_model: int, pos_scale: float = 1e5) -> torch.Tensor:
    """MyGPT's AddPositionalEncoding table [n_ctx, d_model], computed as the original does (f32)."""
    t = torch.arange(n_ctx, dtype=torch.float32)[:, None]
    j = torch.arange(d_model, dtype=torch.float32)[None, :]
    k = j % 2
    return torch.sin(t / (pos_scale ** ((j - k) / d_model)) + math.pi / 2 * k)


def shift_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """MyGPT's BOS shift: prepend a 0 and drop the last token (`F.pad(x, (1, -1))`)."""
    return F.pad(tokens, (1, -1))


class Attention(nn.Module):
    """MyGPT's QKVAttention weights: w_q, w_k [H, d_head, D], w_v [H, d_value, D] and
    w_o [H*d_value, D]."""

    def __init__(self, cfg: GridGPTConfig):
        super().__init__()
        h, d = cfg.n_heads, cfg.d_model
        self.w_q = nn.Parameter(torch.empty(h, cfg.d_head, d))
        self.w_k = nn.Parameter(torch.empty(h, cfg.d_head, d))
        self.w_v = nn.Parameter(torch.empty(h, cfg.d_value, d))
        self.w_o = nn.Parameter(torch.empty(h * cfg.d_value, d))


class MLP(nn.Module):
    def __init__(self, cfg: GridGPTConfig):
        super().__init__()
        self.fc_in = nn.Linear(cfg.d_model, cfg.d_mlp)
        self.fc_out = nn.Linear(cfg.d_mlp, cfg.d_model)


class Block(nn.Module):
    def __init__(self, cfg: GridGPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps)
        self.attn = Attention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps)
        self.mlp = MLP(cfg)


class KVCache:
    """Keys and values of every layer for positions [0, length), preallocated for `capacity`.

    Stored as [batch, head, pos, d] (the layout of scaled_dot_product_attention). A forward pass
    at `start` writes positions [start, start + t) and attends to [0, start + t): nothing in the
    cache depends on token values, so token 0 (a colour) is never treated as padding.
    """

    def __init__(self, cfg: GridGPTConfig, batch: int, capacity: int, device: Any, dtype: Any):
        shape_k = (batch, cfg.n_heads, capacity, cfg.d_head)
        shape_v = (batch, cfg.n_heads, capacity, cfg.d_value)
        self.k = [torch.zeros(shape_k, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.v = [torch.zeros(shape_v, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.batch, self.capacity, self.length = batch, capacity, 0

    def check(self, start: int, t: int, batch: int) -> None:
        if batch != self.batch:
            raise TokenError(f"KV cache was made for batch {self.batch}, got batch {batch}")
        if start != self.length:
            raise TokenError(
                f"KV cache holds positions [0, {self.length}); the next call must start at "
                f"{self.length}, not {start}"
            )
        if start + t > self.capacity:
            raise TokenError(f"KV cache capacity {self.capacity} exceeded ({start} + {t})")


class GridGPT(nn.Module):
    """A MyGPT-compatible GPT with TransformerLens hook names."""

    def __init__(self, cfg: GridGPTConfig | str | None = None, seed: int | None = 0, **overrides):
        super().__init__()
        if cfg is None:
            cfg = GridGPTConfig(**overrides)
        elif isinstance(cfg, str):
            cfg = get_preset(cfg, **overrides)
        elif overrides:
            cfg = cfg.replace(**overrides)
        if not isinstance(cfg, GridGPTConfig):
            raise ConfigError(
                f"expected a GridGPTConfig or a preset name, got {type(cfg).__name__}"
            )
        self.cfg = cfg
        # PyTorch's default initialisers draw from the global RNG; ours are explicit (seed), so
        # construction leaves the global RNG as it was
        with torch.random.fork_rng(devices=[]):
            self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
            self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
            self.unembed = nn.Linear(cfg.d_model, cfg.d_vocab_out)
        self.register_buffer(
            "pos", sinusoidal_positions(cfg.n_ctx, cfg.d_model, cfg.pos_scale), persistent=False
        )
        self.hook_names: list[str] = hook_names(cfg.n_layers)
        self._names = [
            {site: f"blocks.{layer}.{site}" for site in BLOCK_SITES}
            for layer in range(cfg.n_layers)
        ]
        self._context_hooks: list[tuple[str, HookFn]] = []
        self._hook_start = 0  # first absolute position of the forward in progress (HookPoint.start)
        self.init_weights(seed)

    # ------------------------------------------------------------------ set-up

    @torch.no_grad()
    def init_weights(self, seed: int | None = 0) -> None:
        """MyGPT's initialisation (embedding N(0, 0.02), LayerNorm 1/0, attention randn/sqrt(D),
        PyTorch's default Linear init), drawn from an explicit seed."""
        g = torch.Generator()
        if seed is None:
            g.seed()  # non-deterministic, without touching the global RNG
        else:
            g.manual_seed(seed)

        def uniform_(p: torch.Tensor, bound: float) -> None:
            p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) * bound)

        def normal_(p: torch.Tensor, std: float) -> None:
            p.copy_(torch.randn(p.shape, generator=g) * std)

        normal_(self.embed.weight, 0.02)
        for block in self.blocks:
            for ln in (block.ln1, block.ln2):
                ln.weight.fill_(1.0)
                ln.bias.zero_()
            for w in (block.attn.w_q, block.attn.w_k, block.attn.w_v, block.attn.w_o):
                normal_(w, 1 / math.sqrt(w.shape[-1]))
        for lin in (
            [b.mlp.fc_in for b in self.blocks]
            + [b.mlp.fc_out for b in self.blocks]
            + [self.unembed]
        ):
            bound = 1 / math.sqrt(lin.in_features)
            uniform_(lin.weight, bound)
            uniform_(lin.bias, bound)

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    def set_n_ctx(self, n_ctx: int) -> GridGPT:
        """Change the longest accepted sequence (MyGPT's positions have no hard limit)."""
        self.cfg = self.cfg.replace(n_ctx=int(n_ctx))
        pos = sinusoidal_positions(self.cfg.n_ctx, self.cfg.d_model, self.cfg.pos_scale)
        self.pos = pos.to(device=self.pos.device, dtype=self.pos.dtype)
        return self

    def extra_repr(self) -> str:
        c = self.cfg
        return (
            f"d_model={c.d_model}, n_layers={c.n_layers}, n_heads={c.n_heads}, "
            f"d_head={c.d_head}, d_mlp={c.d_mlp}, vocab={c.vocab_size}->{c.d_vocab_out}, "
            f"n_ctx={c.n_ctx}, shift_input={c.shift_input}"
        )

    # ------------------------------------------------------------------ input checks

    def check_tokens(self, tokens: Any, start: int = 0) -> torch.Tensor:
        """Validate a token tensor [batch, pos] (dtype, range, length, device) and return it."""
        if isinstance(tokens, np.ndarray):
            tokens = torch.from_numpy(tokens)
        if not isinstance(tokens, torch.Tensor):
            raise TokenError(
                f"tokens must be a torch.Tensor [batch, pos], got {type(tokens).__name__}"
            )
        if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
            raise TokenError(f"tokens must be integers (torch.long), got dtype {tokens.dtype}")
        if tokens.dim() != 2:
            raise TokenError(f"tokens must have shape [batch, pos], got {tuple(tokens.shape)}")
        if tokens.shape[1] == 0:
            raise TokenError("tokens are empty (0 positions)")
        if start + tokens.shape[1] > self.cfg.n_ctx:
            raise TokenError(
                f"sequence of {start + tokens.shape[1]} positions is longer than the model's "
                f"context n_ctx={self.cfg.n_ctx} (use model.set_n_ctx(...) to allow longer ones)"
            )
        if tokens.device != self.device:
            raise TokenError(
                f"tokens are on {tokens.device} but the model is on {self.device}; "
                f"move them with tokens.to(model.device)"
            )
        if tokens.numel():
            low, high = torch.aminmax(tokens)
            if low < 0 or high >= self.cfg.vocab_size:
                bad = ((tokens < 0) | (tokens >= self.cfg.vocab_size)).nonzero()[0].tolist()
                raise TokenError(
                    f"token {tokens[bad[0], bad[1]].item()} at [{bad[0]}, {bad[1]}] is outside the "
                    f"vocabulary [0, {self.cfg.vocab_size})"
                )
        return tokens.long()

    def model_input(self, tokens: torch.Tensor) -> torch.Tensor:
        """The token ids the embedding sees (the BOS shift applied when shift_input)."""
        return shift_tokens(tokens) if self.cfg.shift_input else tokens

    # ------------------------------------------------------------------ hooks

    def _collect(self, fwd_hooks: Sequence[tuple[NameFilter, HookFn]]) -> list[tuple[str, HookFn]]:
        out = []
        for entry in fwd_hooks:
            if not (isinstance(entry, tuple | list) and len(entry) == 2 and callable(entry[1])):
                raise ConfigError(
                    f"a forward hook is a pair (name or filter, function), got {entry!r}"
                )
            selector, fn = entry
            for name in resolve_names(selector, self.hook_names):
                out.append((name, fn))
        return out

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: Sequence[tuple[NameFilter, HookFn]] = ()) -> Iterator[GridGPT]:
        """Context manager: the hooks run on every forward pass inside, and are removed on exit
        (also after an exception)."""
        added = self._collect(fwd_hooks)
        self._context_hooks.extend(added)
        try:
            yield self
        finally:
            for item in added:
                for i in range(len(self._context_hooks) - 1, -1, -1):
                    if self._context_hooks[i] is item:
                        del self._context_hooks[i]
                        break

    def reset_hooks(self) -> None:
        """Remove every hook (context managers clean up on their own)."""
        self._context_hooks.clear()

    def _active(self, extra: list[tuple[str, HookFn]] | None = None) -> dict[str, list[HookFn]]:
        if not self._context_hooks and not extra:
            return _NO_HOOKS
        active: dict[str, list[HookFn]] = {}
        for name, fn in [*self._context_hooks, *(extra or [])]:
            active.setdefault(name, []).append(fn)
        return active

    def _site(self, active: dict[str, list[HookFn]], name: str, x: torch.Tensor) -> torch.Tensor:
        fns = active.get(name) if active else None
        if fns:
            point = HookPoint(name, start=self._hook_start)
            for fn in fns:
                out = fn(x, point)
                if out is not None:
                    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
                        raise ConfigError(
                            f"hook on {name!r} must return None or a tensor of shape "
                            f"{tuple(x.shape)}, got "
                            f"{getattr(out, 'shape', type(out).__name__)}"
                        )
                    x = out
        return x

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        tokens: torch.Tensor,
        stop_at_layer: int | None = None,
        *,
        kv_cache: KVCache | None = None,
        start: int = 0,
        shifted: bool = False,
    ) -> torch.Tensor:
        """Logits [batch, pos, d_vocab_out]; or the residual stream before block `stop_at_layer`.

        kv_cache/start: incremental decoding; `tokens` then holds positions [start, start + t) of
        the *model input* (already shifted: pass `shifted=True`, see `model_input`).
        """
        return self._forward(tokens, self._active(), stop_at_layer, kv_cache, start, shifted)

    def train_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """`forward(tokens)` without input checks or hooks: the training step's forward. The
        checks read token values on the host (a GPU sync per step) and break torch.compile's
        graph; training batches come from the generator and are valid by construction."""
        x = self.embed(self.model_input(tokens)) + self.pos[: tokens.shape[1]]
        for layer, block in enumerate(self.blocks):
            x = self._block(block, layer, x, _NO_HOOKS, None, 0)
        return self.unembed(x)

    def _forward(
        self,
        tokens: torch.Tensor,
        active: dict[str, list[HookFn]],
        stop_at_layer: int | None = None,
        kv: KVCache | None = None,
        start: int = 0,
        shifted: bool = False,
    ) -> torch.Tensor:
        tokens = self.check_tokens(tokens, start)
        n, t = tokens.shape
        if (
            stop_at_layer is not None
            and not -self.cfg.n_layers <= stop_at_layer <= self.cfg.n_layers
        ):
            raise ConfigError(
                f"stop_at_layer={stop_at_layer} outside [0, {self.cfg.n_layers}] for this model"
            )
        if kv is not None:
            if not shifted:
                raise TokenError("incremental decoding takes model input: pass shifted=True")
            if stop_at_layer is not None:
                raise ConfigError("a KV cache fills every layer: stop_at_layer cannot be used")
            kv.check(start, t, n)
        elif start:
            raise TokenError(f"start={start} needs a KV cache holding positions [0, {start})")
        x_in = tokens if shifted else self.model_input(tokens)
        self._hook_start = start
        site = self._site
        embed = site(active, "hook_embed", self.embed(x_in))
        pos = self.pos[start : start + t]
        if active.get("hook_pos_embed"):
            pos = site(active, "hook_pos_embed", pos.expand(n, t, -1))
        x = embed + pos
        blocks = self.blocks if stop_at_layer is None else self.blocks[:stop_at_layer]
        for layer, block in enumerate(blocks):
            x = self._block(block, layer, x, active, kv, start)
        if kv is not None:
            kv.length = start + t
        if stop_at_layer is not None:
            return x
        return self.unembed(x)

    def _ln(self, ln: nn.LayerNorm, x: torch.Tensor, active, names: dict[str, str], which: str):
        """LayerNorm with TransformerLens's sites: hook_scale, then hook_normalized = the
        normalised input *before* the affine weight and bias (as in TransformerLens 3.x)."""
        name_scale, name_norm = names[f"{which}.hook_scale"], names[f"{which}.hook_normalized"]
        if not active or not (active.get(name_scale) or active.get(name_norm)):
            return F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)
        if active.get(name_scale):
            centred = x - x.mean(-1, keepdim=True)
            scale = (centred.pow(2).mean(-1, keepdim=True) + ln.eps).sqrt()
            normalized = centred / self._site(active, name_scale, scale)
        else:
            normalized = F.layer_norm(x, ln.normalized_shape, None, None, ln.eps)
        normalized = self._site(active, name_norm, normalized)
        return normalized * ln.weight + ln.bias

    def _block(
        self,
        block: Block,
        layer: int,
        x,
        active,
        kv: KVCache | None,
        start: int,
        z: torch.Tensor | None = None,
        post: torch.Tensor | None = None,
        mlp_out: torch.Tensor | None = None,
    ):
        """One block. Given ``z`` (the head outputs) it starts at hook_z; given ``post`` (the
        MLP activations) or ``mlp_out`` (the MLP's output), with ``x`` the stream after the
        attention, it starts at hook_post or hook_mlp_out."""
        names, site = self._names[layer], self._site
        out = mlp_out
        if out is None:
            if post is None:
                x = self._attention_part(block, layer, x, active, kv, start, z)
                y = self._ln(block.ln2, x, active, names, "ln2")
                # the product as a 2-D tensor, so that the ReLU can run in place on it rather
                # than on a view (an in-place op on a view makes autograd copy the whole buffer
                # in backward); a fresh batch x pos x d_mlp buffer costs more in page faults
                # than the ReLU itself. Not in place if a hook saw `pre` (a cache keeps it).
                flat = F.linear(y.flatten(0, -2), block.mlp.fc_in.weight, block.mlp.fc_in.bias)
                pre = site(active, names["mlp.hook_pre"], flat.view(*y.shape[:-1], -1))
                if active.get(names["mlp.hook_pre"]):
                    post = F.relu(pre)
                else:
                    post = F.relu_(flat).view(pre.shape)
            post = site(active, names["mlp.hook_post"], post)
            out = F.linear(post, block.mlp.fc_out.weight, block.mlp.fc_out.bias)
        out = site(active, names["hook_mlp_out"], out)
        x = x + out
        return site(active, names["hook_resid_post"], x)

    def _attention_part(self, block: Block, layer: int, x, active, kv, start: int, z=None):
        """The stream after the block's attention (hook_resid_mid); with ``z`` given, from the
        head outputs on (no LayerNorm, projections or attention pattern computed)."""
        cfg, names, site = self.cfg, self._names[layer], self._site
        n, t, d = x.shape
        h, dv = cfg.n_heads, cfg.d_value
        attn = block.attn
        if z is None:
            x = site(active, names["hook_resid_pre"], x)
            z = self._heads(block, layer, x, active, kv, start)
        if active:
            z = site(active, names["attn.hook_z"], z)
        if active and active.get(names["attn.hook_result"]):
            result = torch.einsum("nthv,hvd->nthd", z, attn.w_o.view(h, dv, d))
            result = site(active, names["attn.hook_result"], result)
            attn_out = result.sum(2)
        else:
            attn_out = z.reshape(n, t, h * dv) @ attn.w_o
        attn_out = site(active, names["hook_attn_out"], attn_out)
        x = x + attn_out
        return site(active, names["hook_resid_mid"], x)

    def _heads(self, block: Block, layer: int, x, active, kv: KVCache | None, start: int):
        """The head outputs z [batch, pos, head, d_value] of the block whose input is ``x``."""
        cfg, names, site = self.cfg, self._names[layer], self._site
        n, t, d = x.shape
        h, dk, dv = cfg.n_heads, cfg.d_head, cfg.d_value
        attn = block.attn
        y = self._ln(block.ln1, x, active, names, "ln1")
        q = F.linear(y, attn.w_q.reshape(h * dk, d)).view(n, t, h, dk)
        k = F.linear(y, attn.w_k.reshape(h * dk, d)).view(n, t, h, dk)
        v = F.linear(y, attn.w_v.reshape(h * dv, d)).view(n, t, h, dv)
        if active:
            q = site(active, names["attn.hook_q"], q)
            k = site(active, names["attn.hook_k"], k)
            v = site(active, names["attn.hook_v"], v)
        qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if kv is not None:
            kv.k[layer][:, :, start : start + t] = kh
            kv.v[layer][:, :, start : start + t] = vh
            kh = kv.k[layer][:, :, : start + t]
            vh = kv.v[layer][:, :, : start + t]
        s = kh.shape[2]  # keys visible: positions [0, start + t)
        explicit = bool(active) and any(active.get(names[p]) for p in PATTERN_SITES)
        if not explicit:
            if start == 0:
                z = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True)
            elif t == 1:
                z = F.scaled_dot_product_attention(qh, kh, vh)
            else:
                z = F.scaled_dot_product_attention(
                    qh, kh, vh, attn_mask=self._visible(start, t, s, x.device)
                )
        else:
            scores = (qh @ kh.transpose(-1, -2)) / math.sqrt(dk)
            scores = scores.masked_fill(~self._visible(start, t, s, x.device), float("-inf"))
            scores = site(active, names["attn.hook_attn_scores"], scores)
            pattern = scores.softmax(dim=-1)
            pattern = site(active, names["attn.hook_pattern"], pattern)
            z = pattern @ vh
        return z.transpose(1, 2)  # [n, t, h, dv]

    def run_blocks(
        self,
        resid: torch.Tensor,
        start: int,
        stop: int | None = None,
        fwd_hooks: Sequence[tuple[NameFilter, HookFn]] = (),
        *,
        head_outputs: torch.Tensor | None = None,
        mlp_post: torch.Tensor | None = None,
        mlp_out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The residual stream after blocks [start, stop) given the stream entering block
        `start` ([batch, pos, d_model], positions from 0), with `fwd_hooks` active. Sweeps that
        change one late component reuse the clean prefix instead of recomputing it;
        `self.unembed` of the result after the last block gives the logits.

        Finer entry points into block `start`: ``head_outputs`` (its hook_z, [batch, pos, head,
        d_value]) skips its LayerNorm, projections and attention pattern; ``mlp_post`` (its
        mlp.hook_post, with `resid` then the stream after its attention, hook_resid_mid) runs
        only its MLP output projection; ``mlp_out`` (its hook_mlp_out, `resid` again
        hook_resid_mid) only adds it. Hooks before the entry point do not run."""
        stop = self.cfg.n_layers if stop is None else stop
        if not 0 <= start <= stop <= self.cfg.n_layers:
            raise ConfigError(
                f"run_blocks: need 0 <= start <= stop <= {self.cfg.n_layers}, got {start}, {stop}"
            )
        active = self._active(self._collect(fwd_hooks))
        self._hook_start = 0
        given = [e is not None for e in (head_outputs, mlp_post, mlp_out)]
        if sum(given) > 1:
            raise ConfigError("run_blocks: pass at most one of head_outputs, mlp_post, mlp_out")
        if any(given) and start == stop:
            raise ConfigError("run_blocks: an entry inside block `start` needs start < stop")
        x = resid
        for layer in range(start, stop):
            entry = layer == start
            x = self._block(
                self.blocks[layer],
                layer,
                x,
                active,
                None,
                0,
                z=head_outputs if entry else None,
                post=mlp_post if entry else None,
                mlp_out=mlp_out if entry else None,
            )
        return x

    @staticmethod
    def _visible(start: int, t: int, s: int, device) -> torch.Tensor:
        """Boolean [t, s]: query at position start+i sees key j iff j <= start+i."""
        rows = torch.arange(start, start + t, device=device)[:, None]
        return torch.arange(s, device=device)[None, :] <= rows

    # ------------------------------------------------------------------ TransformerLens-style API

    def run_with_hooks(
        self,
        tokens: torch.Tensor,
        fwd_hooks: Sequence[tuple[NameFilter, HookFn]] = (),
        stop_at_layer: int | None = None,
    ) -> torch.Tensor:
        """Forward pass with temporary hooks `[(name or filter, fn)]`; fn(tensor, hook) returns a
        replacement or None. Gradients flow through the hooks."""
        return self._forward(tokens, self._active(self._collect(fwd_hooks)), stop_at_layer)

    def run_with_cache(
        self,
        tokens: torch.Tensor,
        names: NameFilter = None,
        stop_at_layer: int | None = None,
        *,
        detach: bool = True,
        device: str | torch.device | None = None,
        fwd_hooks: Sequence[tuple[NameFilter, HookFn]] = (),
        names_filter: NameFilter = None,
    ) -> tuple[torch.Tensor | None, ActivationCache]:
        """Logits (None when stop_at_layer is given) and an ActivationCache name -> tensor.

        names: None (every site; attn.hook_result and the pattern force the explicit path), a
        name, a list of names, or a predicate on names; `names_filter` is TransformerLens's
        name for it. detach=False keeps the autograd graph (for attribution patching).
        fwd_hooks run before the cache records.
        """
        if names_filter is not None:
            if names is not None:
                raise ConfigError("pass names or names_filter, not both")
            names = names_filter
        chosen = resolve_names(names, self.hook_names)
        if stop_at_layer is not None:
            last = stop_at_layer if stop_at_layer >= 0 else self.cfg.n_layers + stop_at_layer
            chosen = [
                c for c in chosen if not c.startswith("blocks.") or int(c.split(".")[1]) < last
            ]
        store: dict[str, torch.Tensor] = {}

        def record(x: torch.Tensor, hook: HookPoint) -> None:
            y = x.detach() if detach else x
            store[hook.name] = y.to(device) if device is not None else y

        extra = self._collect(fwd_hooks) + [(name, record) for name in chosen]
        out = self._forward(tokens, self._active(extra), stop_at_layer)
        ordered = {name: store[name] for name in self.hook_names if name in store}
        return (None if stop_at_layer is not None else out), ActivationCache(
            ordered, self.hook_names
        )

    # ------------------------------------------------------------------ generation

    def generate(
        self,
        tokens: torch.Tensor,
        positions: Any,
        temperature: float = 0.0,
        seed: int | None = 0,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Regenerate the tokens at `positions` (see gridlens.models.generate.generate)."""
        from gridlens.models.generate import generate

        return generate(self, tokens, positions, temperature, seed, generator, use_cache)

    def complete(
        self,
        tokens: torch.Tensor,
        temperature: float = 0.0,
        seed: int | None = 0,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """The quizzes with their last (predicted) grid regenerated autoregressively."""
        from gridlens.models.generate import complete

        return complete(self, tokens, temperature, seed, generator, use_cache)

    # ------------------------------------------------------------------ misc

    def save(self, path: str, **kwargs: Any) -> Any:
        from gridlens.models.checkpoints import save

        return save(self, path, **kwargs)

    def to_transformer_lens(self, **kwargs: Any) -> Any:
        from gridlens.models.transformer_lens import to_transformer_lens

        return to_transformer_lens(self, **kwargs)

    def hook_filter(self, *sites: str) -> Callable[[str], bool]:
        """A predicate selecting names ending in any of `sites` (e.g. 'hook_resid_post')."""
        return lambda name: any(name.endswith(s) for s in sites)
