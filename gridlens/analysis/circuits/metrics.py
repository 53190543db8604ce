"""What an edge circuit is judged on: clean/corrupted input pairs, the answers at the scored
positions, and the metrics ACDC, EAP and EAP-IG use.

Metrics, per example, over the scored positions (``answer >= 0``):

- ``kl``: KL(clean run's distribution || this run's), 0 on the clean run;
- ``logit_diff``: logit of the clean answer minus logit of the corrupted run's answer;
- ``loss``: cross-entropy of the clean answer (the predicted-grid loss on culture models).

:meth:`EdgeRun.damage` is how far a run is from the clean one on average: the mean KL, or the
mean absolute change of the per-example logit difference or loss (pairs can move either way).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gridlens.analysis.circuits.graph import EdgeGraph, edge_forward
from gridlens.errors import ConfigError, unknown_name

METRICS = ("kl", "logit_diff", "loss")


@dataclass
class EdgeProblem:
    """``clean`` and ``corrupted`` tokens [batch, pos]; ``answer`` and ``wrong`` [batch, pos]:
    the clean and the corrupted run's correct tokens or classes, -1 where not scored."""

    clean: torch.Tensor
    corrupted: torch.Tensor
    answer: torch.Tensor
    wrong: torch.Tensor

    def __post_init__(self) -> None:
        shapes = {tuple(x.shape) for x in (self.clean, self.corrupted, self.answer, self.wrong)}
        if len(shapes) != 1:
            raise ConfigError(f"edge problem: tensors of different shapes {sorted(shapes)}")
        if not bool((self.answer >= 0).any()):
            raise ConfigError("edge problem: no position is scored (every answer is -1)")

    def __len__(self) -> int:
        return len(self.clean)


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise unknown_name("circuit metric", metric, METRICS)
    return metric


class EdgeRun:
    """A model and a problem, with the clean and corrupted runs cached: the edge-weighted
    forward, the metrics and faithfulness of any set of edge weights."""

    def __init__(self, model, problem: EdgeProblem, graph: EdgeGraph | None = None):
        self.model, self.problem = model, problem
        self.graph = graph or EdgeGraph(model.cfg)
        with torch.no_grad():
            self.clean_logits = edge_forward(model, self.graph, problem.clean)[0]
            self.corrupt_logits, self.corrupt = edge_forward(model, self.graph, problem.corrupted)
        self.clean_logp = self.clean_logits.log_softmax(-1)
        self.valid = (problem.answer >= 0).float()
        self.count = self.valid.sum(1).clamp(min=1)

    def logits(self, weights: torch.Tensor) -> torch.Tensor:
        """Logits with edge weights [n_edges] or [batch, n_edges] (1 clean, 0 corrupted)."""
        return self.forward(weights)[0]

    def forward(
        self, weights: torch.Tensor, start: int = 0, upstream: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, sender outputs): :func:`edge_forward` on the clean inputs."""
        clean = self.problem.clean
        return edge_forward(
            self.model, self.graph, clean, weights, self.corrupt, start=start, upstream=upstream
        )

    def per_example(self, logits: torch.Tensor, metric: str) -> torch.Tensor:
        """The metric [batch] of ``logits``, averaged over each example's scored positions."""
        logp = logits.log_softmax(-1)
        answer = self.problem.answer.clamp(min=0)[..., None]
        if metric == "kl":
            p = self.clean_logp.exp()
            value = (p * (self.clean_logp - logp)).sum(-1)
        elif metric == "loss":
            value = -logp.gather(-1, answer)[..., 0]
        elif metric == "logit_diff":
            wrong = self.problem.wrong.clamp(min=0)[..., None]
            value = (logits.gather(-1, answer) - logits.gather(-1, wrong))[..., 0]
        else:
            raise unknown_name("circuit metric", metric, METRICS)
        return (value * self.valid).sum(1) / self.count

    def damage(self, weights: torch.Tensor, metric: str) -> float:
        """Mean distance from the clean run (see the module docstring)."""
        with torch.no_grad():
            return self.distance(self.logits(weights), metric)

    def distance(self, logits: torch.Tensor, metric: str) -> float:
        """:meth:`damage` of given logits."""
        with torch.no_grad():
            value = self.per_example(logits, metric)
            if metric != "kl":
                value = (value - self.per_example(self.clean_logits, metric)).abs()
        return float(value.mean())

    def faithfulness(self, weights: torch.Tensor) -> float:
        """Share of the clean run's log-probability of the answers (over the corrupted run's)
        that the circuit keeps: 1 the clean model, 0 everything corrupted."""
        with torch.no_grad():
            lp = -self.per_example(self.logits(weights), "loss").mean()
            lp_clean = -self.per_example(self.clean_logits, "loss").mean()
            lp_corrupt = -self.per_example(self.corrupt_logits, "loss").mean()
        gap = lp_clean - lp_corrupt
        if abs(float(gap)) < 1e-9:
            return float("nan")
        return float((lp - lp_corrupt) / gap)
