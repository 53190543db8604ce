"""Where a SIIT training batch spends its CPU time, ours against the earlier stack's procedure
(``earlier_stack_epochs`` in groundtruth_speed.py): matrix-product FLOPs and time, attention
kernel time, and a plain step (forward, backward and Adam on the batch's clean rows alone, the
behaviour loss only) as the unit of cost. Why: the per-epoch speed goal is bounded by these
numbers, not by the intervention code (see RESULTS.md, "SIIT training speed, third pass").

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/groundtruth_profile.py [--bench parenthesis]
        [--batches 6] [--threads 1]

Times come from torch.profiler (its overhead inflates small ops, so the unprofiled totals are
groundtruth_speed.py's); FLOPs count 2 * m * k * n for every mm / addmm / bmm.
"""

from __future__ import annotations

import argparse
import json
from statistics import median

import numpy as np
import torch
from groundtruth_speed import earlier_stack_epochs
from timing import timed
from torch.profiler import ProfilerActivity, profile

from gridlens.groundtruth.iit import TrainConfig, make_model, masked_ce, train
from gridlens.groundtruth.spec import get_benchmark


def kernel_stats(prof, batches: int) -> dict:
    """Per batch (self times): matrix-product GFLOP and ms, ms in the fused attention kernel
    (scaled_dot_product_attention, forward and backward)."""
    flops, mm_us, attention_us = 0, 0.0, 0.0
    for event in prof.events():
        shapes, us = event.input_shapes, event.self_cpu_time_total
        if event.name in ("aten::mm", "aten::bmm") and len(shapes) >= 2:
            (*batch, m, k), n = shapes[0], shapes[1][-1]
            flops += 2 * int(np.prod(batch or [1])) * m * k * n
            mm_us += us
        elif event.name == "aten::addmm":
            flops += 2 * shapes[1][0] * shapes[1][1] * shapes[2][1]
            mm_us += us
        elif "scaled_dot_product" in event.name:
            attention_us += us
    return {
        "matmul_gflop": flops / batches / 1e9,
        "matmul_ms": mm_us / batches / 1e3,
        "sdpa_kernel_ms": attention_us / batches / 1e3,
    }


def profiled(fn, batches: int, setup=None) -> dict:
    """kernel_stats of ``fn()``, less those of ``setup()`` (the part of ``fn`` before its
    first batch: data, model conversion) when given."""

    def stats(call) -> dict:
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            call()
        return kernel_stats(prof, batches)

    fn()  # warm-up: allocator, kernels, first-call costs
    out = stats(fn)
    if setup is not None:
        before = stats(setup)
        out = {k: v - before[k] for k, v in out.items()}
    return out


def plain_step_ms(bench, cfg: TrainConfig, repeats: int = 22) -> float:
    """CPU ms of one forward, backward and Adam step on a batch of clean rows alone."""
    tokens, _ = bench.generate(cfg.batch_size, np.random.default_rng(cfg.seed))
    labels = bench.labels(tokens)
    model = make_model(bench, cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        masked_ce(model(tokens), labels).backward()
        opt.step()

    step()
    return median(timed(step)[2] for _ in range(repeats)) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", default="parenthesis")
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bench = get_benchmark(args.bench)
    n_train = args.batches * TrainConfig.batch_size // len(bench.tasks)
    cfg = TrainConfig(max_epochs=1, n_train_per_task=n_train, eval_every=10**9)
    batches = n_train * len(bench.tasks) // cfg.batch_size
    ours = profiled(lambda: train(bench, cfg, evaluate_last=False), batches)
    earlier = profiled(
        lambda: earlier_stack_epochs(bench, cfg, 1),
        batches,
        setup=lambda: earlier_stack_epochs(bench, cfg, 0),
    )
    row = {
        "bench": args.bench,
        "torch_threads": torch.get_num_threads(),
        "batches": batches,
        "ours": ours,
        "earlier_stack": earlier,
        "plain_step_cpu_ms": plain_step_ms(bench, cfg),
    }
    print(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
