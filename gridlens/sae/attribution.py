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
- Seed 004, per example: `example_attribution` (each quiz's attribution and its top-k
  (position, latent) pairs of each sign), its clustered latent x example matrix, `ablate_pairs`
  (zero a quiz's own pairs at their positions, then generate and score with
  gridlens.sae.steering.generation_metrics) and `attribution_study` (all of it over several SAEs).
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
from gridlens.sae.splice import encode_inference

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


# ------------------------------------------------------------------------------------ per example


@dataclass
class ExampleAttribution:
    """Gradient x activation per quiz (SAE-basis attribution, per example).

    by_latent[i, j]: quiz i's attribution to latent j summed over positions. positive[i] /
    negative[i]: quiz i's k (position, latent, attribution) pairs of largest positive (they
    support the correct grid: zeroing them should lower its probability) and most negative
    attribution (they oppose it)."""

    hook_name: str
    tasks: np.ndarray  # [n] task of each quiz
    metric: np.ndarray  # [n] clean log-probability of the correct grid
    by_latent: np.ndarray  # [n, d_sae]
    positive: list[list[tuple[int, int, float]]]
    negative: list[list[tuple[int, int, float]]]

    def pairs(self, sign: str) -> list[list[tuple[int, int, float]]]:
        if sign not in ("positive", "negative"):
            raise ConfigError(f"sign must be 'positive' or 'negative', got {sign!r}")
        return self.positive if sign == "positive" else self.negative

    def expression(self, n_latents: int = 40, n_clusters: int = 4) -> ExpressionClusters:
        """The latent x example matrix of the n_latents latents of largest mean |attribution|,
        rows and columns ordered by hierarchical clustering (average linkage, correlation)."""
        from scipy.cluster.hierarchy import fcluster, leaves_list, linkage

        score = np.abs(self.by_latent).mean(0)
        latents = np.argsort(-score, kind="stable")[: min(n_latents, int((score > 0).sum()))]
        matrix = self.by_latent[:, latents].T  # [latents, examples]
        if len(latents) < 2 or matrix.shape[1] < 2:
            raise ConfigError("clustering needs two examples and two latents with attribution")
        rows = linkage(_jitter(matrix), "average", metric="correlation")
        cols = linkage(_jitter(matrix.T), "average", metric="correlation")
        clusters = fcluster(cols, n_clusters, criterion="maxclust")
        return ExpressionClusters(
            self.hook_name,
            latents,
            matrix,
            leaves_list(rows),
            leaves_list(cols),
            clusters,
            self.tasks,
        )


def _jitter(m: np.ndarray) -> np.ndarray:
    """Rows with zero variance have no correlation: give them a tiny deterministic slope."""
    flat = m.std(1) == 0
    out = m.astype(np.float64).copy()
    out[flat] += np.linspace(0, 1e-9, m.shape[1])
    return out


@dataclass
class ExpressionClusters:
    """A latent x example attribution matrix with its clustering: `row_order` / `col_order`
    (dendrogram leaves) and `clusters` [n examples] (cluster ids from the column dendrogram),
    compared with the quizzes' tasks (the world's ground truth)."""

    hook_name: str
    latents: np.ndarray
    matrix: np.ndarray  # [latents, examples]
    row_order: np.ndarray
    col_order: np.ndarray
    clusters: np.ndarray
    tasks: np.ndarray

    def composition(self) -> dict[int, dict[str, int]]:
        """cluster id -> task -> number of its examples."""
        out: dict[int, dict[str, int]] = {}
        for c, t in zip(self.clusters.tolist(), self.tasks.tolist(), strict=True):
            out.setdefault(int(c), {}).setdefault(str(t), 0)
            out[int(c)][str(t)] += 1
        return dict(sorted(out.items()))

    def purity(self) -> float:
        """Share of examples whose cluster's majority task is their own task."""
        majority = sum(max(tasks.values()) for tasks in self.composition().values())
        return majority / len(self.tasks)

    def to_json(self) -> dict:
        return {
            "hook_name": self.hook_name,
            "values": "gradient x activation summed over positions, per quiz",
            "clustering": "average linkage on correlation distance, rows and columns",
            "latents_in_row_order": self.latents[self.row_order].tolist(),
            "clusters": {str(c): tasks for c, tasks in self.composition().items()},
            "task_purity": self.purity(),
        }

    def plot(self, path: str | Path | None = None):
        """Heatmap (latents x examples, clustered), a task strip over the examples."""
        plt = pyplot()
        m = self.matrix[self.row_order][:, self.col_order]
        names = list(dict.fromkeys(self.tasks.tolist()))
        strip = np.array([names.index(t) for t in self.tasks[self.col_order]])[None, :]
        fig, (top, ax) = plt.subplots(
            2, 1, figsize=(7, 1 + 0.12 * len(m)), height_ratios=[1, 12], sharex=True
        )
        top.imshow(strip, aspect="auto", cmap="tab20", vmin=0, vmax=19, interpolation="nearest")
        top.set_yticks([])
        top.set_title(f"latent x example attribution at {self.hook_name} (tasks above)", fontsize=9)
        bound = float(np.abs(m).max()) or 1.0
        image = ax.imshow(
            m, aspect="auto", cmap="RdBu_r", vmin=-bound, vmax=bound, interpolation="nearest"
        )
        ax.set_yticks(range(len(m)), [str(j) for j in self.latents[self.row_order]], fontsize=5)
        ax.set_xlabel(f"{m.shape[1]} examples, clustered; task purity {self.purity():.0%}")
        fig.colorbar(image, ax=ax, label="grad x activation")
        handles = [
            plt.Rectangle((0, 0), 1, 1, color=plt.get_cmap("tab20")(i)) for i in range(len(names))
        ]
        fig.legend(handles, names, fontsize=6, loc="lower center", ncol=min(5, len(names)))
        fig.tight_layout(rect=(0, 0.06, 1, 1))
        return finish(fig, path)


def example_attribution(
    model, sae, quizzes: QuizSet, k: int = 5, batch_size: int = 8
) -> ExampleAttribution:
    """Per-quiz gradient x activation of `grid_logprob` (the SAE spliced with its error kept),
    and each quiz's top-k (position, latent) pairs of either sign."""
    state: dict[str, torch.Tensor] = {}

    def edit(latents: torch.Tensor) -> torch.Tensor:
        state["gate"] = torch.ones_like(latents, requires_grad=True)
        return latents * state["gate"]

    hooks = _hooks(sae, edit, None)
    d_sae = sae.cfg.d_sae
    by_latent, metrics, positive, negative = [], [], [], []
    for chunk in quizzes.tokens.split(batch_size):
        chunk = chunk.to(model.device)
        metric = grid_logprob(model.run_with_hooks(chunk, fwd_hooks=hooks), chunk)
        (grad,) = torch.autograd.grad(metric.sum(), [state["gate"]])
        grad = grad.detach().float().cpu().reshape(len(chunk), -1)
        metrics.append(metric.detach().cpu())
        by_latent.append(grad.reshape(len(chunk), -1, d_sae).sum(1))
        for sign, into in ((1.0, positive), (-1.0, negative)):
            values, index = (sign * grad).topk(k, dim=1)
            for v_row, i_row in zip(values.tolist(), index.tolist(), strict=True):
                into.append(
                    [
                        (i // d_sae, i % d_sae, sign * v)
                        for v, i in zip(v_row, i_row, strict=True)
                        if v > 0
                    ]
                )
    return ExampleAttribution(
        sae.cfg.hook_name,
        np.asarray(quizzes.tasks),
        torch.cat(metrics).numpy(),
        torch.cat(by_latent).numpy(),
        positive,
        negative,
    )


def pair_ablation_hook(sae, pairs: Sequence[Sequence[tuple[int, int, float]]]) -> tuple:
    """A forward hook zeroing, for each row i of the batch, the latents of its (position,
    latent) pairs `pairs[i]` at those positions only, the SAE's error kept (so only the edit
    changes the model); absolute positions, so it works under the KV cache."""
    flat = [(i, p, j) for i, row in enumerate(pairs) for p, j, _ in row]
    index = torch.as_tensor(flat, dtype=torch.long).reshape(-1, 3)

    def fn(act: torch.Tensor, hook) -> torch.Tensor | None:
        start, t = getattr(hook, "start", 0), act.shape[1]
        here = index[(index[:, 1] >= start) & (index[:, 1] < start + t)]
        if len(here) == 0:
            return None
        x = act.reshape(*act.shape[:2], -1).clone()
        rows, pos, latent = (c.to(act.device) for c in here.T)
        rel = pos - start
        f = encode_inference(sae, x[rows, rel].to(sae.W_enc.dtype))
        removed = f[torch.arange(len(here), device=f.device), latent, None] * sae.W_dec[latent]
        x.index_put_((rows, rel), -removed.to(x.dtype), accumulate=True)
        return x.reshape(act.shape)

    return (sae.cfg.hook_name, fn)


@torch.no_grad()
def ablate_pairs(
    model, sae, quizzes: QuizSet, pairs, check_tasks, batch_size: int = 32, base=None
) -> tuple[np.ndarray, dict[str, dict[str, float]], torch.Tensor]:
    """Zero each quiz's (position, latent) `pairs` (one list per quiz): the teacher-forced
    log-probability of the correct grid per quiz, the generation metrics of the greedy answers
    (gridlens.sae.steering.generation_metrics, against `base` outputs if given), the outputs."""
    from gridlens.models.generate import complete
    from gridlens.sae.steering import generation_metrics

    if len(pairs) != len(quizzes):
        raise ConfigError(f"{len(pairs)} pair lists for {len(quizzes)} quizzes")
    logprob, outs = [], []
    for lo in range(0, len(quizzes), batch_size):
        chunk = quizzes.tokens[lo : lo + batch_size].to(model.device)
        with model.hooks([pair_ablation_hook(sae, pairs[lo : lo + batch_size])]):
            logprob.append(grid_logprob(model(chunk), chunk).cpu())
            outs.append(complete(model, chunk).cpu())
    out = torch.cat(outs)
    tasks = np.asarray(quizzes.tasks)
    metrics = generation_metrics(out, quizzes.tokens, tasks, check_tasks, base)
    return torch.cat(logprob).numpy(), metrics, out


@dataclass
class AttributionStudy:
    """Seed 004's experiment over several SAEs: per SAE, the clustered expression matrix and
    the top-k (position, latent) ablations of each sign, scored on generation."""

    k: int
    clean: dict[str, dict[str, float]]  # generation metrics of the unedited model
    clean_logprob: dict[str, float]  # SAE name -> mean clean log-probability
    expression: dict[str, ExpressionClusters]
    ablated: dict[str, dict[str, dict[str, dict[str, float]]]]  # sae -> sign -> metric -> task
    logprob: dict[str, dict[str, float]]  # sae -> sign -> mean teacher-forced log-prob

    def delta(self, name: str, sign: str, metric: str) -> float:
        return self.ablated[name][sign][metric]["all"] - self.clean[metric]["all"]

    def to_json(self) -> dict:
        return {
            "format": "gridlens.sae_attribution_study",
            "version": 1,
            "k": self.k,
            "ablation": "each quiz's top-k (position, latent) pairs by gradient x activation "
            "zeroed at their positions (SAE error kept), then the last grid generated greedily",
            "clean": self.clean,
            "saes": {
                name: {
                    "clean_logprob": self.clean_logprob[name],
                    "ablated_logprob": self.logprob[name],
                    "ablated": self.ablated[name],
                    "expression": self.expression[name].to_json(),
                }
                for name in self.ablated
            },
        }

    def findings(self) -> list[str]:
        out = []
        for name in self.ablated:
            p, n = self.logprob[name]["positive"], self.logprob[name]["negative"]
            out.append(
                f"{name}: zeroing each quiz's top-{self.k} supporting pairs moves log p(correct "
                f"grid) {self.clean_logprob[name]:.2f} -> {p:.2f} and accuracy by "
                f"{self.delta(name, 'positive', 'accuracy'):+.1%} (answers valid for no rule "
                f"{self.delta(name, 'positive', 'valid_none'):+.1%}); the top-{self.k} opposing "
                f"pairs -> {n:.2f}, accuracy {self.delta(name, 'negative', 'accuracy'):+.1%}; "
                f"example clusters match tasks at {self.expression[name].purity():.0%}."
            )
        return out

    def plot(self, path: str | Path | None = None):
        """Per SAE and sign, the change of each generation metric against the clean model."""
        from gridlens.sae.steering import GENERATION_METRICS

        plt = pyplot()
        names = list(self.ablated)
        fig, axes = plt.subplots(1, 2, figsize=(10, 1.5 + 0.5 * len(names)), sharey=True)
        metrics = [m for m in GENERATION_METRICS if m != "changed_cells"]
        for ax, sign in zip(axes, ("positive", "negative"), strict=True):
            for i, metric in enumerate(metrics):
                ys = np.arange(len(names)) + (i - len(metrics) / 2) * 0.12
                ax.barh(ys, [self.delta(n, sign, metric) for n in names], 0.12, label=metric)
            ax.axvline(0, color="gray", lw=0.8)
            ax.set_yticks(range(len(names)), names, fontsize=8)
            ax.set_title(f"top-{self.k} {sign} pairs zeroed", fontsize=9)
            ax.set_xlabel("change against the clean model")
        axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5))
        fig.tight_layout()
        return finish(fig, path)


def attribution_study(
    model,
    saes: dict[str, object],
    quizzes: QuizSet,
    k: int = 5,
    check_tasks="all",
    n_latents: int = 40,
    n_clusters: int = 4,
) -> AttributionStudy:
    """For each SAE (name -> SAE, one at a time): per-example attribution, its clustered
    expression matrix, and the top-k (position, latent) ablation of both signs scored on greedy
    generation against the clean model (the same for every SAE, its error being kept)."""
    from gridlens.models.generate import complete
    from gridlens.sae.steering import generation_metrics
    from gridlens.world.tasks import resolve_tasks

    checks = list(resolve_tasks(check_tasks))
    tasks = np.asarray(quizzes.tasks)
    with torch.no_grad():
        base = torch.cat(
            [complete(model, c.to(model.device)).cpu() for c in quizzes.tokens.split(32)]
        )
    study = AttributionStudy(
        k, generation_metrics(base, quizzes.tokens, tasks, checks), {}, {}, {}, {}
    )
    for name, sae in saes.items():
        result = example_attribution(model, sae, quizzes, k)
        study.clean_logprob[name] = float(result.metric.mean())
        study.expression[name] = result.expression(n_latents, n_clusters)
        study.ablated[name], study.logprob[name] = {}, {}
        for sign in ("positive", "negative"):
            logprob, metrics, _ = ablate_pairs(
                model, sae, quizzes, result.pairs(sign), checks, base=base
            )
            study.ablated[name][sign] = metrics
            study.logprob[name][sign] = float(logprob.mean())
    return study
