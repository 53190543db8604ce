"""Quizzes per second of gridlens.world.generate, per task and for the 8- and 15-task mixes,
optionally against Fleuret's original generator measured in the same run.

    OMP_NUM_THREADS=1 python benchmarks/world_generation.py [--original PATH/TO/culture]

PATH/TO/culture is a folder holding the original grids.py and problem.py. Their imports of
cairo and torchvision (used only for drawing) are satisfied by empty stand-in modules.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import time
import types
from pathlib import Path

import torch

from gridlens.world import DEFAULT_TASKS, TASKS, generate


def quizzes_per_second(make, n: int, repeats: int) -> float:
    """Median throughput of `make(n)` over `repeats` timed runs (after one warm-up)."""
    make(min(n, 256))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        make(n)
        times.append(time.perf_counter() - start)
    return n / statistics.median(times)


def load_original(folder: Path):
    """The original `Grids` class, imported from `folder` without its drawing dependencies."""
    for name in ("cairo", "torchvision"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.path.insert(0, str(folder))
    return importlib.import_module("grids").Grids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--original", type=Path, help="folder with the original grids.py")
    parser.add_argument("-n", type=int, default=20000, help="quizzes per timed run (ours)")
    parser.add_argument("--n-original", type=int, default=1000, help="quizzes per original run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    torch.set_num_threads(1)

    results: dict[str, dict[str, float]] = {"per_task": {}, "mix": {}}
    for task in TASKS:
        qps = quizzes_per_second(lambda n, t=task: generate(t, n, seed=1), args.n, args.repeats)
        results["per_task"][task] = qps
        print(f"{task:>14s}  {qps:10.0f} quizzes/s")

    grids_class = load_original(args.original) if args.original else None
    mixes = {"8-task": DEFAULT_TASKS, "15-task": TASKS}
    for label, tasks in mixes.items():
        ours = quizzes_per_second(lambda n, t=tasks: generate(t, n, seed=2), args.n, args.repeats)
        training = quizzes_per_second(
            lambda n, t=tasks: generate(t, n, seed=3, structure="mix", noise=0.05),
            args.n,
            args.repeats,
        )
        row = {"ours": ours, "ours_training_setting": training}
        line = f"{label} mix: ours {ours:,.0f}/s (with structures + noise {training:,.0f}/s)"
        if grids_class is not None:
            torch.manual_seed(0)
            world = grids_class(tasks=",".join(tasks))
            original = quizzes_per_second(
                world.generate_w_quizzes_, args.n_original, max(1, args.repeats - 1)
            )
            row |= {"original": original, "ratio": ours / original}
            line += f"; original {original:,.0f}/s; ratio {ours / original:.1f}x"
        results["mix"][label] = row
        print(line)

    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
