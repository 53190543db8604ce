"""Edge-level circuit discovery scored against the known circuits of ground-truth models.

The true edges of a task come from its high-level model and the correspondence:

- a variable ``v`` held by node N (a head ``L{l}H{h}`` or ``MLP{l}``; subspaces of an MLP count
  as the whole MLP) gets an edge P -> N from the node P of each of its parents, when P != N;
- an edge ``input`` -> N when v reads the tokens: every variable's function receives them, so
  this is checked, not declared: v reads the tokens if recomputing it from other inputs' tokens
  with its own parents' values held changes it somewhere;
- the output variable's node -> ``logits``; in a multi-task model the task-id head too (the
  output is chosen by it) with ``input`` -> task head. Scored on one task's inputs, whose
  pairs all share the task id, the task head's edges are left out (:func:`unscored_node`).

A head's query, key and value are separate receivers in the edge graph, but the correspondence
says which node computes a variable, not through which of a head's inputs it reads its parents:
so edges are scored as (sender, receiving node) pairs, a pair's score being the largest of its
q, k and v edges' (for ACDC: kept if any of them is kept). ROC AUC: for the score-based methods,
over every cut of the ranking; for ACDC, the trapezoid through its sweep's (false positive rate,
true positive rate) points with (0, 0) and (1, 1).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from gridlens.analysis.circuits import (
    EdgeGraph,
    EdgeProblem,
    EdgeRun,
    acdc_sweep,
    default_thresholds,
    eap,
    eap_ig,
)
from gridlens.errors import ConfigError
from gridlens.groundtruth.scoring import roc_auc
from gridlens.groundtruth.spec import Benchmark, Site

METHODS = ("acdc", "eap", "eap_ig")


def node_of(site: Site) -> str:
    """The edge-graph node holding ``site``."""
    if site.hook.endswith("attn.hook_z") and site.head is not None:
        return f"L{site.layer}H{site.head}"
    if site.hook.endswith(("hook_mlp_out", "mlp.hook_post")):
        return f"MLP{site.layer}"
    raise ConfigError(f"site {site.label}: edge scoring supports heads and MLPs only")


def reads_tokens(bench: Benchmark, var: str, n: int = 256, seed: int = 0) -> bool:
    """Does ``var`` (``task.name``) change when only the tokens it sees change?"""
    k = [t.name for t in bench.tasks].index(var.split(".")[0])
    task = bench.tasks[k]
    rng = np.random.default_rng(seed)
    tokens = task.to_vocab(task.generate(n, rng))
    values = task.high_level.run(tokens)
    v = task.high_level.by_name[var.split(".", 1)[1]]
    other = torch.roll(tokens, 1, 0)
    again = v.fn({"tokens": other, **{p: values[p] for p in v.parents}})
    return not torch.equal(again, values[v.name])


def true_pairs(bench: Benchmark, task: int | None = None) -> set[tuple[str, str]]:
    """(sender, receiving node) pairs of task ``task``'s circuit (all tasks when None)."""
    ks = range(len(bench.tasks)) if task is None else [task]
    pairs: set[tuple[str, str]] = set()
    for k in ks:
        hl = bench.tasks[k].high_level
        prefix = f"{bench.tasks[k].name}."
        for v in hl.variables:
            node = node_of(bench.correspondence[prefix + v.name])
            for p in v.parents:
                parent = node_of(bench.correspondence[prefix + p])
                if parent != node:
                    pairs.add((parent, node))
            if reads_tokens(bench, prefix + v.name):
                pairs.add(("input", node))
        pairs.add((node_of(bench.correspondence[prefix + hl.output]), "logits"))
    if bench.multi:
        head = node_of(bench.correspondence["task"])
        pairs |= {("input", head), (head, "logits")}
    return pairs


def pair_index(graph: EdgeGraph) -> tuple[list[tuple[str, str]], torch.Tensor]:
    """The (sender, receiving node) pairs and, per edge, the index of its pair."""
    pairs: dict[tuple[str, str], int] = {}
    index = [
        pairs.setdefault((e.sender, e.receiver.split(".")[0]), len(pairs)) for e in graph.edges
    ]
    return list(pairs), torch.tensor(index)


def pair_max(values: torch.Tensor, index: torch.Tensor, n_pairs: int) -> torch.Tensor:
    """Per pair, the largest of its edges' ``values``."""
    out = torch.full((n_pairs,), -torch.inf, dtype=values.dtype)
    return out.scatter_reduce(0, index, values, "amax")


def sweep_auc(kept: list[np.ndarray], truth: np.ndarray) -> tuple[float, list[list[float]]]:
    """ROC AUC (trapezoid) through the (FPR, TPR) of each kept set, and the points."""
    pos, neg = truth.sum(), (~truth).sum()
    if pos == 0 or neg == 0:
        return float("nan"), []
    pts = {(0.0, 0.0), (1.0, 1.0)}
    pts |= {(float((k & ~truth).sum() / neg), float((k & truth).sum() / pos)) for k in kept}
    xy = np.array(sorted(pts))
    return float(np.trapezoid(xy[:, 1], xy[:, 0])), xy.tolist()


def ranking_roc(scores: np.ndarray, truth: np.ndarray) -> list[list[float]]:
    """(FPR, TPR) points of every cut of the ranking by ``scores`` (ties cut together)."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], truth[order]
    cuts = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp, fp = np.cumsum(y)[cuts], np.cumsum(~y)[cuts]
    pos, neg = max(y.sum(), 1), max((~y).sum(), 1)
    points = zip((fp / neg).tolist(), (tp / pos).tolist(), strict=True)
    return [[0.0, 0.0]] + [list(p) for p in points]


def gt_problem(model, bench: Benchmark, tokens: torch.Tensor, task: int | None) -> EdgeProblem:
    """Inputs of one task (all when None) against themselves rolled by one."""
    if task is not None:
        tokens = tokens[bench.task_ids(tokens) == task]
    if len(tokens) < 2:
        raise ConfigError("edge scoring needs at least two inputs")
    corrupted = torch.roll(tokens, 1, 0)
    answer, wrong = bench.labels(tokens), bench.labels(corrupted)
    answer = torch.where(wrong >= 0, answer, -1)
    return EdgeProblem(tokens, corrupted, answer, wrong)


def unscored_node(bench: Benchmark, task: int | None) -> str | None:
    """The task head when scoring one task of a multi-task model: both inputs of each pair
    then have the same task id, so no patching can see its edges; they are left out."""
    return node_of(bench.correspondence["task"]) if bench.multi and task is not None else None


def _first(problem: EdgeProblem, n: int) -> EdgeProblem:
    return EdgeProblem(*(x[:n] for x in vars(problem).values()))


def faithfulness_curve(run: EdgeRun, scores: torch.Tensor, points: int = 10) -> list[list[float]]:
    """[k, faithfulness] of the top-k edges by ``scores`` for ``points`` sizes k."""
    n = len(run.graph)
    order = torch.argsort(scores, descending=True)
    sizes = sorted({int(k) for k in np.geomspace(1, n, points).round()})
    out = []
    for k in sizes:
        keep = torch.zeros(n)
        keep[order[:k]] = 1.0
        out.append([k, run.faithfulness(keep)])
    return out


def score_edges(
    model,
    bench: Benchmark,
    tokens: torch.Tensor,
    task: int | None = None,
    n_thresholds: int = 6,
    examples: int = 200,
    acdc_examples: int = 64,
) -> dict:
    """ACDC (KL, a threshold sweep), EAP and EAP-IG (logit difference) on one task's first
    ``examples`` inputs (ACDC, a forward pass per edge and threshold: ``acdc_examples``): per
    method the edge-level ROC AUC against :func:`true_pairs`, faithfulness against circuit
    size and the seconds taken."""
    problem = gt_problem(model, bench, tokens, task)
    run = EdgeRun(model.eval(), _first(problem, examples))
    small = EdgeRun(model, _first(problem, acdc_examples))
    pairs, index = pair_index(run.graph)
    truth_set = true_pairs(bench, task)
    truth = np.array([p in truth_set for p in pairs])
    skip = unscored_node(bench, task)
    scored = np.array([skip not in p for p in pairs])
    truth = truth[scored]
    methods: dict[str, dict] = {}
    t0 = time.perf_counter()
    thresholds = default_thresholds(small, "kl", n_thresholds)
    kept = acdc_sweep(small, thresholds, "kl")
    seconds = time.perf_counter() - t0
    pair_kept = [pair_max(k.float(), index, len(pairs)).numpy()[scored] > 0 for k in kept]
    auc, roc = sweep_auc(pair_kept, truth)
    methods["acdc"] = {
        "auc": auc,
        "seconds": seconds,
        "roc": roc,
        "thresholds": thresholds,
        "faithfulness": [[int(k.sum()), run.faithfulness(k.float())] for k in kept],
    }
    for name, fn in (("eap", eap), ("eap_ig", eap_ig)):
        t0 = time.perf_counter()
        scores = fn(run, "logit_diff")
        seconds = time.perf_counter() - t0
        per_pair = pair_max(scores, index, len(pairs)).numpy()[scored]
        methods[name] = {
            "auc": roc_auc(per_pair, truth),
            "roc": ranking_roc(per_pair, truth),
            "seconds": seconds,
            "faithfulness": faithfulness_curve(run, scores),
        }
    return {
        "task": bench.tasks[task].name if task is not None else "all",
        "n_edges": len(run.graph),
        "pairs": [f"{s}->{r}" for (s, r), ok in zip(pairs, scored, strict=True) if ok],
        "true_pairs": sorted(f"{s}->{r}" for s, r in truth_set if skip not in (s, r)),
        "methods": methods,
    }


def edge_auc(results: list[dict]) -> dict[str, float]:
    """Method -> edge-level ROC AUC, averaged over the tasks of ``results``."""
    return {m: float(np.mean([r["methods"][m]["auc"] for r in results])) for m in METHODS}
