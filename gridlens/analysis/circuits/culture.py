"""The edge circuit of one task of a culture model, and its static drawing.

Pairs are the patching pairs of :mod:`gridlens.analysis.pairs` (the same quiz with another value
of the task's parameter, by default); the scored positions are the predicted grid's cells, the
answer the clean quiz's cell and the wrong answer the corrupted quiz's. The corrupted run is
the corrupted prompt followed by the clean answer grid (teacher forcing, as in patching).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gridlens.analysis.circuits.acdc import acdc
from gridlens.analysis.circuits.eap import eap, eap_ig
from gridlens.analysis.circuits.graph import EdgeGraph
from gridlens.analysis.circuits.metrics import EdgeProblem, EdgeRun, check_metric
from gridlens.errors import ConfigError, unknown_name

CIRCUIT_METHODS = ("acdc", "eap", "eap_ig")


def culture_problem(task: str, n: int, seed: int = 0, kind: str = "parameter") -> EdgeProblem:
    """``n`` clean/corrupted pairs of ``task`` scored on the predicted grid."""
    from gridlens.analysis.core import predicted_cells
    from gridlens.analysis.pairs import as_tokens, make_pairs

    pairs = make_pairs(kind, [task], n_per_task=n, seed=seed)
    clean, corrupted = as_tokens(pairs)
    cells = predicted_cells(clean)
    answer = torch.full_like(clean, -1)
    wrong = torch.full_like(clean, -1)
    answer[:, cells] = clean[:, cells]
    wrong[:, cells] = pairs.corrupted.tokens[:, cells]
    return EdgeProblem(clean, corrupted, answer, wrong)


@dataclass
class CircuitResult:
    """One method's edge circuit: per-edge effect estimates and the edges kept."""

    task: str
    method: str
    metric: str
    edges: list[str]
    scores: np.ndarray
    kept: np.ndarray
    faithfulness: float
    seconds: float
    graph: EdgeGraph

    def to_json(self) -> dict:
        order = np.argsort(-self.scores)
        return {
            "format": "gridlens-edge-circuit",
            "version": 1,
            "task": self.task,
            "method": self.method,
            "metric": self.metric,
            "n_edges": len(self.edges),
            "circuit": [self.edges[i] for i in order if self.kept[i]],
            "scores": {self.edges[i]: float(self.scores[i]) for i in order},
            "faithfulness": self.faithfulness,
            "seconds": self.seconds,
        }

    def findings(self) -> list[str]:
        top = [self.edges[i] for i in np.argsort(-self.scores) if self.kept[i]][:5]
        return [
            f"{self.method} on {self.task} ({self.metric}): {int(self.kept.sum())} of "
            f"{len(self.edges)} edges keep {self.faithfulness:.1%} of the clean answer's "
            f"log-probability over the corrupted run's ({self.seconds:.1f} s)",
            f"strongest edges: {', '.join(top)}",
        ]

    def plot(self, path: str | Path) -> Path:
        """Write :func:`draw_circuit` as a PNG; returns the path."""
        draw_circuit(self, path)
        return Path(path)


def find_circuit(
    model,
    problem: EdgeProblem,
    task: str,
    method: str = "eap_ig",
    metric: str | None = None,
    n_edges: int = 30,
    threshold: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> CircuitResult:
    """The circuit of ``task``: EAP / EAP-IG keep the ``n_edges`` largest scores; ACDC keeps
    what survives ``threshold`` (default: 1% of the damage of corrupting every edge)."""
    if method not in CIRCUIT_METHODS:
        raise unknown_name("circuit method", method, CIRCUIT_METHODS)
    metric = check_metric(metric or ("kl" if method == "acdc" else "logit_diff"))
    if n_edges < 1:
        raise ConfigError(f"the circuit needs at least one edge, got {n_edges}")
    t0 = time.perf_counter()
    run = EdgeRun(model.eval(), problem)
    n = len(run.graph)
    if method == "acdc":
        if threshold is None:
            threshold = 0.01 * run.damage(torch.zeros(n), metric)
        scores = torch.zeros(n)
        kept = acdc(run, threshold, metric, progress, effects=scores)
    else:
        scores = (eap if method == "eap" else eap_ig)(run, metric)
        kept = torch.zeros(n, dtype=torch.bool)
        kept[torch.argsort(scores, descending=True)[: min(n_edges, n)]] = True
        if progress is not None:
            progress(n)
    return CircuitResult(
        task,
        method,
        metric,
        run.graph.names,
        scores.clamp(min=0).numpy(),
        kept.numpy(),
        run.faithfulness(kept.float()),
        time.perf_counter() - t0,
        run.graph,
    )


def _place(graph: EdgeGraph, node: str) -> tuple[float, float]:
    """(column, row) of a node: layers as columns, heads then the MLP down each layer."""
    h = graph.cfg.n_heads
    if node == "input":
        return 0.0, (h - 1) / 2
    if node == "logits":
        return 2.0 * graph.cfg.n_layers + 1, (h - 1) / 2
    if node.startswith("MLP"):
        return 2.0 * int(node[3:]) + 2, (h - 1) / 2
    layer, head = node[1:].split("H")
    return 2.0 * int(layer) + 1, float(head)


def draw_circuit(result: CircuitResult, path: str | Path | None = None):
    """A static graph of the circuit: layers as columns, edge width by effect, q/k/v edges
    (blue/green/orange) landing above, at and below a head's centre. Returns the Figure."""
    from gridlens.plotting import finish, pyplot

    graph = result.graph
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(2.2 * graph.cfg.n_layers + 3, 0.9 * graph.cfg.n_heads + 2))
    used = {"input", "logits"}
    top = max(float(result.scores[result.kept].max(initial=0)), 1e-12)
    colours = {"q": "tab:blue", "k": "tab:green", "v": "tab:orange"}
    for i in np.flatnonzero(result.kept):
        e = graph.edges[i]
        node, _, part = e.receiver.partition(".")
        used |= {e.sender, node}
        (x0, y0), (x1, y1) = _place(graph, e.sender), _place(graph, node)
        y1 += {"q": -0.15, "k": 0.0, "v": 0.15}.get(part, 0.0)
        width = 0.5 + 5 * result.scores[i] / top
        ax.plot([x0, x1], [y0, y1], color=colours.get(part, "tab:red"), lw=width, alpha=0.6)
    for node in [*graph.senders, "logits"]:
        x, y = _place(graph, node)
        on = node in used
        ax.scatter([x], [y], s=420, color="white" if on else "0.92", edgecolor="k" if on else "0.7")
        ax.annotate(node, (x, y), ha="center", va="center", fontsize=6, color="k" if on else "0.6")
    for part, colour in colours.items():
        ax.plot([], [], color=colour, label=f"into {part}")
    ax.plot([], [], color="tab:red", label="into MLP / logits")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.invert_yaxis()
    ax.axis("off")
    ax.set_title(
        f"{result.task}: {result.method} circuit, {int(result.kept.sum())} edges, "
        f"faithfulness {result.faithfulness:.2f}",
        fontsize=9,
    )
    fig.tight_layout()
    return finish(fig, path)
