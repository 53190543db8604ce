"""Edge-level circuit discovery: EAP and EAP-IG against ACDC on the shipped 4-task ground-truth
model (`all4`, each task's pairs; goal: EAP >= 50x faster than ACDC), and ACDC on one task of
the shipped culture model (goal: within 10 minutes on 2 CPU cores).

    OMP_NUM_THREADS=1 python benchmarks/circuits_speed.py --threads 1

On all4 every method sees the same pairs (`--examples` per task, same-task pairs rolled by
one). ACDC runs over the threshold sweep that `groundtruth eval` uses (`--thresholds`, 6):
EAP gives a whole ranking, hence a whole ROC curve, in one call; ACDC needs one run per point.
Per-threshold ACDC time is the sweep's divided by the count. EAP is timed as the median of
`--repeats` calls. Process CPU time is printed beside wall time: on a shared
machine it is the steadier clock. The edge ROC AUC of each method is printed as a check.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics

import numpy as np
import torch
from timing import timed

from gridlens.analysis.circuits import EdgeRun, acdc, default_thresholds, eap, eap_ig
from gridlens.analysis.circuits.culture import culture_problem
from gridlens.groundtruth.edges import (
    gt_problem,
    pair_index,
    pair_max,
    true_pairs,
    unscored_node,
)
from gridlens.groundtruth.iit import load_run
from gridlens.groundtruth.scoring import roc_auc
from gridlens.groundtruth.shipped import resolve_run
from gridlens.models import load


def acdc_scores(run: EdgeRun, thresholds: list[float]) -> torch.Tensor:
    """ACDC over a threshold sweep; an edge's score is how many of the circuits keep it (its
    ranking gives the same ROC points as the sweep's circuits when they are nested)."""
    return sum(acdc(run, t, "kl").float() for t in thresholds)


def all4(args) -> list[dict]:
    model, bench, _ = load_run(resolve_run("all4")[0])
    tokens, _ = bench.generate(args.examples, np.random.default_rng(args.seed))
    rows = []
    for k, task in enumerate(bench.tasks):
        run = EdgeRun(model.eval(), gt_problem(model, bench, tokens, k))
        pairs, index = pair_index(run.graph)
        truth = true_pairs(bench, k)
        skip = unscored_node(bench, k)
        scored = np.array([skip not in p for p in pairs])
        labels = np.array([p in truth for p in pairs])[scored]
        row = {"task": task.name, "pairs": len(run.problem)}
        sweep = default_thresholds(run, "kl", args.thresholds)
        for name, fn in (
            ("eap", lambda r=run: eap(r, "logit_diff")),
            ("eap_ig", lambda r=run: eap_ig(r, "logit_diff")),
            ("acdc", lambda r=run, t=sweep: acdc_scores(r, t)),
        ):
            scores, wall, cpu = timed(fn, 1 if name == "acdc" else args.repeats)
            per_pair = pair_max(scores, index, len(pairs)).numpy()[scored]
            row[name] = {"wall_s": wall, "cpu_s": cpu, "auc": roc_auc(per_pair, labels)}
        rows.append(row)
        print(json.dumps(row))
    return rows


def culture(args) -> dict:
    model = load("default").eval()
    problem = culture_problem(args.task, args.pairs, args.seed)
    run = EdgeRun(model, problem)
    threshold = 0.01 * run.damage(torch.zeros(len(run.graph)), "kl")
    keep, wall, cpu = timed(lambda: acdc(run, threshold, "kl"))
    _, eap_wall, eap_cpu = timed(lambda: eap(run, "logit_diff"))
    out = {
        "task": args.task,
        "pairs": args.pairs,
        "edges": len(run.graph),
        "kept": int(keep.sum()),
        "faithfulness": run.faithfulness(keep.float()),
        "acdc": {"wall_s": wall, "cpu_s": cpu},
        "eap": {"wall_s": eap_wall, "cpu_s": eap_cpu},
    }
    print(json.dumps(out))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--examples", type=int, default=200, help="all4 inputs per task")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--thresholds", type=int, default=6, help="ACDC sweep on all4")
    parser.add_argument("--task", default="contact")
    parser.add_argument("--pairs", type=int, default=8, help="culture pairs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-culture", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} thread(s)"
    )
    rows = all4(args)
    for row in rows:
        print(
            f"all4/{row['task']:>17}: ACDC sweep {row['acdc']['cpu_s']:7.2f} cpu-s, EAP "
            f"{row['eap']['cpu_s']:.3f} ({row['acdc']['cpu_s'] / row['eap']['cpu_s']:.0f}x), "
            f"EAP-IG {row['eap_ig']['cpu_s']:.3f} "
            f"({row['acdc']['cpu_s'] / row['eap_ig']['cpu_s']:.0f}x); AUC acdc "
            f"{row['acdc']['auc']:.3f} eap {row['eap']['auc']:.3f} "
            f"eap_ig {row['eap_ig']['auc']:.3f}"
        )
    ratios = [r["acdc"]["cpu_s"] / r["eap"]["cpu_s"] for r in rows]
    print(
        f"all4: EAP vs the ACDC sweep of {args.thresholds} thresholds, median ratio "
        f"{statistics.median(ratios):.0f}x by CPU time "
        f"({statistics.median(ratios) / args.thresholds:.0f}x per ACDC threshold)"
    )
    if not args.skip_culture:
        c = culture(args)
        print(
            f"culture/{c['task']}: ACDC {c['acdc']['wall_s']:.0f} s wall, {c['acdc']['cpu_s']:.0f} "
            f"cpu-s for {c['edges']} edges ({c['kept']} kept, faithfulness "
            f"{c['faithfulness']:.2f}); EAP {c['eap']['wall_s']:.1f} s"
        )


if __name__ == "__main__":
    main()
