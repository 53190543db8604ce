"""The report's edge circuit: EAP-IG on the task the findings pick (the task of the task-specific
MLP, as for the attribution graph), its strongest edges drawn, and faithfulness against circuit
size, so the reader sees how many edges the task's behaviour needs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gridlens.report.html import Figure, Section, Table

N_EDGES = 30  # edges in the drawn circuit
SWEEP = (5, 10, 20, 50, 100, 200)  # circuit sizes of the faithfulness curve (and every edge)
TOP_ROWS = 12  # edges in the table

HOWTO = (
    "Edge attribution patching with integrated gradients (EAP-IG, Hanna et al. 2024; "
    "gridlens.analysis.circuits) on {n} clean/corrupted pairs of {task}, the task the findings "
    "single out, of kind '{kind}'. An edge joins a sender (the embeddings, a head, an MLP) to a "
    "receiver (a head's query, key or value input, an MLP, the logits); its score is the "
    "attributed change of the logit difference (clean answer minus corrupted answer, on the "
    "predicted grid) when the edge reads the corrupted run. The circuit keeps the {k} largest "
    "scores. Faithfulness: the share of the clean answer's log-probability (over the corrupted "
    "run's) kept when every edge outside the circuit reads the corrupted run (1: the model, "
    "0: everything corrupted), for the top-k edges at several k. An edge carries the clean run "
    "only along a chain of kept edges from the input to the logits, so a small circuit "
    "without such a chain scores exactly 0."
)


def circuit_problem(task: str, n: int, seed: int):
    """(EdgeProblem, pair kind): parameter pairs of ``task``, or colour pairs where the task has
    no parameter to change (corners, the non-default tasks)."""
    from gridlens.analysis.circuits import culture_problem
    from gridlens.analysis.pairs import PairError

    try:
        return culture_problem(task, n, seed), "parameter"
    except PairError:
        return culture_problem(task, n, seed, kind="colour"), "colour"


def faithfulness_curve(edge_run, scores: np.ndarray, sizes=SWEEP) -> list[tuple[int, float]]:
    """(k, faithfulness of the k highest-scoring edges) for each size below the edge count, and
    for every edge."""
    n = len(scores)
    order = np.argsort(-scores, kind="stable")
    curve = []
    for k in [s for s in sizes if s < n] + [n]:
        weights = torch.zeros(n)
        weights[torch.from_numpy(order[:k].copy())] = 1.0
        curve.append((k, edge_run.faithfulness(weights)))
    return curve


def plot_curve(curve: list[tuple[int, float]], title: str, path: str | Path | None = None):
    """Faithfulness against the number of edges kept (log x). Returns the Figure."""
    from gridlens.plotting import finish, pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.0, 3.4), dpi=110)
    ks, values = zip(*curve, strict=True)
    ax.plot(ks, values, marker="o")
    ax.axhline(1.0, color="gray", lw=0.8, ls="--")
    ax.axhline(0.0, color="gray", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("edges kept (top EAP-IG scores)")
    ax.set_ylabel("faithfulness")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return finish(fig, path)


def stage_circuit(run) -> Section:
    """The Edge circuit section; its numbers go to ``results["edge_circuit"]``. Runs after the
    claims stage, which picks the task (``run.study``)."""
    from gridlens.analysis.circuits import EdgeRun, find_circuit

    task = run.study.task
    problem, kind = circuit_problem(task, run.size.pairs_per_task, run.seed)
    result = find_circuit(run.model, problem, task, "eap_ig", "logit_diff", n_edges=N_EDGES)
    curve = faithfulness_curve(EdgeRun(run.model, problem, result.graph), result.scores)
    run.results["edge_circuit"] = {
        **result.to_json(),
        "pair_kind": kind,
        "n_pairs": len(problem),
        "faithfulness_curve": [{"edges": k, "faithfulness": f} for k, f in curve],
    }
    section = Section(
        "Edge circuit", howto=HOWTO.format(n=len(problem), task=task, kind=kind, k=N_EDGES)
    )
    sweep = ", ".join(f"k={k}: {f:.2f}" for k, f in curve)
    section.findings = [
        *result.findings(),
        f"faithfulness of the top-k edges: {sweep} (of {len(result.edges)} edges)",
    ]
    order = np.argsort(-result.scores, kind="stable")[:TOP_ROWS]
    rows = [[i + 1, result.edges[e], f"{result.scores[e]:.4g}"] for i, e in enumerate(order)]
    result.plot(run.folder / "edge_circuit.png")
    plot_curve(curve, f"{task}: faithfulness of the top-k edges", run.folder / "edge_faith.png")
    return section.add(
        Figure("edge_circuit.png", f"The {N_EDGES}-edge EAP-IG circuit of {task}."),
        Figure("edge_faith.png", "Faithfulness against the number of edges kept."),
        Table(["rank", "edge", "EAP-IG score"], rows, "The strongest edges."),
    )
