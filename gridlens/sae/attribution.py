"""Which latents matter for the predicted grid, and do they cause it.

- `attribute`: gradient x activation of the metric (the teacher-forced log-probability of the
  correct predicted grid, summed over its cells) to every (position, latent) pair, with the SAE
  spliced in with its error kept (so the model computes exactly what it computed before). It is
  computed as the gradient with respect to a multiplicative gate on the latents at 1, which
  equals grad x activation; scaling a latent by (1 + eps) changes the metric by about
  eps x attribution.
- `learned_mask`: a sparse gate per latent (sigmoid or hard-concrete), trained to keep the
  predicted grid's loss on a task low under an L1 (L0 for hard-concrete) penalty; returns the
  latents it keeps.
- `ablate_latents` / `amplify_latents`: greedy predicted-grid accuracy per task with latents
  zeroed, kept alone, or multiplied, during generation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from gridlens.analysis.core import QuizSet, grid_metrics, per_task, predicted_cells
from gridlens.errors import ConfigError
from gridlens.plotting import finish, pyplot

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _hooks(sae, edit: Callable | None, positions, keep_error: bool = True) -> list:
    from gridlens.sae.splice import splice_hooks

    return splice_hooks(sae, keep_error=keep_error, edit=edit, positions=positions)


def _check_latents(sae, latents: Sequence[int]) -> list[int]:
    out = [int(j) for j in latents]
    bad = [j for j in out if not 0 <= j < sae.cfg.d_sae]
    if bad:
        raise ConfigError(f"latents {bad} outside [0, {sae.cfg.d_sae})")
    return out


def grid_logprob(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """[n] log-probability of the correct predicted grid, teacher-forced (sum over cells)."""
    cells = predicted_cells(tokens)
    chosen = logits[:, cells]
    logp = F.log_softmax(chosen.to(torch.promote_types(chosen.dtype, torch.float32)), dim=-1)
    return logp.gather(-1, tokens[:, cells, None]).squeeze(-1).sum(1)


# ------------------------------------------------------------------------------ attribution


@dataclass
class AttributionResult:
    """Gradient x activation of the predicted grid's log-probability per latent and task.

    latent_total[t, j]: mean over task t's quizzes of the attribution summed over positions
    (the linear estimate of how much zero-ablating j everywhere would lower the metric).
    top_pairs[task]: the (position, latent, mean attribution) pairs of largest magnitude."""

    hook_name: str
    tasks: list[str]
    metric: dict[str, float]  # mean clean log-probability per task and "all"
    latent_total: np.ndarray  # [n_tasks, d_sae]
    top_pairs: dict[str, list[tuple[int, int, float]]]

    def top_latents(self, task: str, k: int = 10) -> list[tuple[int, float]]:
        row = self.latent_total[self.tasks.index(task)]
        order = np.argsort(-np.abs(row), kind="stable")[:k]
        return [(int(j), float(row[j])) for j in order]

    def to_json(self) -> dict:
        return {
            "hook_name": self.hook_name,
            "metric": "teacher-forced log-prob of the correct predicted grid (sum over cells)",
            "method": "gradient x activation, SAE spliced with its error kept",
            "clean_metric": self.metric,
            "top_latents": {t: self.top_latents(t) for t in self.tasks},
            "top_pairs": {
                t: [{"position": p, "latent": j, "attribution": a} for p, j, a in pairs]
                for t, pairs in self.top_pairs.items()
            },
        }

    def plot(self, path: str | Path | None = None, k: int = 8) -> Figure:
        """Per task, the k latents of largest |attribution| (bars)."""
        plt = pyplot()

        cols = min(4, len(self.tasks))
        rows = math.ceil(len(self.tasks) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
        for ax, task in zip(axes.flat, self.tasks, strict=False):
            top = self.top_latents(task, k)
            ax.barh(range(len(top)), [a for _, a in top], color="tab:blue")
            ax.set_yticks(range(len(top)), [str(j) for j, _ in top], fontsize=7)
            ax.invert_yaxis()
            ax.set_title(task, fontsize=9)
            ax.tick_params(axis="x", labelsize=7)
        for ax in list(axes.flat)[len(self.tasks) :]:
            ax.axis("off")
        fig.suptitle("grad x activation on log p(correct grid), per latent", fontsize=10)
        fig.tight_layout()
        return finish(fig, path)

    def findings(self) -> list[str]:
        out = []
        for task in self.tasks[:4]:
            (j, a), *_ = self.top_latents(task, 1)
            total = np.abs(self.latent_total[self.tasks.index(task)]).sum()
            out.append(
                f"{task}: latent {j} has the largest attribution ({a:+.2f} nats, "
                f"{abs(a) / max(total, 1e-12):.0%} of the total |attribution|)."
            )
        return out


def attribute(
    model, sae, quizzes: QuizSet, batch_size: int = 8, top_k: int = 20
) -> AttributionResult:
    """Gradient x activation of `grid_logprob` to every (position, latent) pair (see module
    docstring), aggregated per task."""
    tokens = quizzes.tokens
    tasks = quizzes.task_names()
    task_of = np.array([tasks.index(t) for t in quizzes.tasks.tolist()])
    d_sae, length = sae.cfg.d_sae, tokens.shape[1]
    pair_sum = torch.zeros(len(tasks), length, d_sae)
    metrics = []
    state: dict[str, torch.Tensor] = {}

    def edit(latents: torch.Tensor) -> torch.Tensor:
        gate = torch.ones_like(latents, requires_grad=True)
        state["gate"] = gate
        return latents * gate

    hooks = _hooks(sae, edit, None)
    for lo in range(0, len(tokens), batch_size):
        chunk = tokens[lo : lo + batch_size].to(model.device)
        logits = model.run_with_hooks(chunk, fwd_hooks=hooks)
        metric = grid_logprob(logits, chunk)
        (grad,) = torch.autograd.grad(metric.sum(), [state["gate"]])
        if grad.shape[:2] != chunk.shape:
            raise ConfigError(f"expected latents [batch, {length}, d_sae], got {grad.shape}")
        metrics.append(metric.detach().cpu())
        rows = torch.as_tensor(task_of[lo : lo + batch_size])
        pair_sum.index_add_(0, rows, grad.detach().float().cpu())
    counts = torch.as_tensor(np.bincount(task_of, minlength=len(tasks)), dtype=torch.float32)
    pair_mean = pair_sum / counts[:, None, None]
    top_pairs = {}
    for t, name in enumerate(tasks):
        flat = pair_mean[t].reshape(-1)
        index = flat.abs().topk(min(top_k, flat.numel())).indices
        top_pairs[name] = [
            (int(i) // d_sae, int(i) % d_sae, float(flat[i])) for i in index.tolist()
        ]
    return AttributionResult(
        sae.cfg.hook_name,
        tasks,
        per_task(torch.cat(metrics), quizzes.tasks),
        pair_mean.sum(1).numpy(),
        top_pairs,
    )


# ------------------------------------------------------------------------------ learned mask

_HC_BETA, _HC_LOW, _HC_HIGH = 2 / 3, -0.1, 1.1  # hard-concrete (Louizos et al. 2018)


@dataclass
class MaskResult:
    """A learned latent mask for one quiz set: the gates, the latents kept (gate > 0.5, largest
    first) and the predicted-grid loss with all latents, the hard mask, and none."""

    hook_name: str
    gate_kind: str
    gates: np.ndarray  # [d_sae] deterministic gate values in [0, 1]
    kept: list[int]
    loss_full: float
    loss_masked: float
    loss_none: float
    history: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "hook_name": self.hook_name,
            "gate": self.gate_kind,
            "kept": self.kept,
            "kept_gates": [float(self.gates[j]) for j in self.kept],
            "grid_loss": {
                "all_latents": self.loss_full,
                "kept_only": self.loss_masked,
                "no_latents": self.loss_none,
            },
            "history": self.history,
        }

    def plot(self, path: str | Path | None = None) -> Figure:
        """Sorted gate values (log-y), the kept ones above 0.5."""
        plt = pyplot()

        fig, ax = plt.subplots(figsize=(5, 3))
        g = np.sort(self.gates)[::-1][: max(50, 2 * len(self.kept))]
        ax.bar(range(len(g)), g)
        ax.axhline(0.5, color="gray", lw=0.8)
        ax.set_xlabel("latents, largest gate first")
        ax.set_ylabel("gate")
        ax.set_title(f"{len(self.kept)} latents kept ({self.gate_kind} gates)", fontsize=9)
        fig.tight_layout()
        return finish(fig, path)

    def findings(self) -> list[str]:
        return [
            f"The mask keeps {len(self.kept)} latents (top: {self.kept[:5]}); grid loss "
            f"{self.loss_full:.4f} with all latents, {self.loss_masked:.4f} with only these, "
            f"{self.loss_none:.4f} with none."
        ]


def _gate_values(logits: torch.Tensor, kind: str, generator: torch.Generator | None):
    """Gate in [0, 1]: sigmoid(logits), or a hard-concrete sample (deterministic when no
    generator) ; and the penalty's per-latent term (gate, or P(gate > 0) for hard-concrete)."""
    if kind == "sigmoid":
        g = torch.sigmoid(logits)
        return g, g
    if generator is not None:
        u = torch.rand(logits.shape, generator=generator).clamp(1e-6, 1 - 1e-6)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + logits) / _HC_BETA)
    else:
        s = torch.sigmoid(logits)
    g = (s * (_HC_HIGH - _HC_LOW) + _HC_LOW).clamp(0, 1)
    p_open = torch.sigmoid(logits - _HC_BETA * math.log(-_HC_LOW / _HC_HIGH))
    return g, p_open


def _masked_loss(model, sae, tokens, gate, positions, keep_error, batch_size) -> torch.Tensor:
    total = 0.0
    hooks = _hooks(sae, lambda f: f * gate, positions, keep_error)
    for lo in range(0, len(tokens), batch_size):
        chunk = tokens[lo : lo + batch_size].to(model.device)
        logits = model.run_with_hooks(chunk, fwd_hooks=hooks)
        cells = predicted_cells(chunk)
        ce = F.cross_entropy(logits[:, cells].float().transpose(1, 2), chunk[:, cells])
        total = total + ce * len(chunk) / len(tokens)
    return total


def learned_mask(
    model,
    sae,
    quizzes: QuizSet,
    penalty: float = 1e-3,
    steps: int = 200,
    lr: float = 0.1,
    gate: str = "sigmoid",
    positions: str | None = "grid",
    keep_error: bool = True,
    batch_size: int = 32,
    seed: int = 0,
    init: float = 3.0,
) -> MaskResult:
    """Learn a gate per latent minimising the predicted grid's cross-entropy on `quizzes`
    (e.g. one task's) + penalty x (sum of gates, or of P(gate open) for hard-concrete), the
    gates multiplying the latents at `positions`. Full-batch Adam for `steps` steps."""
    if gate not in ("sigmoid", "hard_concrete"):
        raise ConfigError(f"gate must be 'sigmoid' or 'hard_concrete', got {gate!r}")
    if steps < 0 or penalty < 0:
        raise ConfigError(f"steps and penalty must be >= 0, got {steps}, {penalty}")
    logits = torch.full((sae.cfg.d_sae,), float(init), device=model.device, requires_grad=True)
    optimizer = torch.optim.Adam([logits], lr=lr)
    generator = torch.Generator().manual_seed(seed) if gate == "hard_concrete" else None
    tokens = quizzes.tokens
    history = []
    params = [p for p in list(model.parameters()) + list(sae.parameters()) if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        for step in range(steps):
            g, open_ = _gate_values(logits, gate, generator)
            loss = _masked_loss(model, sae, tokens, g, positions, keep_error, batch_size)
            total = loss + penalty * open_.sum()
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
            if step % max(1, steps // 10) == 0 or step == steps - 1:
                history.append(
                    {"step": step, "loss": loss.item(), "open": int((open_ > 0.5).sum())}
                )
        with torch.no_grad():
            final, _ = _gate_values(logits, gate, None)
            kept = torch.nonzero(final > 0.5).flatten()
            kept = kept[final[kept].argsort(descending=True)].tolist()
            hard = torch.zeros_like(final)
            hard[kept] = 1.0

            def loss_with(g: torch.Tensor) -> float:
                return float(_masked_loss(model, sae, tokens, g, positions, keep_error, batch_size))

            full = loss_with(torch.ones_like(final))
            masked, none = loss_with(hard), loss_with(torch.zeros_like(final))
    finally:
        for p in params:
            p.requires_grad_(True)
    return MaskResult(
        sae.cfg.hook_name, gate, final.detach().cpu().numpy(), kept, full, masked, none, history
    )


# ------------------------------------------------------------------------------ causal tests


@dataclass
class CausalResult:
    """Greedy predicted-grid accuracy and loss per task, before and after an edit of latents."""

    hook_name: str
    description: str
    latents: list[int]
    baseline: dict[str, dict[str, float]]  # GridMetrics.summary
    edited: dict[str, dict[str, float]]

    def to_json(self) -> dict:
        return {
            "hook_name": self.hook_name,
            "edit": self.description,
            "latents": self.latents,
            "baseline": self.baseline,
            "edited": self.edited,
        }

    def plot(self, path: str | Path | None = None) -> Figure:
        """Greedy accuracy per task, baseline vs edited."""
        plt = pyplot()

        tasks = list(self.baseline["greedy_accuracy"])
        x = np.arange(len(tasks))
        fig, ax = plt.subplots(figsize=(1 + 0.8 * len(tasks), 3))
        ax.bar(x - 0.2, [self.baseline["greedy_accuracy"][t] for t in tasks], 0.4, label="clean")
        ax.bar(x + 0.2, [self.edited["greedy_accuracy"][t] for t in tasks], 0.4, label="edited")
        ax.set_xticks(x, tasks, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel("greedy accuracy")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
        ax.set_title(self.description, fontsize=9)
        fig.tight_layout()
        return finish(fig, path)

    def findings(self) -> list[str]:
        b, e = self.baseline["greedy_accuracy"], self.edited["greedy_accuracy"]
        tasks = [t for t in b if t != "all"]
        worst = max(tasks, key=lambda t: abs(e[t] - b[t]))
        return [
            f"{self.description}: greedy accuracy {b['all']:.1%} -> {e['all']:.1%} overall; "
            f"largest change on {worst} ({b[worst]:.1%} -> {e[worst]:.1%})."
        ]


def edit_latents(
    model,
    sae,
    quizzes: QuizSet,
    edit: Callable[[torch.Tensor], torch.Tensor],
    description: str,
    latents: Sequence[int] = (),
    positions: str | None = "grid",
    keep_error: bool = True,
    baseline: dict | None = None,
) -> CausalResult:
    """Greedy accuracy with `edit` applied to the spliced SAE's latents at `positions`, against
    the unedited splice (the clean model when keep_error)."""
    if baseline is None:
        hooks = [] if keep_error else _hooks(sae, None, positions, keep_error)
        baseline = grid_metrics(model, quizzes.tokens, hooks, greedy=True).summary(quizzes.tasks)
    hooks = _hooks(sae, edit, positions, keep_error)
    edited = grid_metrics(model, quizzes.tokens, hooks, greedy=True).summary(quizzes.tasks)
    return CausalResult(sae.cfg.hook_name, description, list(latents), baseline, edited)


def ablate_latents(
    model,
    sae,
    quizzes: QuizSet,
    latents: Sequence[int],
    invert: bool = False,
    positions: str | None = "grid",
    keep_error: bool = True,
    baseline: dict | None = None,
) -> CausalResult:
    """Zero `latents` (invert=True: zero every other latent, keeping only these)."""
    latents = _check_latents(sae, latents)
    keep = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    keep[latents] = True
    if not invert:
        keep = ~keep
    scale = keep.to(sae.W_dec.dtype).to(sae.W_dec.device)
    what = "keep only" if invert else "zero"
    return edit_latents(
        model,
        sae,
        quizzes,
        lambda f: f * scale,
        f"{what} latents {latents[:8]}",
        latents,
        positions,
        keep_error,
        baseline,
    )


def amplify_latents(
    model,
    sae,
    quizzes: QuizSet,
    latents: Sequence[int],
    factor: float,
    positions: str | None = "grid",
    keep_error: bool = True,
    baseline: dict | None = None,
) -> CausalResult:
    """Multiply `latents` by `factor` where they fire."""
    latents = _check_latents(sae, latents)
    scale = torch.ones(sae.cfg.d_sae, dtype=sae.W_dec.dtype, device=sae.W_dec.device)
    scale[latents] = float(factor)
    return edit_latents(
        model,
        sae,
        quizzes,
        lambda f: f * scale,
        f"x{factor:g} latents {latents[:8]}",
        latents,
        positions,
        keep_error,
        baseline,
    )
