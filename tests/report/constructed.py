"""Hand-built GridGPTs whose behaviour is known, for testing the claims' machinery."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gridlens.models import GridGPT, GridGPTConfig

D = 128
#: 15 even dimensions of the slowest sinusoids: nearly 0 at every position (at most 0.06), so a
#: token embedded there is read back unchanged, while the other dimensions carry the position
TOKEN_DIMS = torch.arange(98, 128, 2)


def copy_model(offset: int = 100, layer: int = 0, n_layers: int = 2, gain: float = 3.0):
    """Head 0 of `layer` attends from query p to key p - offset and copies the token there to
    the logits; every other head, MLP and layer writes zero.

    Tokens embed as 2 x one-hot on TOKEN_DIMS. The query is a ridge-regression map M of the
    normalised positions (other dimensions) with Y[p] M ~ Y[p - offset], scaled by 100, the key
    the identity: the score peaks at k = p - offset. The value reads TOKEN_DIMS and the output
    writes them back x gain; the unembedding reads TOKEN_DIMS x 4. So the logits are the attended
    token's one-hot x ~33 plus the query input's own embedding x 8: the head wins.
    offset 100 copies the previous grid's cell; offset 0 repeats the token before the one
    predicted."""
    cfg = GridGPTConfig(d_model=D, n_layers=n_layers, n_heads=4, d_head=D, d_mlp=16)
    model = GridGPT(cfg, seed=0).eval()
    pos_dims = torch.ones(D, dtype=torch.bool)
    pos_dims[TOKEN_DIMS] = False
    y = F.layer_norm(model.pos.double(), (D,))[:, pos_dims]
    p = torch.arange(offset, cfg.n_ctx)
    eye = torch.eye(y.shape[1], dtype=torch.float64)
    m = torch.linalg.solve(y[p].T @ y[p] + 0.1 * eye, y[p].T @ y[p - offset])
    tokens = torch.arange(15)
    with torch.no_grad():
        model.embed.weight.zero_()
        model.embed.weight[tokens, TOKEN_DIMS] = 2.0
        for block in model.blocks:
            block.attn.w_o.zero_()
            block.mlp.fc_out.weight.zero_()
            block.mlp.fc_out.bias.zero_()
        attn = model.blocks[layer].attn
        attn.w_q[0].zero_()
        attn.w_k[0].zero_()
        attn.w_q[0][: len(m)][:, pos_dims] = (100.0 * m.T).float()
        attn.w_k[0][: len(m)][:, pos_dims] = torch.eye(len(m))
        attn.w_v[0].zero_()
        attn.w_v[0][tokens, TOKEN_DIMS] = 1.0
        attn.w_o[tokens, TOKEN_DIMS] = gain
        model.unembed.weight.zero_()
        model.unembed.weight[tokens, TOKEN_DIMS] = 4.0
        model.unembed.bias.zero_()
    return model


BACKGROUND_BIAS = 50.0


def needs_mlp(model: GridGPT, layer: int) -> GridGPT:
    """The model with the readout's background logit lowered by BACKGROUND_BIAS and MLP `layer`
    adding it back everywhere (a constant output, 12.5 on TOKEN_DIMS[0], read x 4): zeroing
    that MLP makes the model avoid colour 0, so every answer with a background cell breaks."""
    with torch.no_grad():
        model.unembed.bias[0] = -BACKGROUND_BIAS
        model.blocks[layer].mlp.fc_out.bias[TOKEN_DIMS[0]] = BACKGROUND_BIAS / 4.0
    return model
