"""Tiny models and transcoders for the graph tests (built in the test, no training)."""

from __future__ import annotations

import torch

from gridlens.models.gpt import GridGPT
from gridlens.sae.transcoder import Transcoder, TranscoderConfig
from gridlens.world import generate

D, LAYERS, D_MLP = 16, 2, 24


def tiny_model(seed: int = 0, sparse_bias: float = 0.0) -> GridGPT:
    """A random 2-layer GridGPT with perturbed LayerNorms; `sparse_bias` < 0 lowers the MLP
    biases so that few neurons fire (an exactly sparse MLP)."""
    model = GridGPT(
        vocab_size=15, n_ctx=404, d_model=D, n_layers=LAYERS, n_heads=2, d_head=8, d_mlp=D_MLP,
        d_vocab_out=15, seed=seed,
    )  # fmt: skip
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for block in model.blocks:
            for ln in (block.ln1, block.ln2):
                ln.weight.add_(0.3 * torch.randn(D, generator=g))
                ln.bias.add_(0.3 * torch.randn(D, generator=g))
            block.mlp.fc_in.bias.add_(sparse_bias)
        model.embed.weight.mul_(20)
    return model.eval()


def exact_transcoders(model: GridGPT) -> list[Transcoder]:
    """ReLU transcoders equal to the MLPs (features = neurons): no error anywhere."""
    out = []
    for layer, block in enumerate(model.blocks):
        cfg = TranscoderConfig.for_layer(layer, D, D_MLP, architecture="relu")
        tc = Transcoder(cfg)
        with torch.no_grad():
            w_in, b_in = block.mlp.fc_in.weight, block.mlp.fc_in.bias
            tc.W_enc.copy_((w_in * block.ln2.weight).T)
            tc.b_enc.copy_(b_in + w_in @ block.ln2.bias)
            tc.W_dec.copy_(block.mlp.fc_out.weight.T)
            tc.b_dec.copy_(block.mlp.fc_out.bias)
        out.append(tc.eval())
    return out


def random_transcoders(seed: int = 0, skip: bool = True, arch: str = "topk") -> list[Transcoder]:
    """Untrained transcoders with a skip connection and biases (errors are large)."""
    out = []
    for layer in range(LAYERS):
        cfg = TranscoderConfig.for_layer(layer, D, 32, architecture=arch, k=4, skip=skip)
        tc = Transcoder(cfg, seed=seed + layer)
        g = torch.Generator().manual_seed(seed + layer)
        with torch.no_grad():
            tc.W_enc.normal_(generator=g)
            tc.b_enc.normal_(generator=g)
            tc.b_dec.normal_(generator=g)
            if skip:
                tc.W_skip.normal_(0, 0.1, generator=g)
        out.append(tc.eval())
    return out


def one_quiz(task: str = "contact", seed: int = 0) -> torch.Tensor:
    return generate([task], 1, seed=seed).tokens[0]
