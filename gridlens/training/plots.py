"""The training curve: loss per step (log scale) and test accuracy per task, from log.jsonl."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from gridlens.errors import ConfigError
from gridlens.plotting import finish, pyplot

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def plot_curve(
    log_path: str | Path, png: str | Path | None = None, title: str | None = None
) -> Figure:
    plt = pyplot()

    from gridlens.training.trainer import read_log

    records = read_log(log_path)
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval" in r or "final_eval" in r]
    if not train:
        raise ConfigError(f"{log_path}: no training records to plot")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    ax1.plot(
        [r["step"] for r in train],
        [r["loss"] for r in train],
        lw=1,
        marker="o" if len(train) < 30 else None,
        ms=3,
    )
    ax1.set_yscale("log")
    ax1.set_xlabel("step")
    ax1.set_ylabel("training loss (whole sequence, nats/token)")
    ax1.grid(alpha=0.3)
    if evals:
        tasks = list((evals[-1].get("eval") or evals[-1].get("final_eval")).keys())
        for task in tasks:
            xs = [r["step"] for r in evals if task in (r.get("eval") or r.get("final_eval") or {})]
            ys = [
                (r.get("eval") or r.get("final_eval"))[task]
                for r in evals
                if task in (r.get("eval") or r.get("final_eval") or {})
            ]
            ax2.plot(xs, ys, marker="o", ms=3, lw=1, label=task)
        ax2.axhline(0.95, color="gray", lw=0.8, ls="--")
        ax2.set_ylim(-0.02, 1.02)
        ax2.legend(fontsize=7, ncol=2)
    else:
        ax2.text(0.5, 0.5, "no evaluation recorded", ha="center", va="center")
    ax2.set_xlabel("step")
    ax2.set_ylabel("test accuracy (greedy, predicted grid)")
    ax2.grid(alpha=0.3)
    fig.suptitle(title or str(Path(log_path).parent.name))
    fig.tight_layout()
    return finish(fig, png)
