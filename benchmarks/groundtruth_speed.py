"""Wall time per SIIT epoch and to the published thresholds (100% accuracy, IIA >= 99.3%,
SIIA >= 99.95%) for the ground-truth benchmarks, on CPU, batch size 256.

    .venv/bin/python benchmarks/groundtruth_speed.py [--bench parenthesis,all4] [--max-epochs N]
        [--eval-every K] [--threads T] [--out out/groundtruth_speed]

The earlier stack (the iit library, one intervention per Python call) took about 5 s per epoch
of 22 batches of 256 for parenthesis and about 400 s per epoch for the 4-task model on this
CPU; the goal is >= 5x faster per epoch. Every trained model is saved under --out/<bench>/ (the
same layout as `gridlens groundtruth train`), and a summary JSON is printed and written.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from gridlens.groundtruth.iit import TrainConfig, save_run, train
from gridlens.groundtruth.spec import get_benchmark

EARLIER_SECONDS_PER_EPOCH = {"parenthesis": 5.0, "all4": 400.0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--bench", default="parenthesis,left_greater,duplicate_remover,unique_extractor,all4"
    )
    ap.add_argument("--max-epochs", type=int, default=150)
    ap.add_argument("--eval-every", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="out/groundtruth_speed")
    ap.add_argument(
        "--speed-only",
        type=int,
        default=0,
        metavar="EPOCHS",
        help="Only time this many epochs (no evaluation, no threshold).",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = {}
    if args.speed_only:
        for name in args.bench.split(","):
            bench = get_benchmark(name)
            cfg = TrainConfig(max_epochs=args.speed_only, eval_every=10**9, seed=args.seed)
            cfg.max_epochs = args.speed_only
            _, result = train(bench, cfg, evaluate_last=False)
            wall = [r["epoch_seconds"] for r in result.history]
            cpu = [r["epoch_cpu_seconds"] for r in result.history]
            row = {
                "batches_per_epoch": cfg.n_train_per_task * len(bench.tasks) // 256,
                "wall_seconds_per_epoch": wall,
                "cpu_seconds_per_epoch": cpu,
                "load_average_1min": os.getloadavg()[0],
            }
            if name in EARLIER_SECONDS_PER_EPOCH:
                row["speedup_vs_earlier_min_wall"] = EARLIER_SECONDS_PER_EPOCH[name] / min(wall)
                row["speedup_vs_earlier_cpu"] = EARLIER_SECONDS_PER_EPOCH[name] / min(cpu)
            rows[name] = row
            print(json.dumps({name: row}), flush=True)
        return
    for name in args.bench.split(","):
        bench = get_benchmark(name)
        cfg = TrainConfig(max_epochs=args.max_epochs, eval_every=args.eval_every, seed=args.seed)
        t0 = time.perf_counter()

        def progress(row, name=name):
            if "accuracy" in row:
                print(
                    f"[{name}] epoch {row['epoch']} {row['epoch_seconds']:.2f}s/epoch "
                    f"acc {row['accuracy']:.5f} iia {row['iia']:.5f} siia {row['siia']:.5f}",
                    flush=True,
                )

        model, result = train(bench, cfg, progress=progress)
        wall = time.perf_counter() - t0
        save_run(Path(args.out) / name, model, bench, cfg, result, False, name)
        n_batches = cfg.n_train_per_task * len(bench.tasks) // cfg.batch_size
        epoch_times = [r["epoch_seconds"] for r in result.history]
        row = {
            "batches_per_epoch": n_batches,
            "seconds_per_epoch_mean": result.seconds_per_epoch,
            "seconds_per_epoch_median": sorted(epoch_times)[len(epoch_times) // 2],
            "epochs": len(result.history),
            "reached_epoch": result.reached_epoch,
            "train_seconds_to_threshold": result.reached_seconds,
            "wall_seconds_incl_eval": wall,
            "final": {
                k: result.final.get(k) for k in ("accuracy", "iia", "siia", "siia_all_unused")
            },
        }
        if name in EARLIER_SECONDS_PER_EPOCH:
            row["speedup_per_epoch_vs_earlier"] = (
                EARLIER_SECONDS_PER_EPOCH[name] / row["seconds_per_epoch_median"]
            )
        rows[name] = row
        print(json.dumps({name: row}, indent=1), flush=True)
    summary = {
        "machine": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "results": rows,
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
