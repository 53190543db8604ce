"""ACDC (Conmy et al. 2023): prune edges one at a time, from the logits back to the inputs,
dropping each edge whose removal moves the metric by less than a threshold.

Receivers are visited in reverse order (logits, then the last MLP, the last layer's heads...);
the edges into one receiver from its latest sender to its earliest. A removed edge reads the
corrupted run's sender; the decision uses the circuit as pruned so far. A node left with no
outgoing edge cannot affect the logits, so the edges into it are dropped without a forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from gridlens.analysis.circuits.metrics import EdgeRun, check_metric
from gridlens.errors import ConfigError


def _node(receiver: str) -> str:
    return receiver.split(".")[0]


def acdc(
    run: EdgeRun,
    threshold: float,
    metric: str = "kl",
    progress: Callable[[int], None] | None = None,
    effects: torch.Tensor | None = None,
) -> torch.Tensor:
    """The edges [n_edges] (bool) ACDC keeps at ``threshold`` (in the metric's units, see
    :meth:`EdgeRun.damage`); ``progress(k)`` after every k edges decided. ``effects``, if
    given ([n_edges]), receives each tested edge's increase of the metric when removed."""
    check_metric(metric)
    if not threshold >= 0:
        raise ConfigError(f"ACDC threshold must be >= 0, got {threshold}")
    graph = run.graph
    keep = torch.ones(len(graph), dtype=torch.bool)
    with torch.no_grad():
        logits, outs = run.forward(keep.float())
    current = run.distance(logits, metric)
    src, dst = graph.src, graph.dst
    for r in reversed(range(len(graph.receivers))):
        into = torch.nonzero(dst == r)[:, 0].flip(0)
        node = _node(graph.receivers[r])
        sender = graph.senders.index(node) if node in graph.senders else -1
        if sender >= 0 and not bool(keep[src == sender].any()):
            keep[into] = False  # a dead node: nothing it reads can reach the logits
        else:
            stage = graph.receiver_stage[r]
            for e in into.tolist():
                keep[e] = False
                with torch.no_grad():  # the senders before this receiver's stage are unchanged
                    logits, trial = run.forward(keep.float(), stage, outs)
                value = run.distance(logits, metric)
                if effects is not None:
                    effects[e] = value - current
                if value - current < threshold:
                    current, outs = value, trial
                else:
                    keep[e] = True
        if progress is not None:
            progress(len(into))
    return keep


def default_thresholds(run: EdgeRun, metric: str, n: int = 8) -> list[float]:
    """``n`` thresholds log-spaced from 1e-4 to 0.5 times the damage of corrupting every edge."""
    full = run.damage(torch.zeros(len(run.graph)), metric)
    return (max(full, 1e-8) * np.geomspace(1e-4, 0.5, n)).tolist()


def acdc_sweep(
    run: EdgeRun,
    thresholds: Sequence[float],
    metric: str = "kl",
    progress: Callable[[int], None] | None = None,
) -> list[torch.Tensor]:
    """ACDC's circuit at every threshold (bool [n_edges] each)."""
    return [acdc(run, t, metric, progress) for t in thresholds]
