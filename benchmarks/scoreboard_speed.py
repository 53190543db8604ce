"""The scoreboard's speed (issue 17): `gridlens groundtruth score`'s board over ground-truth
models, the way it ran before (one process, torch's default threads) against the way it runs
now (one single-threaded forked worker process per core), same run, same machine; and the
largest score difference between the two boards (0 in every run so far).

    python benchmarks/scoreboard_speed.py --runs parenthesis,left_greater,histogram

Clock: wall time, and CPU time of this process plus its workers (RUSAGE_CHILDREN). On a machine
shared with other jobs two torch threads wait for each other on every small operation, so the
one-process board can take many times longer there than on idle cores.
"""

from __future__ import annotations

import argparse
import platform
import resource
import time

import torch

from gridlens.groundtruth.iit import load_run
from gridlens.groundtruth.scoreboard import available_cores, scoreboard
from gridlens.groundtruth.shipped import SHIPPED, resolve_run


def cpu_seconds() -> float:
    own, children = (
        resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def board(runs: dict, cfg: dict, workers: int) -> tuple[dict, float, float]:
    wall, cpu = time.perf_counter(), cpu_seconds()
    out = scoreboard(runs, cfg, [], log=lambda line: None, workers=workers)
    return out, time.perf_counter() - wall, cpu_seconds() - cpu


def largest_difference(a: dict, b: dict) -> float:
    pairs = [
        (x[m], y[m])
        for ra, rb in zip(a["rows"], b["rows"], strict=True)
        for x, y in zip(ra["cells"], rb["cells"], strict=True)
        if x is not None
        for m in ("f1", "iia", "purity")
        if x.get(m) is not None
    ]
    return max(abs(p - q) for p, q in pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default=",".join(SHIPPED))
    parser.add_argument("-n", "--n-per-task", type=int, default=1000)
    parser.add_argument("--sae-steps", type=int, default=500)
    args = parser.parse_args()
    names = [r for r in args.runs.split(",") if r]
    runs = {name: load_run(resolve_run(name)[0])[:2] for name in names}
    cfg = {"sites": ["mlp"], "train_saes": ["topk"], "n_per_task": args.n_per_task,
           "sae_steps": args.sae_steps, "sae_k": 8, "seed": 0}  # fmt: skip
    cores = available_cores()
    print(f"{platform.node()}: {cores} cores, torch {torch.__version__}, runs {names}")
    before, wall_1, cpu_1 = board(runs, cfg, workers=1)
    print(f"one process, {torch.get_num_threads()} threads: {wall_1:.1f} s wall, {cpu_1:.1f} s CPU")
    after, wall_n, cpu_n = board(runs, cfg, workers=cores)
    print(f"{cores} single-threaded workers: {wall_n:.1f} s wall, {cpu_n:.1f} s CPU")
    print(f"speed-up: {wall_1 / wall_n:.2f}x wall, {cpu_1 / cpu_n:.2f}x CPU; largest score "
          f"difference {largest_difference(before, after):.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
