"""World-derived labels and top examples for a graph's features: each transcoder latent is
scored against the per-position annotations of gridlens.sae.labels (task, colour role, object,
changing cell, ...) on a quiz set, exactly as SAE latents are."""

from __future__ import annotations

from gridlens.analysis.core import QuizSet
from gridlens.graphs.attribution import AttributionGraph
from gridlens.sae.features import latent_activations, position_label
from gridlens.sae.labels import label_latents


def label_graph(model, transcoders, graph: AttributionGraph, quizzes: QuizSet, n_examples: int = 3):
    """Fill `graph.labels` and return {feature index: details} for the page: the best label
    with its F1, precision and recall, and the top examples (task, position, value, the
    example's grid containing the cell)."""
    details: dict[int, dict] = {}
    labels = [""] * graph.n_features
    for layer in sorted({int(f[0]) for f in graph.features}):
        tc = transcoders[layer]
        acts = latent_activations(model, tc, quizzes, positions="all")
        result = label_latents(acts)
        for i in [i for i in range(graph.n_features) if graph.features[i][0] == layer]:
            latent = int(graph.features[i][2])
            best = result.best(latent, 1)
            labels[i] = best[0]["label"] if best else "never fires on the quiz set"
            details[i] = {"best": best, "examples": _examples(acts, latent, n_examples)}
    graph.labels = labels
    return details


def _examples(acts, latent: int, n: int) -> list[dict]:
    out = []
    tokens = acts.quizzes.tokens
    per_grid = tokens.shape[1] // 4
    for e in acts.top_examples(latent, n):
        slot = e.position // per_grid
        grid = tokens[e.quiz, slot * per_grid + 1 : (slot + 1) * per_grid].tolist()
        out.append({
            "task": str(acts.quizzes.tasks[e.quiz]),
            "position": position_label(e.position, tokens.shape[1]),
            "value": round(e.value, 4),
            "grid": grid,
            "cell": e.position % per_grid - 1,
        })  # fmt: skip
    return out
