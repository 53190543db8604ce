"""Evaluate trained ground-truth runs on fresh inputs and ship them in the package with a card.

Each run is a `gridlens groundtruth train` output folder whose log (stdout and the stderr of
`/usr/bin/time -v`, as in the command below) sits beside it as RUN.log:

    OMP_NUM_THREADS=1 /usr/bin/time -v gridlens groundtruth train --bench NAME \
        --out runs/gt/NAME --threads 1 [--eval-every 2] > runs/gt/NAME.log 2>&1
    python benchmarks/ship_groundtruth.py runs/gt/parenthesis runs/gt/all4 ...

It refuses a run that misses the thresholds on the fresh inputs.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from gridlens.groundtruth.iit import TrainConfig, _jsonable, evaluate, load_run
from gridlens.groundtruth.shipped import SHIPPED_DIR, passes, ship

MACHINE = "one torch thread at nice 10 on a 2-vCPU AMD EPYC shared with other jobs"


def time_v(log: str, field: str) -> float:
    return float(re.search(rf"{re.escape(field)}: ([\d.]+)", log).group(1))


def card_for(run: Path, n_per_task: int, seed: int, machine: str = MACHINE) -> dict:
    model, bench, meta = load_run(run)
    summary = json.loads((run / "summary.json").read_text())
    history = json.loads((run / "history.json").read_text())
    log = run.with_suffix(".log").read_text()
    torch.manual_seed(seed)
    tokens, _ = bench.generate(n_per_task, np.random.default_rng(seed))
    m = evaluate(model, bench, tokens)
    keys = ("accuracy", "iia", "siia", "iia_per_node", "siia_per_node", "siia_all_unused")
    fresh = {"seed": seed, "n_per_task": n_per_task, **{k: m[k] for k in keys}}
    threads = meta["train"].get("threads") or 1
    command = (
        f"OMP_NUM_THREADS={threads} gridlens groundtruth train --bench {meta['benchmark']} --out "
        f"runs/gt/{run.name} --threads {threads}" + _flags(meta)
    )
    return {
        "name": run.name,
        "benchmark": meta["benchmark"],
        "nodes": meta["describe"]["nodes"],
        "unused": meta["describe"]["unused"],
        "command": command,
        "passes": passes(fresh),
        "fresh": fresh,
        "validation": summary["final"],
        "training": {
            "reached_epoch": summary["reached_epoch"],
            "epochs_run": history[-1]["epoch"],
            "training_seconds": summary["reached_seconds"],
            "seconds_per_epoch": summary["seconds_per_epoch"],
            "cpu_seconds": time_v(log, "User time (seconds)")
            + time_v(log, "System time (seconds)"),
            "machine": machine,
            "config": meta["train"],
            "kept_epoch": summary.get("kept_epoch"),
            "init": meta.get("init"),
            "init_training": _previous_training(meta.get("init")),
        },
    }


_FLAGS = {
    "eval_every": "--eval-every",
    "max_epochs": "--max-epochs",
    "extra_epochs": "--extra-epochs",
    "lr": "--lr",
    "lr_end": "--lr-end",
    "seed": "--seed",
}


def _flags(meta: dict) -> str:
    """The command-line options that differ from the defaults, and --init."""
    defaults = asdict(TrainConfig())
    train = meta["train"]
    out = "".join(f" {flag} {train[k]}" for k, flag in _FLAGS.items() if train[k] != defaults[k])
    return out + (f" --init {meta['init']}" if meta.get("init") else "")


def _previous_training(init: str | None) -> dict | None:
    """How the run's --init model was trained: a shipped model's card (read before
    re-shipping), or a run folder's command and the CPU time of its RUN.log."""
    if not init:
        return None
    card, run = SHIPPED_DIR / init / "card.json", Path(init)
    if card.is_file():
        previous = json.loads(card.read_text())
        return {"command": previous["command"], **previous["training"]}
    meta = json.loads((run / "run.json").read_text())
    log = run.with_suffix(".log").read_text()
    command = (
        f"OMP_NUM_THREADS=1 gridlens groundtruth train --bench {meta['benchmark']} --out "
        f"{run} --threads 1" + _flags(meta)
    )
    cpu = time_v(log, "User time (seconds)") + time_v(log, "System time (seconds)")
    return {"command": command, "cpu_seconds": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--n-per-task", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=20250)
    parser.add_argument("--machine", default=MACHINE, help="how the runs were trained")
    args = parser.parse_args()
    for run in args.runs:
        card = _jsonable(card_for(run, args.n_per_task, args.seed, args.machine))
        f = card["fresh"]
        print(
            f"{run.name}: fresh accuracy {f['accuracy']:.5f} IIA {f['iia']:.5f} "
            f"SIIA {f['siia']:.5f}; epoch {card['training']['reached_epoch']}, "
            f"CPU {card['training']['cpu_seconds']:.0f} s"
        )
        if not card["passes"]:
            raise SystemExit(f"{run}: misses the thresholds on fresh inputs; not shipped")
        ship(run, SHIPPED_DIR / run.name, card)


if __name__ == "__main__":
    main()
