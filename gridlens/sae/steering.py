"""Steering: add a direction (SAE decoder rows x scale, or any vector) to a site's activation at
chosen positions while the model generates the predicted grid, and see which task's rule the
output follows.

Which rule: the generated pair (B, f_B) is checked on its own against every task's checker, as
the quiz (B, f_B, B, f_B) (the worked example then agrees with it by construction, so a task
whose rule maps B to the output with some parameters passes). An output is "valid for the
original task" when its own task's checker passes, "valid for another task" per other task, and
"valid for none" when no checked task passes. The true f_B is scored the same way as a
reference. Adding scale x W_dec[j] to the activation equals adding `scale` to latent j in an SAE
splice that keeps its error, since the decoder is linear.

Also: `generation_metrics` (accuracy, rule validity, out-of-distribution answers of generated
grids) and `component_scan`, a steering-coefficient scan with the direct logit
attribution of every component and the logit lens at each coefficient.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from gridlens.analysis.core import QuizSet
from gridlens.errors import ConfigError
from gridlens.models.generate import complete, last_grid_positions
from gridlens.plotting import finish, pyplot
from gridlens.sae.features import recorded_positions
from gridlens.world import get_task
from gridlens.world.structures import to_forward_tokens
from gridlens.world.tasks import resolve_tasks
from gridlens.world.tokens import N_COLORS, tokens_to_grids

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def steering_hook(hook_name: str, vector: torch.Tensor, positions: np.ndarray) -> tuple:
    """A forward hook adding `vector` (the site's flattened width) at absolute `positions`; it
    indexes relative to hook.start, so it works under the KV cache."""
    wanted = torch.as_tensor(np.asarray(positions, dtype=np.int64))

    def fn(x: torch.Tensor, hook) -> torch.Tensor:
        start, t = hook.start, x.shape[1]
        rel = wanted[(wanted >= start) & (wanted < start + t)] - start
        if rel.numel() == 0:
            return x
        flat = x.reshape(x.shape[0], t, -1).clone()
        flat[:, rel.to(x.device)] += vector.to(device=x.device, dtype=x.dtype)
        return flat.reshape(x.shape)

    return (hook_name, fn)


def rule_validity(tokens: torch.Tensor, tasks: Sequence[str]) -> dict[str, np.ndarray]:
    """task -> [n] bool: does the pair (B, f_B) of each quiz (any structure) follow the task's
    rule (checked as the quiz B, f_B, B, f_B)?"""
    forward = to_forward_tokens(tokens.cpu())
    grids, _ = tokens_to_grids(forward, *_side(forward))
    pair = np.asarray(grids)[:, [2, 3, 2, 3]]
    return {t: np.asarray(get_task(t).check(pair), dtype=bool) for t in tasks}


def _side(tokens: torch.Tensor) -> tuple[int, int]:
    from gridlens.world.tokens import grid_size_from_length

    return grid_size_from_length(tokens.shape[1])


@dataclass
class SteeringResult:
    """Per scale, the share of outputs valid for their original task, for each other checked
    task, and for none; exact-match accuracy alongside."""

    hook_name: str
    what: str
    scales: list[float]
    quiz_tasks: list[str]
    check_tasks: list[str]
    correct: list[dict[str, float]]  # per scale: task -> exact-match share, "all"
    original: list[dict[str, float]]  # per scale: task -> valid for its own task, "all"
    other: list[dict[str, float]]  # per scale: check task -> share of quizzes of other tasks
    none: list[dict[str, float]]  # per scale: task -> valid for no checked task, "all"
    reference: dict[str, dict[str, float]]  # the true f_B scored the same way
    outputs: dict[float, torch.Tensor] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict:
        return {
            "hook_name": self.hook_name,
            "steered": self.what,
            "check": "pair (B, output) checked as quiz (B, output, B, output) per task",
            "scales": self.scales,
            "correct": self.correct,
            "valid_original": self.original,
            "valid_other": self.other,
            "valid_none": self.none,
            "reference_true_answer": self.reference,
        }

    def plot(self, path: str | Path | None = None) -> Figure:
        """Shares against scale: original task, none, and every other task that ever passes."""
        plt = pyplot()

        fig, ax = plt.subplots(figsize=(6, 3.5))
        x = self.scales
        ax.plot(x, [o["all"] for o in self.original], "k-o", label="original task")
        ax.plot(x, [c["all"] for c in self.correct], "k:", label="exactly right")
        ax.plot(x, [n["all"] for n in self.none], "r--", label="no task")
        for task in self.check_tasks:
            ys = [o.get(task, 0.0) for o in self.other]
            if max(ys) > 0:
                ax.plot(x, ys, "-", label=f"{task} (other quizzes)")
        ax.set_xlabel("steering scale")
        ax.set_ylabel("share of outputs")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5))
        ax.set_title(f"steering {self.what} at {self.hook_name}", fontsize=9)
        fig.tight_layout()
        return finish(fig, path)

    def findings(self) -> list[str]:
        first, last = 0, len(self.scales) - 1
        best_task, best = None, 0.0
        for i in range(len(self.scales)):
            for task, share in self.other[i].items():
                if share > best:
                    best_task, best = (task, self.scales[i]), share
        start, end = self.original[first]["all"], self.original[last]["all"]
        out = [
            f"Steering {self.what}: outputs valid for their own task {start:.1%} at scale "
            f"{self.scales[first]:g}, {end:.1%} at {self.scales[last]:g}; valid for no task "
            f"{self.none[last]['all']:.1%} there."
        ]
        if best_task is not None:
            out.append(
                f"Largest pull to another rule: {best:.1%} of other tasks' quizzes follow "
                f"{best_task[0]} at scale {best_task[1]:g}."
            )
        else:
            out.append("No scale makes any output follow another task's rule.")
        return out


def decoder_direction(sae, latents: Sequence[int]) -> torch.Tensor:
    """The sum of the decoder rows of `latents`."""
    latents = [int(j) for j in latents]
    if not latents or any(not 0 <= j < sae.cfg.d_sae for j in latents):
        raise ConfigError(
            f"latents must be a non-empty list in [0, {sae.cfg.d_sae}), got {latents}"
        )
    return sae.W_dec.detach()[latents].sum(0)


def _shares(values: np.ndarray, tasks: np.ndarray) -> dict[str, float]:
    out = {t: float(values[tasks == t].mean()) for t in dict.fromkeys(tasks.tolist())}
    out["all"] = float(values.mean())
    return out


@torch.no_grad()
def steer(
    model,
    quizzes: QuizSet,
    direction: torch.Tensor,
    hook_name: str,
    scales: Sequence[float] = (0.0, 1.0, 2.0, 4.0, 8.0),
    positions: str | np.ndarray = "grid",
    check_tasks: str | Sequence[str] | None = "all",
    what: str = "a direction",
    batch_size: int = 64,
    keep_outputs: bool = False,
) -> SteeringResult:
    """Generate the predicted grid with scale x `direction` added at `hook_name` on `positions`
    ("grid", "all", "no_markers" or a bool mask) for each scale, and score the outputs."""
    if hook_name not in model.hook_names:
        from gridlens.errors import unknown_name

        raise unknown_name("hook", hook_name, model.hook_names)
    tokens = quizzes.tokens
    where = recorded_positions(positions, tokens.shape[1])
    direction = torch.as_tensor(direction, dtype=torch.float32).flatten()
    checks = list(resolve_tasks(check_tasks))
    tasks = np.asarray(quizzes.tasks)
    reference = _score(tokens, tokens, tasks, checks)
    result = SteeringResult(
        hook_name,
        what,
        [float(s) for s in scales],
        quizzes.task_names(),
        checks,
        [],
        [],
        [],
        [],
        reference[1],
    )
    for scale in result.scales:
        hook = steering_hook(hook_name, direction * scale, where)
        outs = []
        with model.hooks([hook]):
            for lo in range(0, len(tokens), batch_size):
                outs.append(complete(model, tokens[lo : lo + batch_size].to(model.device)).cpu())
        out = torch.cat(outs)
        correct, scored = _score(out, tokens, tasks, checks)
        result.correct.append(correct)
        result.original.append(scored["original"])
        result.other.append(scored["other"])
        result.none.append(scored["none"])
        if keep_outputs:
            result.outputs[scale] = out
    return result


def _score(out: torch.Tensor, tokens: torch.Tensor, tasks: np.ndarray, checks: list[str]):
    """(exact-match shares, {"original", "other", "none"} shares) of outputs `out`."""
    correct = _shares((out == tokens).all(1).numpy(), tasks)
    valid = rule_validity(out, checks)
    original = np.array(
        [valid[t][i] if t in valid else False for i, t in enumerate(tasks.tolist())]
    )
    any_valid = np.zeros(len(tasks), dtype=bool)
    for v in valid.values():
        any_valid |= v
    other = {}
    for t in checks:
        rows = tasks != t
        other[t] = float(valid[t][rows].mean()) if rows.any() else 0.0
    scored = {
        "original": _shares(original, tasks),
        "other": other,
        "none": _shares(~any_valid, tasks),
    }
    return correct, scored


# ------------------------------------------------------------------------------ generation metrics

GENERATION_METRICS = (
    "accuracy", "cell_accuracy", "valid_own", "valid_other_only", "valid_none", "unseen_colour",
    "changed_cells",
)  # fmt: skip


def generation_metrics(
    out: torch.Tensor,
    tokens: torch.Tensor,
    tasks: np.ndarray,
    check_tasks: Sequence[str],
    base: torch.Tensor | None = None,
) -> dict[str, dict[str, float]]:
    """How generated quizzes `out` [n, L] (their last grid generated) fare, per task and "all":
    exact `accuracy` and `cell_accuracy` against `tokens`; rule validity from the checkers
    (`valid_own`: its own task's rule; `valid_other_only`: another checked rule but not its
    own; `valid_none`: no checked rule, an out-of-distribution answer); `unseen_colour`: the
    answer uses a colour found in none of the three prompt grids (also out of distribution);
    `changed_cells`: share of answer cells differing from `base` (e.g. the unedited output)."""
    cells = last_grid_positions(tokens.shape[1])
    answer, truth = out[:, cells].cpu(), tokens[:, cells].cpu()
    valid = rule_validity(out, check_tasks)
    own = np.array([valid[t][i] if t in valid else False for i, t in enumerate(tasks.tolist())])
    any_valid = np.zeros(len(tasks), dtype=bool)
    for v in valid.values():
        any_valid |= v
    prompt = tokens[:, : cells.start].cpu()
    seen = torch.stack([(prompt == c).any(1) for c in range(N_COLORS)], 1)
    used = torch.stack([(answer == c).any(1) for c in range(N_COLORS)], 1)
    changed = torch.zeros(len(tasks)) if base is None else (answer != base[:, cells].cpu())
    values = {
        "accuracy": (answer == truth).all(1).numpy(),
        "cell_accuracy": (answer == truth).float().mean(1).numpy(),
        "valid_own": own,
        "valid_other_only": any_valid & ~own,
        "valid_none": ~any_valid,
        "unseen_colour": (used & ~seen).any(1).numpy(),
        "changed_cells": changed.float().reshape(len(tasks), -1).mean(1).numpy(),
    }
    return {name: _shares(np.asarray(v, dtype=np.float64), tasks) for name, v in values.items()}


# ------------------------------------------------------------------------------ coefficient scans


@dataclass
class ComponentScan:
    """Seed 002's injection-coefficient scan: at each steering coefficient, teacher-forced on
    the true quizzes, the direct logit attribution of every component to the correct cell's
    logit minus the mean logit (mean over the predicted grid's cells and the quizzes), and the
    logit lens (cross-entropy of each residual read out early). `direct[:, c]` sums exactly to
    `logit_diff`, the last column `vector` holding what no component accounts for: the added
    vector's own direct effect when the steered site is a residual (0 at a component's site,
    whose term then includes it)."""

    hook_name: str
    what: str
    coefficients: list[float]
    components: list[str]  # "embed", "pos", "L{l}H{h}", "L{l}.mlp", "bias", "vector"
    direct: np.ndarray  # [n_coefficients, n_components]
    lens_sites: list[str]
    lens_loss: np.ndarray  # [n_coefficients, n_sites]
    logit_diff: np.ndarray  # [n_coefficients]

    def clusters(self, n_clusters: int = 3) -> dict[str, int]:
        """Components grouped by the shape of their profile against the coefficient (average
        linkage on correlation distance; flat profiles form their own cluster 0)."""
        from scipy.cluster.hierarchy import fcluster, linkage

        profiles = self.direct.T
        moving = np.flatnonzero(profiles.std(1) > 1e-6 * (np.abs(profiles).max() + 1e-12))
        out = {c: 0 for c in self.components}
        if len(moving) >= 2:
            tree = linkage(profiles[moving], "average", metric="correlation")
            ids = fcluster(tree, min(n_clusters, len(moving)), criterion="maxclust")
            out.update({self.components[i]: int(c) for i, c in zip(moving, ids, strict=True)})
        elif len(moving) == 1:
            out[self.components[moving[0]]] = 1
        return out

    def movers(self, k: int = 8) -> list[str]:
        """Up to k components whose attribution changes most over the scan (flat ones left out)."""
        spread = self.direct.max(0) - self.direct.min(0)
        moving = spread > 1e-6 * (np.abs(self.direct).max() + 1e-12)
        order = [i for i in np.argsort(-spread, kind="stable") if moving[i]]
        return [self.components[i] for i in order[:k]]

    def to_json(self) -> dict:
        return {
            "format": "gridlens.steering_scan",
            "version": 1,
            "hook_name": self.hook_name,
            "steered": self.what,
            "metric": "correct-cell logit - mean logit, predicted grid, teacher-forced",
            "coefficients": self.coefficients,
            "logit_diff": self.logit_diff.tolist(),
            "direct": {c: self.direct[:, i].tolist() for i, c in enumerate(self.components)},
            "logit_lens_loss": {
                s: self.lens_loss[:, i].tolist() for i, s in enumerate(self.lens_sites)
            },
            "clusters": self.clusters(),
        }

    def findings(self) -> list[str]:
        first, last = self.logit_diff[0], self.logit_diff[-1]
        spread = ", ".join(self.movers(3))
        return [
            f"Steering {self.what} from {self.coefficients[0]:g} to {self.coefficients[-1]:g}: "
            f"correct - mean logit {first:.2f} -> {last:.2f}; the components that move most: "
            f"{spread}.",
        ]

    def plot(self, path: str | Path | None = None, k: int = 8):
        """Left: attribution against coefficient for the k most moving components, coloured by
        cluster. Right: the logit lens loss of each residual against coefficient."""
        from gridlens.plotting import finish, pyplot

        plt = pyplot()
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
        clusters, cmap = self.clusters(), plt.get_cmap("tab10")
        for name in self.movers(k):
            i = self.components.index(name)
            left.plot(self.coefficients, self.direct[:, i], color=cmap(clusters[name]), label=name)
        left.plot(self.coefficients, self.logit_diff, "k--", label="total")
        left.set_xlabel("steering coefficient")
        left.set_ylabel("direct logit attribution")
        left.legend(fontsize=6, ncol=2)
        for i, site in enumerate(self.lens_sites):
            right.plot(self.coefficients, self.lens_loss[:, i], label=site)
        right.set_xlabel("steering coefficient")
        right.set_ylabel("logit lens cross-entropy")
        right.set_yscale("log")
        right.legend(fontsize=6)
        fig.suptitle(f"steering {self.what} at {self.hook_name}", fontsize=9)
        fig.tight_layout()
        return finish(fig, path)


@torch.no_grad()
def component_scan(
    model,
    quizzes: QuizSet,
    direction: torch.Tensor,
    hook_name: str,
    coefficients: Sequence[float] = tuple(np.linspace(-10, 10, 21)),
    positions: str | np.ndarray = "grid",
    what: str = "a direction",
    batch_size: int = 32,
) -> ComponentScan:
    """Add coefficient x `direction` at `hook_name` on `positions` and decompose the logits by
    component (gridlens.analysis.direct.logit_lens) at every coefficient."""
    from gridlens.analysis.direct import logit_lens

    if hook_name not in model.hook_names:
        from gridlens.errors import unknown_name

        raise unknown_name("hook", hook_name, model.hook_names)
    where = recorded_positions(positions, quizzes.tokens.shape[1])
    direction = torch.as_tensor(direction, dtype=torch.float32).flatten()
    direct, loss, diff = [], [], []
    for c in coefficients:
        with model.hooks([steering_hook(hook_name, direction * float(c), where)]):
            lens = logit_lens(model, quizzes, batch_size=batch_size)
        terms = [lens.dla[name]["all"] for name in lens.components]
        total = lens.logit_diff_task["all"]
        direct.append([*terms, total - sum(terms)])
        loss.append([lens.loss[s]["all"] for s in lens.sites])
        diff.append(total)
    return ComponentScan(
        hook_name,
        what,
        [float(c) for c in coefficients],
        [*lens.components, "vector"],
        np.asarray(direct),
        lens.sites,
        np.asarray(loss),
        np.asarray(diff),
    )
