"""How good an SAE is on the quizzes: reconstruction, sparsity, and what splicing it into the
model costs on the predicted grid, per task.

Definitions (rows = the hook site's activations at the chosen positions of the quizzes of a task):
- explained variance: 1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over the rows (the mean
  is taken over the same rows: batch-level, as SAELens's `metrics/explained_variance`);
- mse: mean of (x - x_hat)^2 over rows and dimensions;
- l0: mean number of non-zero latents per row;
- firing frequency of a latent: the share of rows where it is non-zero; dead fraction: share of
  latents firing on no row; dense fraction: share firing on more than DENSE_FREQUENCY of rows;
- l2 ratio: mean over rows of ||x_hat|| / ||x||;
- shrinkage: the relative reconstruction bias gamma = sum ||x_hat||^2 / sum <x_hat, x> (Wright &
  Sharkey 2024: the gamma minimising E||x_hat / gamma - x||^2); 1 is unbiased, < 1 means the
  SAE shrinks its reconstructions;
- loss recovered: (L_zero - L_spliced) / (L_zero - L_clean), from the task's mean teacher-forced
  cross-entropy on the predicted grid, with the site zero-ablated / replaced by the SAE at the
  chosen positions only;
- greedy accuracy: share of quizzes whose whole predicted grid is generated right, clean and
  with the SAE spliced in during generation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from gridlens.analysis.core import QuizSet, grid_metrics
from gridlens.models.hooks import HookPoint
from gridlens.notebook import Tabular, result_html
from gridlens.plotting import finish, pyplot
from gridlens.sae.activations import collect, position_mask
from gridlens.sae.model import SparseAutoencoder
from gridlens.sae.splice import encode_inference, splice_hooks, window

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DENSE_FREQUENCY = 0.1
PER_TASK = (
    "explained_variance",
    "mse",
    "l0",
    "dead_fraction",
    "dense_fraction",
    "l2_ratio",
    "shrinkage",
    "loss_clean",
    "loss_spliced",
    "loss_zero",
    "loss_recovered",
    "accuracy_clean",
    "accuracy_spliced",
)


@dataclass
class SAEMetrics(Tabular):
    """Per-task metrics (each a dict task -> value, with "all") and the latents' firing rates."""

    hook_name: str
    architecture: str
    d_sae: int
    positions: str
    n_quizzes: int
    n_rows: int
    values: dict[str, dict[str, float]]  # metric -> task -> value (see PER_TASK)
    firing_frequency: np.ndarray = field(repr=False)  # [d_sae], over every row

    def __getitem__(self, metric: str) -> dict[str, float]:
        return self.values[metric]

    def to_json(self) -> dict[str, Any]:
        return {
            "hook_name": self.hook_name,
            "architecture": self.architecture,
            "d_sae": self.d_sae,
            "positions": self.positions,
            "n_quizzes": self.n_quizzes,
            "n_rows": self.n_rows,
            "dense_frequency": DENSE_FREQUENCY,
            **{name: {t: _plain(v) for t, v in per.items()} for name, per in self.values.items()},
            "firing_frequency_histogram": _log_histogram(self.firing_frequency),
        }

    def plot(self, path: str | Path | None = None) -> Figure:
        """Per-task bars (explained variance, loss recovered, greedy accuracy clean vs spliced)
        and the histogram of latent firing frequencies (log scale)."""
        plt = pyplot()

        tasks = list(self.values["explained_variance"])
        x = np.arange(len(tasks))
        fig, axes = plt.subplots(2, 2, figsize=(12, 8))
        for ax, metric, title in (
            (axes[0, 0], "explained_variance", "explained variance"),
            (axes[0, 1], "loss_recovered", "loss recovered (predicted grid)"),
        ):
            ax.bar(x, [self.values[metric][t] for t in tasks], color="tab:blue")
            ax.set_title(title)
            ax.set_xticks(x, tasks, rotation=45, ha="right")
            ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax = axes[1, 0]
        for shift, metric, label in (
            (-0.2, "accuracy_clean", "clean"),
            (0.2, "accuracy_spliced", "SAE spliced"),
        ):
            values = [self.values[metric][t] for t in tasks]
            ax.bar(x + shift, [0 if np.isnan(v) else v for v in values], 0.4, label=label)
        ax.set_title("greedy accuracy of the predicted grid")
        ax.set_xticks(x, tasks, rotation=45, ha="right")
        ax.set_ylim(0, 1)
        ax.legend()
        ax = axes[1, 1]
        freq = self.firing_frequency
        alive = freq[freq > 0]
        if alive.size:
            ax.hist(np.log10(alive), bins=40, color="tab:green")
        ax.axvline(np.log10(DENSE_FREQUENCY), color="tab:red", ls="--", label="dense")
        ax.set_title(f"latent firing frequency ({int((freq == 0).sum())} dead not shown)")
        ax.set_xlabel("log10 share of rows where the latent fires")
        ax.legend()
        fig.suptitle(
            f"SAE {self.architecture} d_sae={self.d_sae} at {self.hook_name} ({self.positions})"
        )
        fig.tight_layout()
        return finish(fig, path, dpi=100)

    def to_records(self) -> list[dict]:
        """One row per task (and "all"): every per-task metric."""
        tasks = list(self.values["explained_variance"])
        return [{"task": t, **{m: v[t] for m, v in self.values.items()}} for t in tasks]

    def _repr_html_(self) -> str:
        title = f"SAE {self.architecture} d_sae={self.d_sae} at {self.hook_name}"
        return result_html(title, self.findings(), self.plot(), self.to_records())

    def findings(self) -> list[str]:
        v = {name: per["all"] for name, per in self.values.items()}
        out = [
            f"The SAE explains {v['explained_variance']:.1%} of the variance at {self.hook_name} "
            f"with L0 {v['l0']:.1f} of {self.d_sae} latents; {v['dead_fraction']:.1%} are dead, "
            f"{v['dense_fraction']:.1%} fire on more than {DENSE_FREQUENCY:.0%} of rows."
        ]
        if np.isfinite(v["loss_recovered"]):
            out.append(
                f"Spliced in at the {self.positions} positions it recovers "
                f"{v['loss_recovered']:.1%} of the predicted-grid loss (clean "
                f"{v['loss_clean']:.3f}, spliced {v['loss_spliced']:.3f}, zero-ablated "
                f"{v['loss_zero']:.3f})."
            )
        if np.isfinite(v["accuracy_spliced"]):
            out.append(
                f"Greedy accuracy of the predicted grid: {v['accuracy_clean']:.1%} clean, "
                f"{v['accuracy_spliced']:.1%} with the SAE spliced in."
            )
        tasks = [t for t in self.values["loss_recovered"] if t != "all"]
        if len(tasks) > 1:
            worst = min(tasks, key=lambda t: _sortable(self.values["loss_recovered"][t]))
            out.append(
                f"Worst task for loss recovered: {worst} "
                f"({self.values['loss_recovered'][worst]:.1%})."
            )
        return out


def _sortable(value: float) -> float:
    return float("inf") if np.isnan(value) else value


def _plain(value: float) -> float | None:
    return None if not np.isfinite(value) else float(value)


def _log_histogram(freq: np.ndarray, bins: int = 20) -> dict[str, Any]:
    alive = freq[freq > 0]
    counts, edges = np.histogram(np.log10(alive), bins=bins) if alive.size else ([], [])
    return {
        "dead": int((freq == 0).sum()),
        "log10_edges": [float(e) for e in edges],
        "counts": [int(c) for c in counts],
    }


@torch.no_grad()
def reconstruction_stats(
    x: torch.Tensor, recon: torch.Tensor, latents: torch.Tensor
) -> dict[str, float]:
    """Explained variance, mse, l0, l2 ratio, shrinkage, dead and dense fractions of one set of
    rows (see the module docstring for the definitions)."""
    x, recon = x.double(), recon.double()
    err = (x - recon).pow(2).sum()
    total = (x - x.mean(0)).pow(2).sum()
    x_norm = x.norm(dim=-1)
    nonzero = x_norm > 0
    fires = (latents != 0).double()
    freq = fires.mean(0)
    return {
        "explained_variance": float(1 - err / total) if total > 0 else float("nan"),
        "mse": float((x - recon).pow(2).mean()),
        "l0": float(fires.sum(-1).mean()),
        "dead_fraction": float((freq == 0).double().mean()),
        "dense_fraction": float((freq > DENSE_FREQUENCY).double().mean()),
        "l2_ratio": float((recon.norm(dim=-1)[nonzero] / x_norm[nonzero]).mean()),
        "shrinkage": float(recon.pow(2).sum() / (recon * x).sum()),
    }


def _zero_hooks(hook_name: str, mask: torch.Tensor):
    def zero(act: torch.Tensor, hook: HookPoint) -> torch.Tensor:
        chosen = window(mask, hook, act.shape[1]).to(act.device)
        out = act.clone()
        out[:, chosen] = 0
        return out

    return [(hook_name, zero)]


def loss_recovered(loss_zero: float, loss_spliced: float, loss_clean: float) -> float:
    """(L_zero - L_spliced) / (L_zero - L_clean); NaN when zero ablation costs nothing."""
    gap = loss_zero - loss_clean
    return (loss_zero - loss_spliced) / gap if gap != 0 else float("nan")


@torch.no_grad()
def evaluate_sae(
    model,
    sae: SparseAutoencoder,
    quizzes: QuizSet,
    positions: str = "grid",
    greedy: bool = True,
    batch_size: int = 64,
) -> SAEMetrics:
    """Every metric of the module docstring, per task and overall, for `sae` on `quizzes`
    (activations at the `positions` of gridlens.sae.activations.POSITION_MASKS)."""
    hook_name = sae.cfg.hook_name
    tokens = quizzes.tokens
    tasks = np.asarray(quizzes.tasks)
    mask = position_mask(positions, tokens.shape[1])
    acts, quiz_index, _ = collect(model, tokens, hook_name, positions, batch_size, with_index=True)
    x = acts.to(sae.W_enc.device, sae.W_enc.dtype)
    latents = torch.cat([encode_inference(sae, c) for c in x.split(8192)])
    recon = torch.cat([sae.decode(c) for c in latents.split(8192)])
    row_tasks = tasks[quiz_index.numpy()]

    clean = grid_metrics(model, tokens, greedy=greedy, batch_size=batch_size)
    zero = grid_metrics(model, tokens, _zero_hooks(hook_name, mask), batch_size=batch_size)
    spliced = grid_metrics(
        model, tokens, splice_hooks(sae, positions=mask), greedy=greedy, batch_size=batch_size
    )

    values: dict[str, dict[str, float]] = {name: {} for name in PER_TASK}
    names = list(dict.fromkeys(tasks.tolist()))
    for task in [*names, "all"]:
        rows = (
            torch.ones(len(x), dtype=torch.bool)
            if task == "all"
            else torch.from_numpy(row_tasks == task)
        )
        quiz = torch.from_numpy(np.ones(len(tasks), dtype=bool) if task == "all" else tasks == task)
        stats = reconstruction_stats(x[rows], recon[rows], latents[rows])
        losses = {
            "loss_clean": float(clean.loss[quiz].mean()),
            "loss_spliced": float(spliced.loss[quiz].mean()),
            "loss_zero": float(zero.loss[quiz].mean()),
        }
        stats.update(losses)
        stats["loss_recovered"] = loss_recovered(
            losses["loss_zero"], losses["loss_spliced"], losses["loss_clean"]
        )
        for which, metrics in (("accuracy_clean", clean), ("accuracy_spliced", spliced)):
            ok = metrics.greedy_correct
            stats[which] = float(ok[quiz].float().mean()) if ok is not None else float("nan")
        for name in PER_TASK:
            values[name][str(task)] = stats[name]
    return SAEMetrics(
        hook_name=hook_name,
        architecture=sae.cfg.architecture,
        d_sae=sae.cfg.d_sae,
        positions=positions,
        n_quizzes=len(tokens),
        n_rows=len(x),
        values=values,
        firing_frequency=(latents != 0).double().mean(0).cpu().numpy(),
    )
