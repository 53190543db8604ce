"""Checking a graph by intervention: set a graph feature to a new value in the replacement
model and compare the target logit's change with what the graph predicts.

The graph's prediction is linear: an edge s -> t divided by s's activation is t's change per
unit of s, active features pass changes of their pre-activation through unchanged (slope 1 for
relu, jumprelu and topk while the active set holds), so a change d of feature j moves the logit
by d * e_j, where e = u + e U sums every path through the graph's features (u: the target's
per-unit row, U: the features' per-unit rows). In the replacement model (`recompute=True`)
every downstream feature, in or out of the graph, is re-encoded and may switch on or off; the
errors, attention patterns and LayerNorm scales stay frozen, as in circuit-tracer's
constrained interventions.
"""

from __future__ import annotations

import numpy as np

from gridlens.graphs.attribution import AttributionGraph, node_influence
from gridlens.graphs.replacement import ReplacementModel


def unit_effects(graph: AttributionGraph) -> np.ndarray:
    """[n_features] the target's change per unit change of each graph feature (all paths)."""
    n = graph.n_features
    acts = np.where(graph.activations != 0, graph.activations, 1.0)
    per_unit = graph.adjacency[:, :n] / acts[None, :]
    u = per_unit[graph.target_index]
    between = per_unit[:n]
    total, current = u.copy(), u.copy()
    for _ in range(graph.n_layers + 1):
        current = current @ between
        total += current
    return total


def check_interventions(
    rm: ReplacementModel, graph: AttributionGraph, n: int = 20, factor: float = 0.0
) -> dict:
    """Set each of the `n` most influential graph features to `factor` x its activation (0:
    ablation) and record the logit change predicted by the graph and measured in the
    replacement model; the agreement as Pearson r, sign agreement and relative error."""
    influence = node_influence(graph)[: graph.n_features]
    chosen = np.argsort(-influence, kind="stable")[:n]
    effects = unit_effects(graph)
    base = float(rm.forward(recompute=True)[graph.position, graph.token])
    records = []
    for i in chosen.tolist():
        layer, pos, feat = (int(v) for v in graph.features[i])
        change = (factor - 1.0) * float(graph.activations[i])
        logits = rm.forward(
            recompute=True, set_features={(layer, pos, feat): factor * float(graph.activations[i])}
        )
        records.append({
            "feature": [layer, pos, feat],
            "label": graph.labels[i] if i < len(graph.labels) else "",
            "predicted": change * float(effects[i]),
            "measured": float(logits[graph.position, graph.token]) - base,
        })  # fmt: skip
    return {"factor": factor, "features": records, **agreement(records)}


def agreement(records: list[dict]) -> dict[str, float]:
    """Pearson r, share of equal signs and sum |measured - predicted| / sum |measured|."""
    if not records:
        return {"pearson_r": float("nan"), "sign_agreement": float("nan"),
                "relative_error": float("nan")}  # fmt: skip
    p = np.array([r["predicted"] for r in records])
    m = np.array([r["measured"] for r in records])
    r = float(np.corrcoef(p, m)[0, 1]) if len(p) > 1 and p.std() > 0 and m.std() > 0 else 1.0
    return {
        "pearson_r": r,
        "sign_agreement": float((np.sign(p) == np.sign(m)).mean()),
        "relative_error": float(np.abs(m - p).sum() / max(np.abs(m).sum(), 1e-12)),
    }
