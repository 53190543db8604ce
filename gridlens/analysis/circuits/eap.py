"""Edge attribution patching: every edge's effect estimated from gradients.

An edge's weight w (1 clean, 0 corrupted) enters its receiver's input as
``w * (sender - corrupted sender)``, so dM/dw = grad(receiver input) . (sender - corrupted
sender), and removing the edge changes M by about -dM/dw. EAP (Syed et al. 2023) takes that
gradient on the clean run (one forward, one backward for all edges). EAP-IG (Hanna et al. 2024)
integrates it along the straight path from every edge corrupted to every edge clean
(midpoint rule), so that the attributions of all edges add up to M(clean) - M(corrupted). Here
the path is taken in edge weights (all receivers' inputs mixed alike), not in the input
embeddings only. Scores are per-example absolute attributions, averaged.
"""

from __future__ import annotations

import torch

from gridlens.analysis.circuits.metrics import EdgeRun, check_metric
from gridlens.errors import ConfigError


def _gradient(run: EdgeRun, alpha: float, metric: str) -> torch.Tensor:
    """dM/dw [batch, n_edges] with every edge weight at ``alpha``."""
    shape = (len(run.problem), len(run.graph))
    weights = torch.full(shape, alpha, device=run.problem.clean.device, requires_grad=True)
    with torch.enable_grad():
        value = run.per_example(run.logits(weights), metric)
        (grad,) = torch.autograd.grad(value.sum(), weights)
    return grad


def eap(run: EdgeRun, metric: str = "loss") -> torch.Tensor:
    """EAP scores [n_edges]: mean |first-order change of the metric| when an edge is corrupted.
    KL is refused: it is at its minimum on the clean run, so its gradient there is zero."""
    if check_metric(metric) == "kl":
        raise ConfigError("EAP needs a metric with a gradient on the clean run: loss or logit_diff")
    return _gradient(run, 1.0, metric).abs().mean(0).cpu()


def eap_ig(run: EdgeRun, metric: str = "loss", steps: int = 8) -> torch.Tensor:
    """EAP-IG scores [n_edges] with ``steps`` points on the path."""
    check_metric(metric)
    if steps < 1:
        raise ConfigError(f"EAP-IG needs at least one step, got {steps}")
    total = sum(_gradient(run, (i + 0.5) / steps, metric) for i in range(steps))
    return (total / steps).abs().mean(0).cpu()
