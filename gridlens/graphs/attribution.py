"""Attribution graphs of one predicted cell over the replacement model (after Ameisen et al.
2025 and circuit-tracer, written for gridlens).

Nodes: active transcoder features (layer, position, feature), one error node per (layer,
position), one token node per position (embedding + position), and the target: the logit of
one token at one position. An edge s -> t is the direct effect of s on t's pre-activation:
s's output vector (activation x decoder row, the error vector, the embedding) times the
gradient of t through the frozen linear paths (attention with frozen patterns, LayerNorm with
frozen scales, skip connections), with every other feature held fixed. Because those paths are
affine, each node's pre-activation (and the logit) equals the sum of its incoming edges plus a
constant `bias` (biases carried along the paths) plus the edges from active features left out
of the graph (`unselected`): `rows_check` tests that.

Features enter the graph by influence, as in circuit-tracer: starting from the logit, the
features with the largest estimated influence on it (through the rows computed so far) are
attributed next, in batches, up to `max_features`. Pruning and the two quality scores follow
circuit-tracer's definitions: rows of |A| normalised to sum 1; node influence = sum over paths
to the logit; the replacement score = token influence / (token + error influence); the
completeness score = the influence-weighted share of incoming weight not from error nodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from gridlens.errors import ConfigError
from gridlens.graphs.replacement import ReplacementModel, centre


@dataclass
class AttributionGraph:
    """Nodes (features, errors, tokens, target) and the adjacency A[target, source]."""

    position: int  # the predicted cell
    token: int  # the logit's token
    features: np.ndarray  # [n_f, 3] (layer, position, feature), selected
    activations: np.ndarray  # [n_f] their clean activations
    n_layers: int
    n_pos: int  # positions 0..position (errors and tokens cover these)
    adjacency: np.ndarray  # [n, n] rows target, columns source, node order as `node_kind`
    bias: np.ndarray  # [n] constant part of each row (0 for error and token rows)
    unselected: np.ndarray  # [n] summed edges from active features not in the graph
    value: np.ndarray  # [n] pre-activation of each feature row, the logit for the target
    tokens: np.ndarray  # [T] the quiz
    labels: list[str] = field(default_factory=list)  # one per feature (filled by the CLI)

    @property
    def n_features(self) -> int:
        return len(self.features)

    @property
    def size(self) -> int:
        return self.n_features + self.n_layers * self.n_pos + self.n_pos + 1

    def error_index(self, layer: int, pos: int) -> int:
        return self.n_features + layer * self.n_pos + pos

    def token_index(self, pos: int) -> int:
        return self.n_features + self.n_layers * self.n_pos + pos

    @property
    def target_index(self) -> int:
        return self.size - 1

    def to_json(self, nodes: np.ndarray | None = None, edges: np.ndarray | None = None) -> dict:
        """The graph (or its pruned part: node and edge masks) as plain JSON."""
        nodes = np.ones(self.size, bool) if nodes is None else nodes
        edges = self.adjacency != 0 if edges is None else edges & (self.adjacency != 0)
        kept = np.flatnonzero(nodes)
        return {
            "format": "gridlens.attribution_graph",
            "format_version": 1,
            "position": self.position,
            "token": self.token,
            "tokens": self.tokens.tolist(),
            "nodes": [
                {"index": int(i), "kind": self.node_kind(i)[0], "layer": self.node_kind(i)[1],
                 "position": self.node_kind(i)[2],
                 "feature": int(self.features[i][2]) if i < self.n_features else None,
                 "activation": float(self.activations[i]) if i < self.n_features else None,
                 "label": self.labels[i] if i < len(self.labels) else ""}
                for i in kept
            ],
            "edges": [[int(t), int(s), float(self.adjacency[t, s])]
                      for t, s in zip(*np.nonzero(edges), strict=True)],
        }  # fmt: skip

    def node_kind(self, i: int) -> tuple[str, int, int]:
        """(kind, layer, position) of node i; the target's layer is n_layers."""
        i = int(i)
        if i < self.n_features:
            layer, pos, _ = self.features[i]
            return "feature", int(layer), int(pos)
        i -= self.n_features
        if i < self.n_layers * self.n_pos:
            return "error", i // self.n_pos, i % self.n_pos
        i -= self.n_layers * self.n_pos
        if i < self.n_pos:
            return "token", -1, i
        return "target", self.n_layers, self.position


# ------------------------------------------------------------------ the linear backward pass


def _attention_back(rm: ReplacementModel, layer: int, g: torch.Tensor) -> torch.Tensor:
    """Gradient [B, T, D] at block `layer`'s input from the gradient g at its attention's
    output stream (resid_mid), through the residual and the frozen attention."""
    n = g.shape[1]  # causal: positions after the targets get no gradient, so they are left out
    gm = torch.einsum("btd,hed->bhte", g, rm.ov[layer])
    gy = torch.einsum("hts,bhte->bse", rm.pattern[layer, :, :n, :n], gm)
    return g + centre(gy * rm.ln1_weight[layer]) / rm.scale1[layer, :n]


def _skip_back(rm: ReplacementModel, layer: int, g: torch.Tensor) -> torch.Tensor:
    """Gradient at resid_mid from the gradient at resid_post (features and errors fixed)."""
    tc = rm.transcoders[layer]
    if tc.W_skip is None:
        return g
    return g + centre(g @ tc.W_skip.T) / rm.scale2[layer, : g.shape[1]]


def _sweep(rm: ReplacementModel, g: torch.Tensor, layer: int, at_post: bool):
    """Gradients at every resid_post below the start ({k: [B, T, D]}) and at the embeddings,
    starting from g at block `layer`'s resid_post (at_post) or resid_mid."""
    posts = {}
    if at_post:
        posts[layer] = g
        g = _skip_back(rm, layer, g)
    for k in range(layer, -1, -1):
        g = _attention_back(rm, k, g)
        if k > 0:
            posts[k - 1] = g
            g = _skip_back(rm, k - 1, g)
    return posts, g


def _rows(rm: ReplacementModel, posts, g_embed, active: torch.Tensor, n_pos: int):
    """Edges [B, n_active + L * n_pos + n_pos] into a batch of targets from every active
    feature (rows of `active` [n, 3]), every error node and every token node."""
    b = g_embed.shape[0]
    out = torch.zeros(b, len(active) + rm.n_layers * n_pos + n_pos, dtype=torch.float64)
    for k, g in posts.items():
        tc = rm.transcoders[k]
        chosen = (active[:, 0] == k).nonzero().flatten()
        if len(chosen):
            pos, feat = active[chosen, 1], active[chosen, 2]
            direct = torch.einsum("bpd,pd->bp", g[:, pos], tc.W_dec[feat])
            out[:, chosen] = direct * rm.activations[k, pos, feat]
        start = len(active) + k * n_pos
        out[:, start : start + n_pos] = (g[:, :n_pos] * rm.errors[k, :n_pos]).sum(-1)
    start = len(active) + rm.n_layers * n_pos
    out[:, start:] = (g_embed[:, :n_pos] * rm.embed[:n_pos]).sum(-1)
    return out


def target_row(rm: ReplacementModel, position: int, token: int, active: torch.Tensor):
    """Edges into the logit of `token` at `position` (see `_rows` for the columns)."""
    g = torch.zeros(1, position + 1, rm.embed.shape[1], dtype=torch.float64)
    g[0, position] = rm.unembed_weight[token]
    posts, g_embed = _sweep(rm, g, rm.n_layers - 1, at_post=True)
    return _rows(rm, posts, g_embed, active, position + 1)[0]


def feature_rows(rm: ReplacementModel, targets: torch.Tensor, active: torch.Tensor, n_pos: int):
    """Edges into the pre-activations of features `targets` [B, 3] (one layer per call)."""
    layer = int(targets[0, 0])
    if (targets[:, 0] != layer).any():
        raise ConfigError("feature_rows takes targets of one layer")
    tc = rm.transcoders[layer]
    g = torch.zeros(len(targets), n_pos, rm.embed.shape[1], dtype=torch.float64)
    rows = torch.arange(len(targets))
    pos = targets[:, 1]
    g[rows, pos] = centre(tc.W_enc[:, targets[:, 2]].T) / rm.scale2[layer, pos]
    posts, g_embed = _sweep(rm, g, layer, at_post=False)
    return _rows(rm, posts, g_embed, active, n_pos)


def active_features(rm: ReplacementModel, last: int) -> torch.Tensor:
    """[n, 3] (layer, position, feature) of the non-zero features at positions <= last."""
    return rm.activations[:, : last + 1].nonzero()


# ------------------------------------------------------------------ influence and selection


def normalise_rows(a: np.ndarray) -> np.ndarray:
    """|A| with each row scaled to sum 1 (rows of zeros stay zero)."""
    m = np.abs(a)
    sums = m.sum(1, keepdims=True)
    return np.divide(m, sums, out=np.zeros_like(m), where=sums > 0)


def path_influence(normalised: np.ndarray, weights: np.ndarray, max_iter: int = 1000) -> np.ndarray:
    """weights @ (N + N^2 + ...): the influence of every node on the weighted targets."""
    current = weights @ normalised
    total = current.copy()
    for _ in range(max_iter):
        if not current.any():
            return total
        current = current @ normalised
        total += current
    raise ConfigError("influence did not converge: the graph has a cycle")


def _estimate(normed: dict[int, np.ndarray], target: np.ndarray, layers: np.ndarray) -> np.ndarray:
    """Influence of each active feature on the target through the computed rows: the target's
    normalised row, then the computed features' rows a layer at a time, top layer first
    (features of one layer do not feed each other, so each layer's influence is final)."""
    influence = target.copy()
    for layer in sorted({int(layers[i]) for i in normed}, reverse=True):
        index = [i for i in normed if layers[i] == layer]
        influence += influence[index] @ np.stack([normed[i] for i in index])
    return influence[: len(layers)]


@torch.no_grad()
def attribute(
    rm: ReplacementModel,
    position: int,
    token: int | None = None,
    max_features: int = 256,
    batch: int = 32,
    progress: bool = False,
) -> AttributionGraph:
    """The attribution graph of the logit of `token` (default: the quiz's token) at `position`,
    with up to `max_features` features chosen by influence."""
    if not 0 < position < rm.n_pos:
        raise ConfigError(f"position {position} outside [1, {rm.n_pos})")
    token = int(rm.tokens[position]) if token is None else int(token)
    active = active_features(rm, position)
    n_pos = position + 1
    target = target_row(rm, position, token, active)
    rows: dict[int, torch.Tensor] = {}
    normed: dict[int, np.ndarray] = {}
    layers = active[:, 0].numpy()
    wanted = min(max_features, len(active))
    target_normed = normalise_rows(target[None].numpy())[0]
    bar = _bar(progress, wanted)
    while len(rows) < wanted:
        if wanted == len(active):  # every feature goes in: no need to rank them
            chosen = [i for i in range(len(active)) if i not in rows][:batch]
        else:
            influence = _estimate(normed, target_normed, layers)
            influence[list(rows)] = -1
            chosen = np.argsort(-influence, kind="stable")[: min(batch, wanted - len(rows))]
        for layer in sorted({int(layers[i]) for i in chosen}):
            group = [int(i) for i in chosen if layers[i] == layer]
            for i, row in zip(group, feature_rows(rm, active[group], active, n_pos), strict=True):
                rows[i] = row
                normed[i] = normalise_rows(row[None].numpy())[0]
        if bar is not None:
            bar.update(len(chosen))
    if bar is not None:
        bar.close()
    return _assemble(rm, position, token, active, rows, target)


def _bar(show: bool, total: int):
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="attribution", unit="feature")


def _assemble(rm, position, token, active, rows, target) -> AttributionGraph:
    """The graph over the selected features: adjacency, biases, unselected parts, values."""
    selected = sorted(rows, key=lambda i: tuple(active[i].tolist()))
    n_active, n_sel = len(active), len(selected)
    n_pos = position + 1
    n_err_tok = rm.n_layers * n_pos + n_pos
    size = n_sel + n_err_tok + 1
    keep = torch.tensor(selected + list(range(n_active, n_active + n_err_tok)), dtype=torch.long)
    dropped = torch.ones(n_active, dtype=torch.bool)
    dropped[selected] = False
    adjacency = np.zeros((size, size))
    unselected, bias, value = np.zeros(size), np.zeros(size), np.zeros(size)
    pre = rm.pre_activations()
    pre_bias = rm.pre_activations(zero_sources=True)
    for r, i in enumerate(selected):
        adjacency[r, : n_sel + n_err_tok] = rows[i][keep].numpy()
        unselected[r] = float(rows[i][:n_active][dropped].sum())
        layer, pos, feat = active[i].tolist()
        value[r], bias[r] = float(pre[layer, pos, feat]), float(pre_bias[layer, pos, feat])
    adjacency[-1, : n_sel + n_err_tok] = target[keep].numpy()
    unselected[-1] = float(target[:n_active][dropped].sum())
    logits = rm.forward()
    value[-1], bias[-1] = (
        float(logits[position, token]),
        float(rm.forward(zero_sources=True)[position, token]),
    )
    feats = active[selected].numpy() if n_sel else np.zeros((0, 3), dtype=np.int64)
    acts = np.array([float(rm.activations[tuple(f)]) for f in feats.tolist()])
    return AttributionGraph(
        position,
        token,
        feats,
        acts,
        rm.n_layers,
        n_pos,
        adjacency,
        bias,
        unselected,
        value,
        rm.tokens.numpy(),
    )


def rows_check(graph: AttributionGraph) -> float:
    """Largest |incoming edges + bias + unselected - value| over the feature and target rows:
    0 up to float64 rounding when the decomposition is exact."""
    rows = [*range(graph.n_features), graph.target_index]
    total = graph.adjacency[rows].sum(1) + graph.bias[rows] + graph.unselected[rows]
    return float(np.abs(total - graph.value[rows]).max())


# ------------------------------------------------------------------ pruning and scores


def node_influence(graph: AttributionGraph) -> np.ndarray:
    """[n] each node's influence on the target over all paths (normalised |A|)."""
    weights = np.zeros(graph.size)
    weights[graph.target_index] = 1.0
    return path_influence(normalise_rows(graph.adjacency), weights)


def graph_scores(graph: AttributionGraph) -> dict[str, float]:
    """circuit-tracer's replacement and completeness scores of the graph."""
    weights = np.zeros(graph.size)
    weights[graph.target_index] = 1.0
    normalised = normalise_rows(graph.adjacency)
    influence = path_influence(normalised, weights)
    errors = slice(graph.n_features, graph.n_features + graph.n_layers * graph.n_pos)
    tokens = slice(errors.stop, errors.stop + graph.n_pos)
    token_inf, error_inf = influence[tokens].sum(), influence[errors].sum()
    non_error = 1 - normalised[:, errors].sum(1)
    output = influence + weights
    return {
        "replacement": float(token_inf / (token_inf + error_inf)),
        "completeness": float((non_error * output).sum() / output.sum()),
    }


def _threshold(scores: np.ndarray, share: float) -> float:
    """The score above which the largest scores hold `share` of the total."""
    ordered = np.sort(scores)[::-1]
    total = ordered.sum()
    if total <= 0:
        return 0.0
    cumulative = np.cumsum(ordered) / total
    return float(ordered[min(int(np.searchsorted(cumulative, share)), len(ordered) - 1)])


def prune(graph: AttributionGraph, node_share: float = 0.8, edge_share: float = 0.98):
    """(node mask [n], edge mask [n, n]): the nodes holding `node_share` of the influence on
    the target (tokens and the target always kept), then the edges holding `edge_share` of
    the edge influence among them; nodes left without edges are dropped (features need
    both an incoming and an outgoing edge, errors an outgoing one)."""
    for name, share in (("node_share", node_share), ("edge_share", edge_share)):
        if not 0 <= share <= 1:
            raise ConfigError(f"{name} must lie in [0, 1], got {share}")
    influence = node_influence(graph)
    nodes = influence >= _threshold(influence, node_share)
    tokens_on = graph.n_features + graph.n_layers * graph.n_pos
    nodes[tokens_on:] = True
    a = graph.adjacency.copy()
    a[~nodes], a[:, ~nodes] = 0, 0
    weights = np.zeros(graph.size)
    weights[graph.target_index] = 1.0
    normalised = normalise_rows(a)
    edge_scores = normalised * (path_influence(normalised, weights) + weights)[:, None]
    edges = (edge_scores >= _threshold(edge_scores.ravel(), edge_share)) & (edge_scores > 0)
    while True:
        before = nodes.copy()
        edges[~nodes], edges[:, ~nodes] = False, False
        nodes[:tokens_on] &= edges[:, :tokens_on].any(0)
        nodes[: graph.n_features] &= edges[: graph.n_features].any(1)
        if (nodes == before).all():
            return nodes, edges
