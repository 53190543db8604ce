"""Export a GridGPT to a TransformerLens `HookedTransformer` and import it back.

TransformerLens is an optional extra (`pip install gridlens[tl]`); nothing here patches it.
The exported model is a stock `HookedTransformer` built from a `HookedTransformerConfig`
(LayerNorm, ReLU MLP, standard positional embedding), then adjusted after construction:

- MyGPT has no final LayerNorm: `ln_final` is replaced by an identity module and `setup()` is
  called again, so `ln_final.hook_*` names disappear (ActivationCache helpers that fold the
  final LayerNorm, such as `apply_ln_to_stack`, do not apply to this model);
- the fixed sinusoidal positions are written into `W_pos`; attention and output biases are 0;
- the BOS shift is NOT inside the exported model: it expects the *shifted* input
  `to_tl_input(tokens)` = `F.pad(tokens, (1, -1))` (a 0 prepended as BOS, the last token
  dropped), and then its logits at position p equal GridGPT's logits at p (which predict
  token p). `from_tl_output` drops the BOS column of a generated TL sequence.

Decoding: TransformerLens's KV cache works for this model when given an explicit all-ones
attention mask (it has no tokenizer, and token 0 is a colour, never padding):
`tl_generate` does exactly that. `HookedTransformer.generate(use_past_kv_cache=True)` itself
is wrong for this model (standard positions, no tokenizer): docs/transformer_lens.md has a
reproduction.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from gridlens.errors import ConfigError, GridlensError
from gridlens.models.config import GridGPTConfig
from gridlens.models.gpt import GridGPT, shift_tokens, sinusoidal_positions


def _require_tl():
    try:
        import transformer_lens
    except ImportError:  # pragma: no cover - the extra is installed in CI
        raise GridlensError(
            "TransformerLens is not installed: pip install 'gridlens[tl]'"
        ) from None
    return transformer_lens


class NoFinalLayerNorm(nn.Identity):
    """Stands in for `ln_final`: MyGPT reads the residual stream out directly."""


def to_tl_input(tokens: torch.Tensor) -> torch.Tensor:
    """GridGPT tokens -> the input the exported HookedTransformer expects (the BOS shift)."""
    return shift_tokens(tokens)


def from_tl_output(tl_tokens: torch.Tensor) -> torch.Tensor:
    """A TL sequence that starts with the BOS 0 -> GridGPT tokens (drop the BOS column)."""
    return tl_tokens[:, 1:]


def tl_config(cfg: GridGPTConfig, device: Any = "cpu", dtype: torch.dtype = torch.float32):
    """The HookedTransformerConfig of a GridGPT configuration."""
    tl = _require_tl()
    if cfg.d_head != cfg.d_value:
        raise ConfigError(
            f"TransformerLens needs one head size for q, k and v; this model has d_head="
            f"{cfg.d_head} for q/k and d_model/n_heads={cfg.d_value} for v"
        )
    return tl.HookedTransformerConfig(
        n_layers=cfg.n_layers,
        d_model=cfg.d_model,
        n_ctx=cfg.n_ctx,
        d_head=cfg.d_head,
        n_heads=cfg.n_heads,
        d_mlp=cfg.d_mlp,
        d_vocab=cfg.vocab_size,
        d_vocab_out=cfg.d_vocab_out,
        act_fn="relu",
        normalization_type="LN",
        eps=cfg.ln_eps,
        positional_embedding_type="standard",
        default_prepend_bos=False,
        original_architecture="GridGPT",
        model_name="gridgpt",
        device=str(device),
        dtype=dtype,
        init_weights=False,
    )


@torch.no_grad()
def to_transformer_lens(model: GridGPT, device: Any = None, dtype: torch.dtype | None = None):
    """A stock HookedTransformer with the same weights (it expects `to_tl_input(tokens)`)."""
    tl = _require_tl()
    cfg = model.cfg
    device = device or model.device
    dtype = dtype or model.dtype
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        hooked = tl.HookedTransformer(tl_config(cfg, device, dtype), move_to_device=False)
    hooked.ln_final = NoFinalLayerNorm()
    hooked.setup()  # rebuild hook_dict / mod_dict without ln_final's hooks
    h, dk, d = cfg.n_heads, cfg.d_head, cfg.d_model

    def put(param: torch.Tensor, value: torch.Tensor) -> None:
        param.copy_(value.to(param.dtype))

    put(hooked.embed.W_E, model.embed.weight)
    put(hooked.pos_embed.W_pos, sinusoidal_positions(cfg.n_ctx, d, cfg.pos_scale))
    for block, ours in zip(hooked.blocks, model.blocks, strict=True):
        put(block.ln1.w, ours.ln1.weight)
        put(block.ln1.b, ours.ln1.bias)
        put(block.ln2.w, ours.ln2.weight)
        put(block.ln2.b, ours.ln2.bias)
        a = ours.attn
        put(block.attn.W_Q, a.w_q.transpose(1, 2))
        put(block.attn.W_K, a.w_k.transpose(1, 2))
        put(block.attn.W_V, a.w_v.transpose(1, 2))
        put(block.attn.W_O, a.w_o.view(h, dk, d))
        for bias in (block.attn.b_Q, block.attn.b_K, block.attn.b_V, block.attn.b_O):
            bias.zero_()
        put(block.mlp.W_in, ours.mlp.fc_in.weight.T)
        put(block.mlp.b_in, ours.mlp.fc_in.bias)
        put(block.mlp.W_out, ours.mlp.fc_out.weight.T)
        put(block.mlp.b_out, ours.mlp.fc_out.bias)
    put(hooked.unembed.W_U, model.unembed.weight.T)
    put(hooked.unembed.b_U, model.unembed.bias)
    return hooked.eval()


@torch.no_grad()
def from_transformer_lens(hooked, shift_input: bool = True, atol: float = 1e-6) -> GridGPT:
    """A GridGPT from a HookedTransformer of MyGPT's shape (e.g. one made by the export).

    Refuses, naming the reason, models GridGPT cannot represent: a real final LayerNorm,
    attention biases, learned (non-sinusoidal) positions, another activation or normalisation.
    """
    c = hooked.cfg
    problems = []
    if c.act_fn != "relu":
        problems.append(f"act_fn is {c.act_fn!r}, not 'relu'")
    if c.normalization_type != "LN":
        problems.append(f"normalization_type is {c.normalization_type!r}, not 'LN'")
    if c.positional_embedding_type != "standard":
        problems.append(f"positional_embedding_type is {c.positional_embedding_type!r}")
    if isinstance(getattr(hooked, "ln_final", None), nn.Module) and not isinstance(
        hooked.ln_final, nn.Identity
    ):
        problems.append("it has a final LayerNorm (MyGPT has none)")
    if problems:
        raise ConfigError(
            "cannot import this HookedTransformer as a GridGPT: " + "; ".join(problems)
        )
    cfg = GridGPTConfig(
        vocab_size=c.d_vocab,
        n_ctx=c.n_ctx,
        d_model=c.d_model,
        n_layers=c.n_layers,
        n_heads=c.n_heads,
        d_head=c.d_head,
        d_mlp=c.d_mlp,
        d_vocab_out=c.d_vocab_out,
        shift_input=shift_input,
        ln_eps=c.eps,
    )
    if cfg.d_value != c.d_head:
        raise ConfigError(f"cannot import: d_head {c.d_head} != d_model / n_heads {cfg.d_value}")
    pos = sinusoidal_positions(cfg.n_ctx, cfg.d_model, cfg.pos_scale)
    if not torch.allclose(hooked.pos_embed.W_pos.float().cpu(), pos, atol=atol):
        raise ConfigError("cannot import: W_pos is not MyGPT's sinusoidal table")
    model = GridGPT(cfg, seed=0)
    h, d = cfg.n_heads, cfg.d_model
    model.embed.weight.copy_(hooked.embed.W_E)
    for block, ours in zip(hooked.blocks, model.blocks, strict=True):
        for bias in ("b_Q", "b_K", "b_V", "b_O"):
            if getattr(block.attn, bias).abs().max() > atol:
                raise ConfigError(f"cannot import: attention bias {bias} is not zero")
        ours.ln1.weight.copy_(block.ln1.w)
        ours.ln1.bias.copy_(block.ln1.b)
        ours.ln2.weight.copy_(block.ln2.w)
        ours.ln2.bias.copy_(block.ln2.b)
        ours.attn.w_q.copy_(block.attn.W_Q.transpose(1, 2))
        ours.attn.w_k.copy_(block.attn.W_K.transpose(1, 2))
        ours.attn.w_v.copy_(block.attn.W_V.transpose(1, 2))
        ours.attn.w_o.copy_(block.attn.W_O.reshape(h * c.d_head, d))
        ours.mlp.fc_in.weight.copy_(block.mlp.W_in.T)
        ours.mlp.fc_in.bias.copy_(block.mlp.b_in)
        ours.mlp.fc_out.weight.copy_(block.mlp.W_out.T)
        ours.mlp.fc_out.bias.copy_(block.mlp.b_out)
    model.unembed.weight.copy_(hooked.unembed.W_U.T)
    model.unembed.bias.copy_(hooked.unembed.b_U)
    return model.to(hooked.cfg.device).eval()


@torch.no_grad()
def tl_generate(
    hooked,
    tokens: torch.Tensor,
    start: int,
    temperature: float = 0.0,
    seed: int = 0,
    use_cache: bool = True,
) -> torch.Tensor:
    """Regenerate GridGPT tokens [start, L) with an exported HookedTransformer.

    The working path for TL decoding: the shifted prefix goes through TransformerLens's own
    key-value cache with an explicit all-ones attention mask (nothing is padding: token 0 is a
    colour), then one token per step. Same sampling rule and generator use as GridGPT.complete.
    """
    tl = _require_tl()
    from gridlens.models.generate import _pick

    n, length = tokens.shape
    out = tokens.clone()
    x = to_tl_input(out)
    generator = None
    if temperature > 0:
        generator = torch.Generator(device=tokens.device).manual_seed(seed)
    cache_cls = (
        getattr(tl, "TransformerLensKeyValueCache", None) or tl.HookedTransformerKeyValueCache
    )
    cache = cache_cls.init_cache(hooked.cfg, hooked.cfg.device, n) if use_cache else None
    prefix = x[:, : start + 1]
    for p in range(start, length):
        if use_cache:
            step = prefix if p == start else out[:, p - 1 : p]
            logits = hooked(step, past_kv_cache=cache, attention_mask=torch.ones_like(step))
        else:
            logits = hooked(to_tl_input(out)[:, : p + 1])
        out[:, p] = _pick(logits[:, -1], temperature, generator)
    return out


def tl_generate_builtin(
    hooked, tokens: torch.Tensor, start: int, use_past_kv_cache: bool = False, **kwargs: Any
) -> torch.Tensor:
    """HookedTransformer.generate on the shifted prefix (greedy), mapped back to our tokens.

    Needs stop_at_eos=False (the model has no tokenizer and no end-of-sequence token).
    """
    _n, length = tokens.shape
    prefix = to_tl_input(tokens)[:, : start + 1]
    generated = hooked.generate(
        prefix,
        max_new_tokens=length - start,
        do_sample=False,
        stop_at_eos=False,
        use_past_kv_cache=use_past_kv_cache,
        verbose=False,
        return_type="tokens",
        **kwargs,
    )
    return from_tl_output(generated)


__all__ = [
    "NoFinalLayerNorm",
    "from_tl_output",
    "from_transformer_lens",
    "tl_config",
    "tl_generate",
    "tl_generate_builtin",
    "to_tl_input",
    "to_transformer_lens",
]
