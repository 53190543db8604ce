"""The edge graph of a GridGPT and a forward pass that patches any set of its edges.

Senders write into the residual stream: the input embeddings (token + positions, ``input``),
every head (``L{l}H{h}``, its output after W_O) and every MLP (``MLP{l}``). Receivers read it:
each head's query, key and value inputs separately (``L{l}H{h}.q|k|v``), each MLP and the
``logits``. An edge joins a sender to every receiver after it: heads of layer l feed MLP l and
everything in later layers. The model is pre-LayerNorm, so a receiver's input is
``LN(sum of its senders' outputs)``: patching an edge replaces that sender's term in that sum,
*before* the LayerNorm, for that receiver only.

:func:`edge_forward` takes a weight per edge (1: the sender's output in this run, 0: its output
in the corrupted run, in between: a mix) and runs the model receiver by receiver. The weights
may be per example and may require grad, which is all EAP and EAP-IG need.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gridlens.errors import ConfigError


@dataclass(frozen=True)
class Edge:
    sender: str
    receiver: str

    @property
    def name(self) -> str:
        return f"{self.sender}->{self.receiver}"


class EdgeGraph:
    """Nodes and edges of a model with config ``cfg`` (a GridGPTConfig).

    ``senders`` are in the order the forward pass computes them; ``receivers`` likewise, with
    ``logits`` last. ``edges[i]`` is the edge with weight index i; ``index[(s, r)]`` inverts it.
    ``stages``: the forward pass's steps (layer 0's heads, MLP 0, layer 1's heads, ...,
    logits), each as (first receiver, number of receivers, senders before it);
    ``receiver_stage[r]`` is receiver r's step.
    """

    def __init__(self, cfg):
        self.cfg = cfg
        h = cfg.n_heads
        self.senders = ["input"]
        self.receivers: list[str] = []
        self.receiver_stage: list[int] = []
        self.edges: list[Edge] = []
        self._src: list[int] = []
        self._dst: list[int] = []
        self.stages: list[tuple[int, int, int]] = []
        for layer in range(cfg.n_layers):
            heads = [f"L{layer}H{i}" for i in range(h)]
            self._stage([f"{head}.{part}" for part in "qkv" for head in heads])
            self.senders += heads
            self._stage([f"MLP{layer}"])
            self.senders.append(f"MLP{layer}")
        self._stage(["logits"])
        self.index = {(e.sender, e.receiver): i for i, e in enumerate(self.edges)}
        self.src = torch.tensor(self._src)
        self.dst = torch.tensor(self._dst)

    def _stage(self, names: list[str]) -> None:
        self.stages.append((len(self.receivers), len(names), len(self.senders)))
        for name in names:
            self.receiver_stage.append(len(self.stages) - 1)
            r = len(self.receivers)
            self.receivers.append(name)
            for s, sender in enumerate(self.senders):
                self.edges.append(Edge(sender, name))
                self._src.append(s)
                self._dst.append(r)

    def __len__(self) -> int:
        return len(self.edges)

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.edges]

    def mask(self, edges) -> torch.Tensor:
        """Bool [n_edges], true on ``edges`` (Edge objects or (sender, receiver) pairs)."""
        out = torch.zeros(len(self.edges), dtype=torch.bool)
        for e in edges:
            key = (e.sender, e.receiver) if isinstance(e, Edge) else tuple(e)
            if key not in self.index:
                raise ConfigError(f"no edge {key[0]}->{key[1]} in this model's edge graph")
            out[self.index[key]] = True
        return out

    def matrix(self, weights: torch.Tensor) -> torch.Tensor:
        """Edge weights [..., n_edges] as [..., n_receivers, n_senders] (0 where no edge)."""
        shape = (*weights.shape[:-1], len(self.receivers), len(self.senders))
        out = weights.new_zeros(shape)
        out[..., self.dst.to(weights.device), self.src.to(weights.device)] = weights
        return out


def embed(model, tokens: torch.Tensor) -> torch.Tensor:
    """The ``input`` sender: token embedding plus positions, [batch, pos, d_model]."""
    tokens = model.check_tokens(tokens)
    return model.embed(model.model_input(tokens)) + model.pos[: tokens.shape[1]]


def edge_forward(
    model,
    graph: EdgeGraph,
    tokens: torch.Tensor,
    weights: torch.Tensor | None = None,
    corrupt: torch.Tensor | None = None,
    *,
    start: int = 0,
    upstream: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, sender outputs [n_senders, batch, pos, d_model]) with every receiver reading
    ``w * this run's sender + (1 - w) * corrupt``; ``weights`` [n_edges] or [batch, n_edges]
    (None: all 1, the plain model), ``corrupt`` the sender outputs of the corrupted run.

    ``start``: resume at that stage (see :attr:`EdgeGraph.stages`), taking the senders before
    it from ``upstream`` (the sender outputs of a run whose weights differ only from there on).
    """
    if weights is not None and corrupt is None:
        raise ConfigError("edge_forward: weights need the corrupted run's sender outputs")
    if start and upstream is None:
        raise ConfigError("edge_forward: resuming at a later stage needs the upstream senders")
    h = model.cfg.n_heads
    outs = upstream[: graph.stages[start][2]] if start else embed(model, tokens)[None]
    _, n, t, d = outs.shape
    if weights is not None:
        w = graph.matrix(weights.to(device=outs.device, dtype=outs.dtype))
        w = w.expand(n, *w.shape[-2:]) if w.dim() == 2 else w
    delta = outs if weights is None else outs - corrupt[: len(outs)]  # this run - corrupted

    def inputs(stage: int) -> torch.Tensor:
        """Inputs [batch, receivers, pos, d] of the receivers of ``stage``."""
        r, count, k = graph.stages[stage]
        if weights is None:
            return outs.sum(0)[:, None].expand(n, count, t, d)
        mix = w[:, r : r + count, :k]
        return corrupt[:k].sum(0)[:, None] + torch.einsum("brk,kbtd->brtd", mix, delta)

    for stage in range(start, len(graph.stages) - 1):
        block = model.blocks[stage // 2]
        if stage % 2 == 0:
            new = _heads(model, block, inputs(stage), h)
        else:
            ln = block.ln2
            y = F.layer_norm(inputs(stage)[:, 0], (d,), ln.weight, ln.bias, ln.eps)
            new = block.mlp.fc_out(F.relu(block.mlp.fc_in(y)))[None]
        k = len(outs)
        outs = torch.cat([outs, new])
        delta = outs if weights is None else torch.cat([delta, new - corrupt[k : len(outs)]])
    return model.unembed(inputs(len(graph.stages) - 1)[:, 0]), outs


def _heads(model, block, x: torch.Tensor, h: int) -> torch.Tensor:
    """Head outputs [head, batch, pos, d_model] from the q, k, v inputs [batch, 3h, pos, d]."""
    n, _, t, d = x.shape
    attn = block.attn
    x = F.layer_norm(x, (d,), block.ln1.weight, block.ln1.bias, block.ln1.eps)
    xq, xk, xv = x.view(n, 3, h, t, d).unbind(1)
    q = torch.einsum("bhtd,hed->bhte", xq, attn.w_q)
    k = torch.einsum("bhtd,hed->bhte", xk, attn.w_k)
    v = torch.einsum("bhtd,hed->bhte", xv, attn.w_v)
    z = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return torch.einsum("bhte,hed->hbtd", z, attn.w_o.view(h, model.cfg.d_value, d))


def path_patch(
    model, graph: EdgeGraph, clean: torch.Tensor, corrupted: torch.Tensor, edges
) -> torch.Tensor:
    """Logits of the clean run with ``edges`` (Edge objects or (sender, receiver) pairs) fed
    the corrupted run's sender outputs, every other edge the clean run's."""
    with torch.no_grad():
        _, corrupt = edge_forward(model, graph, corrupted)
    weights = (~graph.mask(edges)).float()
    return edge_forward(model, graph, clean, weights, corrupt)[0]
