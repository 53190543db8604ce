"""The neuron ablation sweep against ablating one neuron at a time through hooks, on the same
neurons and quizzes in the same run, then (with --all) the sweep over every neuron.

    OMP_NUM_THREADS=2 python benchmarks/ablation_speed.py --threads 2 --n-per-task 4 --all

The baseline is the plain way: one full forward of the quiz batch per neuron with
`ablation_hooks` active. The sweep is `ablate`: each neuron's rank-one change of the residual
stream after its MLP, only the later blocks run (the last one for the predicted grid only),
dead neurons free. Both give the same numbers (checked here); times are medians over repeats,
process CPU time beside wall time (on a shared machine CPU time is the steadier clock).
"""

from __future__ import annotations

import argparse
import json
import os
import platform

import numpy as np
import torch
from timing import timed

from gridlens.analysis.ablation import ablate, ablation_hooks
from gridlens.analysis.core import grid_metrics, quiz_set
from gridlens.models.checkpoints import load


def one_at_a_time(model, quizzes, names, method):
    """[C, n] grid loss with each neuron ablated alone by hooks on a full forward."""
    losses = []
    for name in names:
        hooks = ablation_hooks(model, quizzes, [name], method)
        losses.append(grid_metrics(model, quizzes.tokens, hooks).loss.numpy())
    return np.stack(losses)


def sample(cfg, per_layer: int) -> list[str]:
    step = max(1, cfg.d_mlp // per_layer)
    return [f"L{lay}N{n}" for lay in range(cfg.n_layers) for n in range(0, cfg.d_mlp, step)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n-per-task", type=int, default=4, help="4 x 8 tasks = 32 quizzes")
    parser.add_argument("--method", default="mean", choices=("zero", "mean", "resample"))
    parser.add_argument("--per-layer", type=int, default=8, help="neurons per layer compared")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--all", action="store_true", help="then time the sweep on all neurons")
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load(args.model).eval()
    quizzes = quiz_set(n_per_task=args.n_per_task, seed=0)
    cfg = model.cfg
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load "
        f"{os.getloadavg()[0]:.1f}, torch {torch.__version__}, {torch.get_num_threads()} "
        f"thread(s); model {args.model!r} ({cfg.n_layers} layers, d_mlp {cfg.d_mlp}); "
        f"{len(quizzes)} quizzes, {args.method} ablation"
    )
    names = sample(cfg, args.per_layer)
    base, base_wall, base_cpu = timed(
        lambda: one_at_a_time(model, quizzes, names, args.method), args.repeats
    )
    sweep, wall, cpu = timed(lambda: ablate(model, quizzes, names, args.method), args.repeats)
    error = float(np.abs(sweep.loss - base).max())
    out = {
        "neurons_compared": len(names),
        "hooks_wall_s": base_wall,
        "hooks_cpu_s": base_cpu,
        "sweep_wall_s": wall,
        "sweep_cpu_s": cpu,
        "max_abs_loss_difference": error,
    }
    print(
        f"{len(names)} neurons: hooks one at a time {base_wall:.1f} s ({base_cpu:.1f} CPU s), "
        f"sweep {wall:.1f} s ({cpu:.1f} CPU s): {base_wall / wall:.1f}x wall, "
        f"{base_cpu / cpu:.1f}x CPU; largest loss difference {error:.1e} nats"
    )
    if args.all:
        total = cfg.n_layers * cfg.d_mlp
        _, wall, cpu = timed(lambda: ablate(model, quizzes, "neurons", args.method), 1)
        out.update(all_neurons=total, all_wall_s=wall, all_cpu_s=cpu)
        print(
            f"all {total} neurons x {len(quizzes)} quizzes: {wall:.1f} s ({cpu:.1f} CPU s); "
            f"the hooks would take about {base_wall * total / len(names):.0f} s"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(out, handle, indent=1)


if __name__ == "__main__":
    main()
