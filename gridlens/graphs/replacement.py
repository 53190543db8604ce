"""The local replacement model of one quiz: every MLP replaced by its transcoder, with the
attention patterns and LayerNorm scales frozen from the clean run and error nodes holding what
the transcoders miss (Ameisen et al. 2025).

Everything is float64 and computed from a float64 copy of the model. With the patterns and
scales held constant, each block is affine in the residual stream: LayerNorm becomes
x -> centre(x) / scale * w + b, attention a fixed mix of value vectors, and the MLP output
    transcoder decoder(features) + b_dec + skip(centre(x) / scale) + error,
so the stream is a sum of contributions from the token embeddings, the transcoder features,
the errors and constant biases, which gridlens.graphs.attribution decomposes exactly. With the
clean features (and `recompute=False`), `forward` reproduces the model's clean logits.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from gridlens.errors import ConfigError
from gridlens.sae.transcoder import Transcoder, transcoder_sites


def centre(x: torch.Tensor) -> torch.Tensor:
    """x minus its mean over the last axis (LayerNorm's centring; a symmetric projection)."""
    return x - x.mean(-1, keepdim=True)


@dataclass
class ReplacementModel:
    """The frozen pieces of one clean run (batch of one quiz), all float64."""

    tokens: torch.Tensor  # [T] the quiz
    embed: torch.Tensor  # [T, D] token embedding + position (the token nodes)
    scale1: torch.Tensor  # [L, T, 1] ln1 scales
    scale2: torch.Tensor  # [L, T, 1] ln2 scales
    pattern: torch.Tensor  # [L, H, T, T] attention patterns
    ov: torch.Tensor  # [L, H, D, D] y @ ov[l, h] is head h's output for LayerNorm output y
    ln1_weight: torch.Tensor  # [L, D]
    ln1_bias: torch.Tensor  # [L, D]
    activations: torch.Tensor  # [L, T, F] clean transcoder features
    errors: torch.Tensor  # [L, T, D] MLP output minus transcoder prediction
    transcoders: list[Transcoder]  # float64 copies, one per layer
    unembed_weight: torch.Tensor  # [V, D]
    unembed_bias: torch.Tensor  # [V]
    clean_logits: torch.Tensor  # [T, V] the model's own logits (float64 forward)

    @property
    def n_layers(self) -> int:
        return len(self.transcoders)

    @property
    def n_pos(self) -> int:
        return len(self.tokens)

    def attention(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """The frozen attention output [T, D] of block `layer` for stream x [T, D]."""
        y = centre(x) / self.scale1[layer] * self.ln1_weight[layer] + self.ln1_bias[layer]
        return torch.einsum("hts,se,hed->td", self.pattern[layer], y, self.ov[layer])

    def mlp_input(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """The transcoder's input (ln2.hook_normalized with the scale frozen)."""
        return centre(x) / self.scale2[layer]

    def forward(
        self,
        activations: torch.Tensor | None = None,
        recompute: bool = False,
        set_features: dict[tuple[int, int, int], float] | None = None,
        zero_sources: bool = False,
    ) -> torch.Tensor:
        """Logits [T, V] of the replacement model. activations: [L, T, F] features to use
        (default the clean ones); recompute: encode each transcoder's input instead (features
        then respond to upstream changes); set_features: (layer, pos, feature) -> value
        overrides applied in either mode; zero_sources: embeddings, features and errors all
        zero, which leaves the constant part."""
        return self._run(activations, recompute, set_features, zero_sources)[0]

    def pre_activations(self, zero_sources: bool = False) -> torch.Tensor:
        """[L, T, F] transcoder pre-activations with the clean features (or their constant
        part, with zero_sources)."""
        return self._run(None, False, None, zero_sources)[1]

    def _run(self, activations, recompute, set_features, zero_sources):
        acts = self.activations if activations is None else activations
        x = torch.zeros_like(self.embed) if zero_sources else self.embed.clone()
        pres = []
        for layer, tc in enumerate(self.transcoders):
            x = x + self.attention(layer, x)
            n2 = self.mlp_input(layer, x)
            pres.append(tc.pre_activation(n2))
            a = tc.activate(pres[-1]) if recompute else acts[layer].clone()
            if zero_sources:
                a = torch.zeros_like(a)
            for (lay, pos, feat), value in (set_features or {}).items():
                if lay == layer:
                    a[pos, feat] = value
            error = 0.0 if zero_sources else self.errors[layer]
            x = x + a @ tc.W_dec + tc.b_dec + tc.skip_out(n2) + error
        return x @ self.unembed_weight.T + self.unembed_bias, torch.stack(pres)


def _as_list(model, transcoders) -> list[Transcoder]:
    items = dict(enumerate(transcoders)) if isinstance(transcoders, list | tuple) else transcoders
    missing = [layer for layer in range(model.cfg.n_layers) if layer not in items]
    if missing:
        raise ConfigError(
            f"a replacement model needs a transcoder for every layer; missing {missing}"
        )
    out = []
    for layer in range(model.cfg.n_layers):
        tc = items[layer]
        if (tc.cfg.hook_name, tc.cfg.target_hook_name) != transcoder_sites(layer):
            raise ConfigError(
                f"transcoder for layer {layer} reads {tc.cfg.hook_name} -> "
                f"{tc.cfg.target_hook_name}, expected {transcoder_sites(layer)}"
            )
        out.append(copy.deepcopy(tc).double().cpu().eval().requires_grad_(False))
    return out


@torch.no_grad()
def build_replacement(model, transcoders, tokens: torch.Tensor) -> ReplacementModel:
    """Freeze one quiz's clean run (tokens [T] or [1, T]) into a ReplacementModel.
    transcoders: a list (one per layer) or a dict layer -> Transcoder."""
    tcs = _as_list(model, transcoders)
    tokens = tokens.reshape(1, -1).cpu()
    m = copy.deepcopy(model).double().cpu().eval().requires_grad_(False)
    names = ["hook_embed", "hook_pos_embed"]
    for layer in range(m.cfg.n_layers):
        names += [
            f"blocks.{layer}.{s}"
            for s in (
                "ln1.hook_scale",
                "ln2.hook_scale",
                "attn.hook_pattern",
                "ln2.hook_normalized",
                "hook_mlp_out",
            )
        ]
    logits, cache = m.run_with_cache(m.check_tokens(tokens), names=names)
    cfg = m.cfg
    h, dv, d = cfg.n_heads, cfg.d_value, cfg.d_model
    acts, errors, ov = [], [], []
    for layer, (block, tc) in enumerate(zip(m.blocks, tcs, strict=True)):
        n2 = cache[f"blocks.{layer}.ln2.hook_normalized"][0]
        pred, a = tc(n2)
        acts.append(a)
        errors.append(cache[f"blocks.{layer}.hook_mlp_out"][0] - pred)
        w_o = block.attn.w_o.view(h, dv, d)
        ov.append(torch.einsum("hvd,hve->hde", block.attn.w_v, w_o))
    stack = lambda site: torch.stack(  # noqa: E731
        [cache[f"blocks.{layer}.{site}"][0] for layer in range(cfg.n_layers)]
    )
    return ReplacementModel(
        tokens=tokens[0],
        embed=cache["hook_embed"][0] + cache["hook_pos_embed"][0],
        scale1=stack("ln1.hook_scale"),
        scale2=stack("ln2.hook_scale"),
        pattern=stack("attn.hook_pattern"),
        ov=torch.stack(ov),
        ln1_weight=torch.stack([b.ln1.weight for b in m.blocks]),
        ln1_bias=torch.stack([b.ln1.bias for b in m.blocks]),
        activations=torch.stack(acts),
        errors=torch.stack(errors),
        transcoders=tcs,
        unembed_weight=m.unembed.weight.detach(),
        unembed_bias=m.unembed.bias.detach(),
        clean_logits=logits[0],
    )
