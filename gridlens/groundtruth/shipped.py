"""The trained ground-truth models shipped in the package (``gridlens/data/groundtruth/NAME``).

Each folder is a `groundtruth train` run reduced to what loading needs (``run.json``,
``model.safetensors``) plus a card: ``card.json`` (the thresholds reached on fresh inputs,
epochs, the exact command, CPU time, and the sha256 of the two run files, checked on every
load) and ``card.md`` (the same for people). :func:`resolve_run` lets a command take a shipped
benchmark's name wherever it takes a run folder; a local folder of that name wins.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from gridlens.errors import CheckpointError

SHIPPED_DIR = Path(__file__).resolve().parents[1] / "data" / "groundtruth"
SHIPPED = (
    "parenthesis",
    "left_greater",
    "duplicate_remover",
    "unique_extractor",
    "all4",
    "histogram",
    "reversal",
    "sort",
    "modular_sum",
    "all8",
)
RUN_FILES = ("run.json", "model.safetensors")
CARD_FORMAT = "gridlens-groundtruth-card"
THRESHOLDS = {"accuracy": 1.0, "iia": 0.993, "siia": 0.9995}


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def resolve_run(run: str | Path) -> tuple[Path, bool]:
    """(folder, shipped?): ``run`` itself when it exists, else the shipped model of that name
    (its checksums verified)."""
    path = Path(run)
    if path.exists() or str(run) not in SHIPPED:
        return path, False
    folder = SHIPPED_DIR / str(run)
    verify(folder)
    return folder, True


def verify(folder: Path) -> dict:
    """The card of a shipped folder, after checking its files against the card's sha256."""
    card_file = folder / "card.json"
    if not card_file.is_file():
        raise CheckpointError(f"{card_file}: not found (the shipped ground-truth model is missing)")
    card = json.loads(card_file.read_text())
    for name, digest in card["files"].items():
        if not (folder / name).is_file() or sha256(folder / name) != digest:
            raise CheckpointError(
                f"{folder / name}: missing or corrupted (sha256 differs from card)"
            )
    return card


def passes(metrics: dict) -> bool:
    """Accuracy 100%, IIA >= 99.3%, SIIA >= 99.95% (the published thresholds)."""
    return all(metrics[k] >= v for k, v in THRESHOLDS.items())


def ship(run_dir: Path, dest: Path, card: dict) -> dict:
    """Copy the run files of ``run_dir`` to ``dest`` and write the card (with checksums)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:
        shutil.copyfile(run_dir / name, dest / name)
    card = {
        "format": CARD_FORMAT,
        "version": 1,
        **card,
        "files": {n: sha256(dest / n) for n in RUN_FILES},
    }
    (dest / "card.json").write_text(json.dumps(card, indent=1) + "\n")
    (dest / "card.md").write_text(card_markdown(card))
    return card


def _kept(train: dict) -> str:
    kept = train.get("kept_epoch")
    if kept is None or kept == train["reached_epoch"] or train.get("init"):
        return ""
    return f" (kept: epoch {kept}, the passing one with the largest logit margin)"


def _init_line(train: dict) -> str:
    """How the run continued another model, where it did (kept epoch, earlier training)."""
    if not train.get("init"):
        return ""
    first = train.get("init_training") or {}
    return (
        f" It continued the weights of `{train['init']}` (trained with `{first.get('command')}`, "
        f"{first.get('cpu_seconds', 0):.0f} s of CPU) and kept epoch {train.get('kept_epoch')}, "
        "the passing evaluation with the largest logit margin."
    )


def card_markdown(card: dict) -> str:
    fresh, train = card["fresh"], card["training"]
    lines = [
        f"# {card['name']}: a ground-truth model trained with strict IIT",
        "",
        f"Benchmark `{card['benchmark']}`; nodes: "
        + "; ".join(f"{k} = {', '.join(v)}" for k, v in card["nodes"].items())
        + f"; unused: {', '.join(card['unused']) or 'none'}.",
        "",
        f"On {fresh['n_per_task']} fresh inputs per task (seed {fresh['seed']}): accuracy "
        f"{fresh['accuracy']:.5f}, IIA {fresh['iia']:.5f}, SIIA {fresh['siia']:.5f} "
        f"(thresholds 1.0 / 0.993 / 0.9995: {'met' if card['passes'] else 'NOT met'}).",
        "",
        f"Trained with `{card['command']}`: thresholds reached on the validation set at epoch "
        f"{train['reached_epoch']}{_kept(train)}, {train['training_seconds']:.0f} s of training, "
        f"{train['cpu_seconds']:.0f} s of CPU for the whole command ({train['machine']})."
        + _init_line(train),
        "",
        "| node | IIA on fresh inputs |",
        "| --- | --- |",
        *(f"| {k} | {v:.5f} |" for k, v in fresh["iia_per_node"].items()),
        *(f"| {k} (unused, SIIA) | {v:.5f} |" for k, v in fresh["siia_per_node"].items()),
        "",
    ]
    return "\n".join(lines)
