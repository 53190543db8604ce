"""DAS against the class-mean subspace on the shipped ground-truth models: for every variable
the correspondence puts in an MLP, the IIA of interchanging each subspace (same dimension) on
held-out inputs, and the time each took to find.

    OMP_NUM_THREADS=1 python benchmarks/das_groundtruth.py --threads 1 --n-per-task 1000

As `gridlens groundtruth eval`: half the inputs fit (class means; DAS's training pairs), half
are scored (`site_iia`: each held-out input with the next one as source). `none` (nothing
interchanged) and `whole_mlp` (every neuron) bracket the scale. Wall time and process CPU time
per fit; on a shared machine CPU time is the steadier clock.
"""

from __future__ import annotations

import argparse
import json
import os
import platform

import numpy as np
import torch
from timing import timed

from gridlens.groundtruth.iit import load_run
from gridlens.groundtruth.scoring import (
    _subspace_swap,
    mlp_variables,
    patched_iia,
    variable_subspaces,
)
from gridlens.groundtruth.shipped import SHIPPED, resolve_run


def measure(name: str, n_per_task: int, das_steps: int, das_dims, seed: int) -> list[dict]:
    model, bench, _ = load_run(resolve_run(name)[0])
    model.eval()
    rng = np.random.default_rng(seed)
    fit_tokens, _ = bench.generate(n_per_task // 2, rng)
    test_tokens, _ = bench.generate(n_per_task - n_per_task // 2, rng)
    rows = []
    for layer in range(bench.config.n_layers):
        if not mlp_variables(bench, layer):
            continue
        args = (model, bench, layer, fit_tokens)
        means, means_wall, means_cpu = timed(
            lambda a=args: variable_subspaces(*a, "class_means", seed=seed)
        )
        das, das_wall, das_cpu = timed(
            lambda a=args: variable_subspaces(*a, "das", das_steps, seed, das_dims=das_dims)
        )
        for var in means:
            q_means, q_das = means[var]["class_means"][0], das[var]["das"][0]
            transforms = {
                "class_means": _subspace_swap(q_means),
                "das": _subspace_swap(q_das),
                "none": lambda a, s: a,
                "whole_mlp": lambda a, s: s,
            }
            iia = patched_iia(model, bench, test_tokens, layer, var, transforms)
            rows.append(
                {
                    "model": name,
                    "variable": var,
                    "layer": layer,
                    "k": q_das.shape[1],
                    "k_class_means": q_means.shape[1],
                    **{f"iia_{m}": v for m, v in iia.items()},
                    "das_seconds": das[var]["das"][1],
                    "layer_das_wall_s": das_wall,
                    "layer_das_cpu_s": das_cpu,
                    "layer_class_means_wall_s": means_wall,
                    "layer_class_means_cpu_s": means_cpu,
                }
            )
            r = rows[-1]
            print(
                f"{name:18s} {var:28s} k={r['k']}  class means {r['iia_class_means']:.4f}  "
                f"DAS {r['iia_das']:.4f}  (none {r['iia_none']:.4f}, whole MLP "
                f"{r['iia_whole_mlp']:.4f})  DAS fit {r['das_seconds']:.1f} s",
                flush=True,
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(SHIPPED))
    parser.add_argument("--n-per-task", type=int, default=1000)
    parser.add_argument("--das-steps", type=int, default=300)
    parser.add_argument("--das-dims", type=int, default=None, help="Default: the class means'.")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="Also write the rows to this file.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} thread(s), OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}"
    )
    rows = []
    for name in args.models.split(","):
        rows += measure(name, args.n_per_task, args.das_steps, args.das_dims, args.seed)
    better = sum(r["iia_das"] > r["iia_class_means"] + 1e-3 for r in rows)
    worse = sum(r["iia_das"] < r["iia_class_means"] - 1e-3 for r in rows)
    print(f"DAS better on {better}, worse on {worse}, tied on {len(rows) - better - worse}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
