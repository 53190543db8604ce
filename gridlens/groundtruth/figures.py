"""Figures for ground-truth training and evaluation: each returns its matplotlib Figure and
writes a PNG only when given a path."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gridlens.plotting import finish, pyplot

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def training_curves(history: list[dict], path: Path | None = None, title: str = "") -> Figure:
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    ep = [r["epoch"] for r in history]
    for key in ("loss_behaviour", "loss_iit", "loss_strict", "loss_total"):
        a.plot(ep, [r[key] for r in history], label=key.removeprefix("loss_"))
    a.set_yscale("log")
    a.set_xlabel("epoch")
    a.set_title("training losses (weighted sum = total)")
    a.legend(fontsize=8)
    ev = [r for r in history if "accuracy" in r]
    for key in ("accuracy", "iia", "siia", "siia_all_unused"):
        b.plot([r["epoch"] for r in ev], [1 - r[key] + 1e-5 for r in ev], marker=".", label=key)
    b.set_yscale("log")
    b.set_xlabel("epoch")
    b.set_title("validation error (1 - metric)")
    b.axhline(1 - 0.993, color="grey", ls=":", lw=0.8)
    b.axhline(1 - 0.9995, color="grey", ls="--", lw=0.8)
    b.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return finish(fig, path)


def sae_scores(result: dict, path: Path | None = None, title: str = "") -> Figure:
    """Best-unit F1 per variable value for SAE latents, neurons and probes, and the IIA of
    patching the units matched to each variable."""
    plt = pyplot()
    names = result["value_names"]
    methods = ("sae", "neurons", "probe")
    fig, (a, b) = plt.subplots(
        1,
        2,
        figsize=(max(8, 0.5 * len(names) + 6), 4),
        gridspec_kw={"width_ratios": [max(2, len(names)), 3]},
    )
    x = np.arange(len(names))
    for i, m in enumerate(methods):
        vals = [r["best_f1"] for r in result["methods"][m]["per_value"]]
        a.bar(x + (i - 1) * 0.27, vals, 0.27, label=m)
    a.set_xticks(x, names, rotation=70, fontsize=7, ha="right")
    a.set_ylim(0, 1.02)
    a.set_ylabel("best-unit F1")
    a.legend(fontsize=8)
    a.set_title("detection F1 per value")
    variables = result["variables"]
    xm = np.arange(len(variables))
    iia_methods = ("sae", "neurons", "probe", "class_means", "whole_mlp", "none")
    for i, m in enumerate(iia_methods):
        heights = [result["methods"][m]["iia"][v] for v in variables]
        b.bar(xm + (i - 2.5) * 0.14, heights, 0.14, label=m)
    b.set_xticks(xm, [v.replace(".", ".\n") for v in variables], fontsize=7)
    b.set_ylim(0, 1.02)
    b.set_title("IIA, patching the matched units")
    b.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return finish(fig, path)


def sae_matrix(result: dict, path: Path | None = None, title: str = "") -> Figure:
    """F1 of each value (rows) against the SAE latents matched to any value (columns)."""
    plt = pyplot()
    f1 = np.asarray(result["methods"]["sae"]["f1_matrix"])
    cols = sorted(
        {
            r["matched_unit"]
            for r in result["methods"]["sae"]["per_value"]
            if r["matched_unit"] is not None
        }
    )
    fig, ax = plt.subplots(figsize=(max(4, 0.4 * len(cols) + 3), max(3, 0.35 * len(f1) + 1.5)))
    im = ax.imshow(f1[:, cols], vmin=0, vmax=1, cmap="viridis")
    ax.set_yticks(range(len(f1)), result["value_names"], fontsize=7)
    ax.set_xticks(range(len(cols)), [str(c) for c in cols], fontsize=7, rotation=90)
    ax.set_xlabel("SAE latent (Hungarian-matched)")
    fig.colorbar(im, ax=ax, label="F1")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return finish(fig, path)


def circuit_scores(results: list[dict], path: Path | None = None, title: str = "") -> Figure:
    plt = pyplot()
    fig, axes = plt.subplots(len(results), 1, figsize=(9, 2.2 * len(results) + 0.6), squeeze=False)
    for ax, r in zip(axes[:, 0], results, strict=True):
        x = np.arange(len(r["components"]))
        colours = ["tab:red" if t else "tab:grey" for t in r["in_circuit"]]
        ap = np.asarray(r["activation_patching"])
        atp = np.asarray(r["atp"])
        ax.bar(x - 0.2, ap / max(ap.max(), 1e-12), 0.4, color=colours, label="activation patching")
        ax.bar(
            x + 0.2,
            atp / max(atp.max(), 1e-12),
            0.4,
            color=colours,
            alpha=0.5,
            hatch="//",
            label="AtP",
        )
        ax.set_xticks(x, r["components"], fontsize=7)
        ax.set_ylabel("score / max")
        ax.set_title(
            f"{r['task']}: ROC AUC act. patching {r['auc_activation_patching']:.3f}, "
            f"AtP {r['auc_atp']:.3f} (red = known circuit)",
            fontsize=9,
        )
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return finish(fig, path)
