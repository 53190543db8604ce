"""The 37m forward on a CPU: ours in fp32 and under bf16 autocast, at each thread count, against
the original MyGPT in fp32 measured in the same run, with the arithmetic rate each reaches.

    OMP_NUM_THREADS=2 python benchmarks/cpu_forward.py --original runs/orig --threads 1,2

--original: a directory holding Fleuret's mygpt.py (culture's or picoclvr's; it only imports
torch). Contenders run in turns, each round timing every one of them, so load from other
processes hits them alike; medians of process CPU time and of wall time are printed. bf16
autocast pays off only where the CPU multiplies bf16 natively (AVX512-BF16 or AMX); its logit
error against fp32 is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from model_speed import original_model

from gridlens.models import GridGPT, get_preset
from gridlens.training.throughput import flops_per_token
from gridlens.world import generate


def bf16_native() -> bool:
    """Whether oneDNN multiplies bf16 natively on this CPU (else autocast only adds casts)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def contenders(model, tokens, original_dir):
    def bf16():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(tokens)

    out = {"ours fp32": lambda: model(tokens), "ours bf16": bf16}
    if original_dir:
        mygpt, ref = original_model(original_dir, model)
        out["original fp32"] = lambda: ref(mygpt.BracketedSequence(tokens)).x
    return out


def rounds(fns: dict, repeats: int) -> dict[str, tuple[float, float]]:
    """name -> (median wall s, median CPU s) over `repeats` rounds after a warm-up round."""
    times = {k: ([], []) for k in fns}
    with torch.inference_mode():
        for fn in fns.values():
            fn()
        for _ in range(repeats):
            for name, fn in fns.items():
                wall, cpu = time.perf_counter(), time.process_time()
                fn()
                times[name][0].append(time.perf_counter() - wall)
                times[name][1].append(time.process_time() - cpu)
    return {k: (statistics.median(w), statistics.median(c)) for k, (w, c) in times.items()}


def errors(fns: dict) -> dict[str, float]:
    """Largest |logit| difference against ours in fp32, and argmax agreement of bf16."""
    with torch.inference_mode():
        logits = {k: fn().float() for k, fn in fns.items()}
    base = logits["ours fp32"]
    out = {f"{k} max_abs_diff": float((v - base).abs().max()) for k, v in logits.items()}
    same = (logits["ours bf16"].argmax(-1) == base.argmax(-1)).float().mean()
    out["ours bf16 argmax_agreement"] = float(same)
    out["logit_scale"] = float(base.abs().max())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="37m")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--original", default=None, help="directory with Fleuret's mygpt.py")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    model = GridGPT(get_preset(args.preset), seed=0).eval()
    tokens = generate("default", args.batch, seed=0).tokens
    fns = contenders(model, tokens, args.original)
    flops = flops_per_token(model.cfg) / 3 * tokens.numel()  # forward: a third of training's
    print(
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.backends.cpu.get_cpu_capability()}, bf16 native: {bf16_native()}; "
        f"{args.preset} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M), batch "
        f"{args.batch} x {tokens.shape[1]}, {flops / 1e9:.0f} GFLOP per forward"
    )
    results = {"errors": errors(fns), "runs": {}}
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        times = rounds(fns, args.repeats)
        results["runs"][threads] = times
        base = times.get("original fp32")
        for name, (wall, cpu) in times.items():
            ratio = f"  {base[0] / wall:.2f}x wall, {base[1] / cpu:.2f}x CPU" if base else ""
            print(
                f"{threads} thread(s) {name:14} {wall * 1e3:8.0f} ms ({cpu * 1e3:8.0f} CPU ms) "
                f"{flops / cpu / 1e9:6.1f} GFLOP per CPU-s{ratio}"
            )
    e = results["errors"]
    print(
        f"bf16 against fp32: max |logit diff| {e['ours bf16 max_abs_diff']:.3g} (logits up to "
        f"{e['logit_scale']:.3g}), argmax agreement {100 * e['ours bf16 argmax_agreement']:.2f}%"
    )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
