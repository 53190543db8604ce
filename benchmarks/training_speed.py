"""Training throughput (tokens/s) of our trainer's step vs the original MyGPT training step.

    python benchmarks/training_speed.py [--preset cpu] [--original /tmp/orig] [--threads 2]
    python benchmarks/training_speed.py --preset 37m --device cuda      # tokens/s and MFU, bf16

Both sides run the same model shape on the same batch of quizzes (batch_size of the preset)
in the same process: ours is `gridlens.training.trainer`'s step (GridGPT with fused attention,
teacher-forced loss over the whole sequence, AdamW, gradient clipping, bf16 autocast on CUDA);
the original is `mygpt.MyGPT(causal=True)` called as in Fleuret's `one_epoch` (BracketedSequence,
cross-entropy over the sequence, Adam). The original is measured with dropout 0.0 (the same
computation as ours) and 0.1 (the released run's setting). PATH must hold the original
mygpt.py, which imports only torch.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from gridlens.models import GridGPT
from gridlens.training.config import get_preset
from gridlens.training.trainer import make_optimizer, sequence_loss
from gridlens.world import generate

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def load_original(path: Path):
    spec = importlib.util.spec_from_file_location("mygpt_original", path / "mygpt.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CPU_TIMES: dict[str, float] = {}


def timed(step, warmup: int, repeats: int, sync, name: str = "") -> float:
    """Median wall seconds per call of `step()` over `repeats` calls after `warmup` calls.
    Also records the median process CPU seconds per call in CPU_TIMES[name]: on a machine shared
    with other jobs, CPU time is the steadier measure (with --threads 1 it is the cost on one
    core)."""
    for _ in range(warmup):
        step()
    sync()
    times, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        step()
        sync()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    CPU_TIMES[name] = statistics.median(cpu)
    return statistics.median(times)


def train_flops_per_token(cfg) -> float:
    """6 x (non-embedding parameters) + 6 x attention score/value FLOPs per token (full T x T,
    the PaLM convention), for a forward and backward pass."""
    d, L, T = cfg.d_model, cfg.n_layers, cfg.n_ctx
    dense = L * (cfg.n_heads * (2 * cfg.d_head + cfg.d_value) * d + d * d + 2 * d * cfg.d_mlp)
    dense += d * cfg.d_vocab_out
    attention = L * 2 * T * cfg.n_heads * (cfg.d_head + cfg.d_value)
    return 6 * dense + 3 * attention


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument(
        "--original", type=Path, default=None, help="folder with the original mygpt.py"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    tcfg = get_preset(args.preset)
    batch = args.batch_size or tcfg.batch_size
    mcfg = tcfg.model_config()
    tokens = generate(tcfg.tasks, batch, seed=0, structure="mix", noise=tcfg.noise).tokens.to(
        device
    )
    tokens_per_step = tokens.numel()
    amp = torch.bfloat16 if cuda else None

    model = GridGPT(mcfg, seed=0).to(device).train()
    opt = make_optimizer(model, tcfg)

    def ours() -> None:
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = model(tokens)
        loss = sequence_loss(logits, tokens)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
        opt.step()

    results = {
        "preset": args.preset,
        "batch_size": batch,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "n_params": sum(p.numel() for p in model.parameters()),
    }
    if cuda:
        results["gpu"] = torch.cuda.get_device_name(device)
    seconds = timed(ours, args.warmup, args.repeats, sync, "ours")
    results["ours_tokens_per_s"] = tokens_per_step / seconds
    results["ours_cpu_s_per_step"] = CPU_TIMES["ours"]
    flops = train_flops_per_token(mcfg)
    results["train_flops_per_token"] = flops
    results["ours_tflops"] = flops * results["ours_tokens_per_s"] / 1e12
    if cuda:
        name = results["gpu"]
        peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
        if peak:
            results["mfu"] = flops * results["ours_tokens_per_s"] / peak
    print(
        f"ours: {results['ours_tokens_per_s']:,.0f} tokens/s ({seconds * 1000:.0f} ms/step, "
        f"{results['ours_tflops']:.2f} TFLOP/s, {CPU_TIMES['ours']:.2f} CPU-s/step"
        + (f", MFU {results['mfu']:.1%}" if "mfu" in results else "")
        + ")"
    )

    if args.original is not None:
        mygpt = load_original(args.original)
        for dropout in (0.0, 0.1):
            torch.manual_seed(0)
            orig = (
                mygpt.MyGPT(
                    vocabulary_size=mcfg.vocab_size,
                    dim_model=mcfg.d_model,
                    dim_keys=mcfg.d_head,
                    dim_hidden=mcfg.d_mlp,
                    nb_heads=mcfg.n_heads,
                    nb_blocks=mcfg.n_layers,
                    causal=True,
                    dropout=dropout,
                )
                .to(device)
                .train()
            )
            optimizer = torch.optim.Adam(orig.parameters(), lr=tcfg.lr)

            def original(orig=orig, optimizer=optimizer) -> None:
                optimizer.zero_grad()
                with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                    output = orig(mygpt.BracketedSequence(tokens)).x
                loss = F.cross_entropy(output.transpose(1, 2).float(), tokens)
                loss.backward()
                optimizer.step()

            key = f"original_dropout{dropout}"
            s = timed(original, args.warmup, args.repeats, sync, key)
            results[f"{key}_cpu_s_per_step"] = CPU_TIMES[key]
            results[f"cpu_time_ratio_vs_{key}"] = CPU_TIMES[key] / CPU_TIMES["ours"]
            results[f"{key}_tokens_per_s"] = tokens_per_step / s
            results[f"speedup_vs_{key}"] = (
                results["ours_tokens_per_s"] / results[f"{key}_tokens_per_s"]
            )
            print(
                f"original MyGPT (dropout {dropout}): {tokens_per_step / s:,.0f} tokens/s "
                f"({s * 1000:.0f} ms/step); ours is {results[f'speedup_vs_{key}']:.2f}x "
                f"(by CPU time: {results[f'cpu_time_ratio_vs_{key}']:.2f}x)"
            )
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
