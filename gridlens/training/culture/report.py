"""`gridlens culture report`: what a population did, round by round, and what it invented.

Figures (PNG) and `culture_report.json`: each model's test accuracy per round, candidates /
kept / novel per culture round, and a gallery of kept quizzes grouped by checker label (a
known task, or `novel` when no checker accepts the quiz: the number the experiment is about).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gridlens.errors import ConfigError
from gridlens.io import atomic_write
from gridlens.plotting import finish, pyplot
from gridlens.training.culture.config import CultureConfig
from gridlens.training.culture.loop import _read_json, read_history
from gridlens.training.culture.store import NOVEL, CultureSet, culture_path, load_part
from gridlens.world.render import render_png

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def load_population_summary(population: str | Path) -> tuple[CultureConfig, dict, list, CultureSet]:
    """(settings, state, history, culture set) of a population directory, validated."""
    population = Path(population)
    index = _read_json(population / "culture.json")
    cfg = CultureConfig.from_dict(index.get("config", {}), str(population / "culture.json"))
    state = _read_json(population / "state.json")
    culture = CultureSet()
    for name in state.get("culture_parts", []):
        part = load_part(culture_path(population, name), cfg.k, cfg.height, cfg.width)
        culture = culture.extend(part)
    history = [row for row in read_history(population) if row["round"] < state["round"]]
    return cfg, state, history, culture


def summarise(
    cfg: CultureConfig, state: dict, history: list, culture: CultureSet
) -> dict[str, Any]:
    labels = culture.labels()
    rounds = [{"round": row["round"], **row["culture"]} for row in history if "culture" in row]
    scored = sum(r["scored"] for r in rounds)
    seconds = sum(r["seconds"] for r in rounds)
    return {
        "rounds": state["round"],
        "k": cfg.k,
        "accuracies": [m["accuracy"] for m in state["members"]],
        "epochs": [m["epochs"] for m in state["members"]],
        "culture_rounds": rounds,
        "culture": {
            "train": len(culture.train),
            "test": len(culture.test),
            "by_label": {name: labels.count(name) for name in sorted(set(labels))},
            "novel_share": labels.count(NOVEL) / len(labels) if labels else None,
            "by_generator": {str(k): int((culture.generator == k).sum()) for k in range(-1, cfg.k)},
        },
        "candidates_scored_per_second": scored / seconds if seconds else None,
    }


def findings(summary: dict[str, Any]) -> list[str]:
    """Short factual sentences about a population, for reports."""
    c = summary["culture"]
    rounds = summary["culture_rounds"]
    out = [
        f"{summary['rounds']} rounds, {len(rounds)} culture rounds; models' accuracies now "
        + ", ".join(f"{a:.2f}" for a in summary["accuracies"])
        + f" after {sum(summary['epochs'])} epochs in all."
    ]
    if rounds:
        scored = sum(r["scored"] for r in rounds)
        kept = sum(r["kept"] for r in rounds)
        rate = summary["candidates_scored_per_second"]
        out.append(
            f"{kept} of {scored} scored candidates kept ({100 * kept / max(scored, 1):.1f}%); "
            f"{rate:.1f} candidates scored per second."
        )
    if c["novel_share"] is not None:
        out.append(
            f"Culture: {c['train']} train + {c['test']} test quizzes; "
            f"{100 * c['novel_share']:.0f}% novel (no task checker accepts them); by label "
            + ", ".join(f"{k} {v}" for k, v in c["by_label"].items())
            + "."
        )
    return out


def plot_rounds(cfg: CultureConfig, history: list, path: Path | None = None) -> Figure:
    """Accuracy of each model per round (culture rounds marked), and culture round counts."""
    plt = pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    rounds = [row["round"] for row in history]
    for k in range(cfg.k):
        top.plot(rounds, [row["accuracies"][k] for row in history], label=f"model {k}", lw=1.2)
    top.axhline(cfg.accuracy_threshold, color="grey", ls=":", lw=1, label="threshold")
    culture_rows = [row for row in history if "culture" in row]
    for row in culture_rows:
        top.axvline(row["round"], color="tab:red", alpha=0.25, lw=3)
    top.set_ylabel("test accuracy (after the round)")
    top.set_ylim(-0.02, 1.02)
    top.legend(fontsize=7, ncol=3)
    x = [row["round"] for row in culture_rows]
    for key, colour in (("scored", "tab:grey"), ("kept", "tab:green"), ("novel", "tab:red")):
        bottom.bar(
            x, [row["culture"][key] for row in culture_rows], color=colour, label=key, alpha=0.8
        )
    bottom.set_yscale("symlog")
    bottom.set_xlabel("round")
    bottom.set_ylabel("quizzes per culture round")
    bottom.legend(fontsize=7)
    fig.tight_layout()
    return finish(fig, path)


def gallery(cfg: CultureConfig, culture: CultureSet, out: Path, per_label: int = 6) -> list[Path]:
    """One PNG per checker label with up to `per_label` kept quizzes and their provenance."""
    written = []
    labels = culture.labels()
    for name in sorted(set(labels)):
        rows = [i for i, label in enumerate(labels) if label == name][:per_label]
        captions = [
            f"{name}: round {int(culture.round[i])}, model {int(culture.generator[i])}, p="
            + " ".join(f"{p:.2f}" for p in culture.probas[i].tolist())
            for i in rows
        ]
        path = out / f"culture_{name}.png"
        written.append(
            render_png(
                culture.tokens[rows], path, captions=captions, height=cfg.height, width=cfg.width
            )
        )
    return written


def culture_report(population: str | Path, out: str | Path | None = None) -> dict[str, Any]:
    """Write the figures and JSON of a population into `out` (default POP/report)."""
    population = Path(population)
    out = Path(out) if out is not None else population / "report"
    cfg, state, history, culture = load_population_summary(population)
    if not history:
        raise ConfigError(f"{population}: no completed round to report")
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(cfg, state, history, culture)
    plot_rounds(cfg, history, out / "culture_rounds.png")
    figures = [out / "culture_rounds.png"]
    figures += gallery(cfg, culture, out)
    summary["figures"] = [p.name for p in figures]
    text = json.dumps(summary, indent=2) + "\n"
    atomic_write(out / "culture_report.json", lambda handle: handle.write(text.encode()))
    summary["out"] = str(out)
    return summary
