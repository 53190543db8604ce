"""Attribution patching against the activation-patching sweep it approximates: wall time of AtP
and AtP* over every head and neuron (one call each) against the full sweep over the same
components on the same pairs, and their agreement (Spearman of the scores, top-k recall of the
largest |scores|), separately for heads and for neurons.

    OMP_NUM_THREADS=1 python benchmarks/analysis_speed.py --threads 1 --n-per-task 2

The sweep is the exact, batched one of `activation_patching` (rank-one residual deltas, only the
layers after the component run, patched copies stacked per forward). Process CPU time is printed
beside wall time: on a shared machine it is the steadier clock.
"""

from __future__ import annotations

import argparse
import json
import platform

import torch
from timing import timed

from gridlens.analysis.attribution import attribution_patching, compare
from gridlens.analysis.pairs import PAIR_KINDS, make_pairs
from gridlens.analysis.patching import activation_patching
from gridlens.models.checkpoints import load

NAN = float("nan")


def run_kind(model, kind: str, args) -> dict:
    pairs = make_pairs(kind, args.tasks, args.n_per_task, args.seed)
    out: dict = {"kind": kind, "pairs": len(pairs), "skipped": sorted(pairs.skipped)}
    groups = args.groups.split(",")
    sweep = {}
    for group in groups:
        result, wall, cpu = timed(
            lambda g=group: activation_patching(model, pairs, g, batch_size=args.batch_size)
        )
        sweep[group] = result
        out[f"sweep_{group}"] = {"wall_s": wall, "cpu_s": cpu}
    for method in args.methods.split(","):
        result, wall, cpu = timed(
            lambda m=method: attribution_patching(model, pairs, args.groups, method=m)
        )
        entry = {"wall_s": wall, "cpu_s": cpu}
        for group in groups:
            entry[group] = compare(sweep[group], result.select(group), k=args.k)
        out[method] = entry
    return out


def table(rows: list[dict]) -> str:
    lines = [
        f"{'kind':>9} {'pairs':>5} {'method':>6} {'wall s':>8} {'cpu s':>8} {'x wall':>7} "
        f"{'x cpu':>6} | {'heads rho':>9} {'|rho|':>6} {'top-k':>5} | {'neur. rho':>9} "
        f"{'|rho|':>6} {'active':>6} {'top-k':>5}"
    ]
    missing = dict.fromkeys(("spearman", "spearman_abs", "spearman_active", "top_k_recall"), NAN)
    for r in rows:
        parts = [v for k, v in r.items() if k.startswith("sweep_")]
        wall, cpu = sum(p["wall_s"] for p in parts), sum(p["cpu_s"] for p in parts)
        lines.append(
            f"{r['kind']:>9} {r['pairs']:>5} {'sweep':>6} {wall:8.1f} {cpu:8.1f} {'1':>7} "
            f"{'1':>6} | "
            + ", ".join(
                f"{k[6:]} {v['cpu_s']:.1f} cpu s" for k, v in r.items() if k[:6] == "sweep_"
            )
        )
        for method in [m for m in ("atp", "atp*", "atp-qkv") if m in r]:
            e = r[method]
            h, n = e["heads"], e.get("neurons", missing)
            lines.append(
                f"{r['kind']:>9} {r['pairs']:>5} {method:>6} {e['wall_s']:8.2f} {e['cpu_s']:8.2f} "
                f"{wall / e['wall_s']:7.0f} {cpu / e['cpu_s']:6.0f} | {h['spearman']:9.3f} "
                f"{h['spearman_abs']:6.3f} {h['top_k_recall']:5.2f} | {n['spearman']:9.3f} "
                f"{n['spearman_abs']:6.3f} {n['spearman_active']:6.3f} {n['top_k_recall']:5.2f}"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n-per-task", type=int, default=2)
    parser.add_argument("--kinds", default="parameter", help=f"comma-separated: {PAIR_KINDS}")
    parser.add_argument("--tasks", default="default")
    parser.add_argument("--model", default="default")
    parser.add_argument("--k", type=int, default=10, help="top-k for the recall")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=256, help="sweep sequences/forward")
    parser.add_argument("--groups", default="heads,neurons", choices=["heads,neurons", "heads"])
    parser.add_argument("--methods", default="atp,atp*", help="comma-separated; also atp-qkv")
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load(args.model).eval()
    print(
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s); model {args.model!r} "
        f"({model.cfg.n_layers} layers x {model.cfg.n_heads} heads, d_mlp {model.cfg.d_mlp}); "
        f"{args.n_per_task} pairs per task, top-k k={args.k}"
    )
    rows = [run_kind(model, kind.strip(), args) for kind in args.kinds.split(",")]
    print(table(rows))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
