"""Wall time per SIIT epoch and to the published thresholds (100% accuracy, IIA >= 99.3%,
SIIA >= 99.95%) for the ground-truth benchmarks, on CPU, batch size 256.

    .venv/bin/python benchmarks/groundtruth_speed.py [--bench parenthesis,all4] [--max-epochs N]
        [--eval-every K] [--threads T] [--out out/groundtruth_speed]
    .venv/bin/python benchmarks/groundtruth_speed.py --bench parenthesis --speed-only 2

The earlier stack (the iit library on TransformerLens) took about 5 s per epoch of 22 batches
of 256 for parenthesis and about 400 s per epoch for the 4-task model on this CPU; the goal is
>= 5x faster per epoch. ``--speed-only N`` times N epochs of our training and N epochs of a
re-implementation of the earlier stack's procedure (see ``earlier_stack_epochs``) in the same
process, so their ratio is measured under the same load. Every trained model is saved under
--out/<bench>/ (the same layout as `gridlens groundtruth train`), and a summary JSON is printed
and written.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from statistics import median

import numpy as np
import torch

from gridlens.groundtruth.iit import (
    TrainConfig,
    make_model,
    masked_ce,
    save_run,
    train,
)
from gridlens.groundtruth.spec import Benchmark, get_benchmark

EARLIER_SECONDS_PER_EPOCH = {"parenthesis": 5.0, "all4": 400.0}


def earlier_stack_epochs(bench: Benchmark, cfg: TrainConfig, epochs: int) -> list[dict]:
    """Time ``epochs`` epochs of the earlier stack's procedure (the iit library's
    StrictIITModelPair with its defaults, on a TransformerLens HookedTransformer of the same
    size): batches collated from per-example (base, source) pairs in a Python loop; per batch
    one high-level node for the whole batch, a full ``run_with_cache`` of the sources and a
    patched forward for the IIT loss, the same again for the strict loss (one unused node), a
    clean forward for the behaviour loss, and a separate backward, gradient clipping (1.0) and
    Adam step for each of the three losses. The high-level model is our vectorised one (the
    earlier stack ran a hooked module), which favours the earlier stack."""
    from gridlens.models.transformer_lens import to_transformer_lens

    rng = np.random.default_rng(cfg.seed)
    tokens, _ = bench.generate(cfg.n_train_per_task, rng)
    labels = bench.labels(tokens)
    tl = to_transformer_lens(make_model(bench, cfg.seed))
    opt = torch.optim.Adam(tl.parameters(), lr=cfg.lr, betas=cfg.betas)
    weights = (cfg.weight_iit, cfg.weight_strict, cfg.weight_behaviour)
    n, bs = len(tokens), cfg.batch_size

    def patch(site, cache):
        def fn(act, hook):
            src = cache[hook.name]
            if site.head is None:
                return src
            act = act.clone()
            act[:, :, site.head] = src[:, :, site.head]
            return act

        return [(site.hook, fn)]

    def step(loss):
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tl.parameters(), 1.0)
        opt.step()

    rows = []
    for _ in range(epochs):
        t0, c0 = time.perf_counter(), time.process_time()
        order = rng.permutation(n)
        for i in range(n // bs):
            pairs = [(tokens[j], labels[j], tokens[rng.integers(n)]) for j in order[i * bs :][:bs]]
            base, y, source = (torch.stack(col) for col in zip(*pairs, strict=True))
            node = bench.nodes[rng.integers(len(bench.nodes))]
            hl_src = bench.run_high_level(source)
            everyone = torch.ones(len(base), dtype=torch.bool)
            target = bench.run_high_level(base, {v: (everyone, hl_src[v]) for v in node.variables})
            _, cache = tl.run_with_cache(source)
            out = tl.run_with_hooks(base, fwd_hooks=patch(node.site, cache))
            step(weights[0] * masked_ce(out, target["output"]))
            unused = bench.unused[rng.integers(len(bench.unused))]
            _, cache = tl.run_with_cache(source)
            out = tl.run_with_hooks(base, fwd_hooks=patch(unused, cache))
            step(weights[1] * masked_ce(out, y))
            step(weights[2] * masked_ce(tl(base), y))
        rows.append({"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0})
    return rows


def speed_only(names: list[str], epochs: int, seed: int) -> None:
    for name in names:
        bench = get_benchmark(name)
        cfg = TrainConfig(max_epochs=epochs, eval_every=10**9, seed=seed)
        _, result = train(bench, cfg, evaluate_last=False)
        wall = [r["epoch_seconds"] for r in result.history]
        cpu = [r["epoch_cpu_seconds"] for r in result.history]
        earlier = earlier_stack_epochs(bench, cfg, epochs)
        e_wall, e_cpu = [r["wall"] for r in earlier], [r["cpu"] for r in earlier]
        row = {
            "batches_per_epoch": cfg.n_train_per_task * len(bench.tasks) // cfg.batch_size,
            "torch_threads": torch.get_num_threads(),
            "wall_seconds_per_epoch": wall,
            "cpu_seconds_per_epoch": cpu,
            "earlier_stack_wall_seconds_per_epoch": e_wall,
            "earlier_stack_cpu_seconds_per_epoch": e_cpu,
            "speedup_vs_earlier_stack_cpu": median(e_cpu) / median(cpu),
            "speedup_vs_earlier_stack_wall": median(e_wall) / median(wall),
            "load_average_1min": os.getloadavg()[0],
        }
        if name in EARLIER_SECONDS_PER_EPOCH:
            row["speedup_vs_quoted_earlier_wall"] = EARLIER_SECONDS_PER_EPOCH[name] / median(wall)
            row["speedup_vs_quoted_earlier_cpu"] = EARLIER_SECONDS_PER_EPOCH[name] / median(cpu)
        print(json.dumps({name: row}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--bench", default="parenthesis,left_greater,duplicate_remover,unique_extractor,all4"
    )
    ap.add_argument("--max-epochs", type=int, default=200)
    ap.add_argument("--eval-every", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="out/groundtruth_speed")
    ap.add_argument(
        "--speed-only",
        type=int,
        default=0,
        metavar="EPOCHS",
        help="Only time this many epochs, ours and the earlier stack's (no evaluation).",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.speed_only:
        speed_only(args.bench.split(","), args.speed_only, args.seed)
        return
    rows = {}
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
            "seconds_per_epoch_median": median(epoch_times),
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
