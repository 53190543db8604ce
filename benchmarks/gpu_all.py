"""Every GPU measurement of issue 22 in one run, about 10 minutes on an H200 (one 600 s command):

  train     training tokens/s and MFU (bf16) of the `cpu`, `gpu` (mid-size, 6.3M) and `37m`
            presets: `gridlens.training.train` itself, its log's windows after the first
  forward   the 37m forward, ours against the original MyGPT and the TransformerLens export
            (same weights, same autocast), and cached generation of the predicted grid, ours
            against the original's (its own KV cache), with a same-tokens check
  sae       one SAE step (TopK, BatchTopK, JumpReLU) ours against SAELens's SAETrainer on the
            same activation batches of the 37m model, and end to end: ours streaming quizzes
            through the model (train_sae) against SAELens's runner on the TL export
  store     the ActivationStore's rows/s from fresh quizzes through the 37m model

    PYTHONPATH=. python3 benchmarks/gpu_all.py --out $OUT --original runs/orig   # on the GPU
    PYTHONPATH=. python benchmarks/gpu_all.py --smoke --out runs/smoke            # CPU, tiny

Writes OUT/gpu_all.json (every number) and OUT/gpu_all.log (what it printed). The parts run
one after the other, each on its own: one that fails (SAELens and TransformerLens are not on
the H200 image unless carried as wheels; --original needs Fleuret's mygpt.py carried) records
its error and the rest go on. Times are medians of CUDA-synchronised wall clocks.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from gridlens.io import atomic_write
from gridlens.models import GridGPT, get_preset
from gridlens.training.throughput import flops_per_token, peak_flops
from gridlens.world import generate

FULL = {
    "train_presets": "cpu,gpu,37m",
    "train_steps": 120,
    "model": "37m",
    "batch": 64,
    "repeats": 10,
    "site": "blocks.6.hook_resid_post",
    "d_sae": 16384,
    "k": 64,
    "sae_batch": 4096,
    "sae_steps": 30,
    "e2e_tokens": 2_000_000,
    "store_rows": 2_000_000,
}
SMOKE = {
    "train_presets": "tiny",
    "train_steps": 4,
    "model": "tiny",
    "batch": 2,
    "repeats": 1,
    "site": "blocks.1.hook_resid_post",
    "d_sae": 64,
    "k": 4,
    "sae_batch": 256,
    "sae_steps": 2,
    "e2e_tokens": 1024,
    "store_rows": 1024,
}
SAE_ARCHS = ("topk", "batchtopk", "jumprelu")


class Log:
    """print() that also keeps the lines for OUT/gpu_all.log."""

    def __init__(self):
        self.lines: list[str] = []

    def __call__(self, *parts) -> None:
        line = " ".join(str(p) for p in parts)
        print(line, flush=True)
        self.lines.append(line)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn, device, repeats: int) -> float:
    """Median seconds of `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def autocast(device: torch.device):
    if device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16)


# ----------------------------------------------------------------------------- training


def part_train(args, device, log) -> dict:
    from gridlens.training.config import PRESETS
    from gridlens.training.trainer import train

    out = {}
    for name in args.train_presets.split(","):
        steps = args.train_steps
        cfg = PRESETS[name].replace(
            steps=steps, warmup_steps=min(10, steps), eval_every=0, final_eval_n=0,
            checkpoint_every=0, log_every=max(1, steps // 6), progress=False, plot=False,
            device=str(device), dtype="bfloat16" if device.type == "cuda" else "float32",
            compile=args.compile, time_budget=0.0,
        )  # fmt: skip
        folder = Path(tempfile.mkdtemp(prefix=f"train_{name}_", dir=args.work))
        train(cfg, folder, echo=lambda *a: None)
        records = [json.loads(line) for line in (folder / "log.jsonl").open()]
        windows = [r for r in records if "tokens_per_s" in r][1:] or [
            r for r in records if "tokens_per_s" in r
        ]
        speed = statistics.median(r["tokens_per_s"] for r in windows)
        mfus = [r["mfu"] for r in windows if "mfu" in r]
        out[name] = {
            "params": cfg.model_config().n_params(),
            "batch": cfg.batch_size,
            "steps": steps,
            "compile": args.compile,
            "tokens_per_s": speed,
            "mfu": statistics.median(mfus) if mfus else None,
            "flops_per_token": flops_per_token(cfg.model_config()),
        }
        mfu = f", MFU {100 * out[name]['mfu']:.1f}%" if mfus else ""
        log(f"train {name:6} batch {cfg.batch_size:4}: {speed:12,.0f} tokens/s{mfu}")
    return out


# ----------------------------------------------------------------------------- forward


def _original(args, model):
    sys.path.insert(0, str(Path(__file__).parent))
    from model_speed import original_model

    mygpt, ref = original_model(args.original, model)
    return mygpt, ref


def _original_generation(mygpt, ref, tokens: torch.Tensor) -> torch.Tensor:
    """The original's own cached autoregression of the last grid, greedy."""
    out = tokens.clone()
    mask = torch.zeros_like(out)
    mask[:, out.shape[1] - out.shape[1] // 4 + 1 :] = 1
    ref.masked_inplace_autoregression(out, mask, deterministic_synthesis=True)
    return out


def part_forward(args, device, log) -> dict:
    model = GridGPT(get_preset(args.model), seed=0).to(device).eval()
    tokens = generate("default", args.batch, seed=0).tokens.to(device)
    out: dict = {"model": args.model, "batch": args.batch, "errors": {}}
    forwards = {"ours": lambda: model(tokens)}
    generations = {"ours": lambda: model.complete(tokens)}
    try:
        mygpt, ref = _original(args, model) if args.original else (None, None)
        if ref is not None:
            ref = ref.to(device)
            forwards["original"] = lambda: ref(mygpt.BracketedSequence(tokens)).x
            generations["original"] = lambda: _original_generation(mygpt, ref, tokens)
    except Exception as error:
        out["errors"]["original"] = repr(error)
    try:
        from gridlens.models.transformer_lens import to_tl_input

        hooked, tl_input = model.to_transformer_lens(), to_tl_input(tokens)
        forwards["transformer_lens"] = lambda: hooked(tl_input)
    except Exception as error:
        out["errors"]["transformer_lens"] = repr(error)
    with torch.inference_mode(), autocast(device):
        for name, fn in forwards.items():
            out[f"forward_{name}_s"] = median_time(fn, device, args.repeats)
        made = {name: fn() for name, fn in generations.items()}
        for name, fn in generations.items():
            out[f"generate_{name}_s"] = median_time(fn, device, max(1, args.repeats // 5))
    if "original" in made:
        out["same_generated_tokens"] = bool(torch.equal(made["ours"], made["original"]))
    for kind in ("forward", "generate"):
        base = out[f"{kind}_ours_s"]
        ratios = ", ".join(
            f"{k.split('_', 1)[1][:-2]} {v * 1e3:.1f} ms ({v / base:.2f}x ours)"
            for k, v in out.items()
            if k.startswith(f"{kind}_") and k != f"{kind}_ours_s"
        )
        log(f"{kind} {args.model} batch {args.batch}: ours {base * 1e3:.1f} ms; {ratios}")
    return out


# ----------------------------------------------------------------------------- SAEs


def _activations(model, args, device, rows: int) -> torch.Tensor:
    from gridlens.sae.activations import collect

    quizzes = generate("default", rows // 100 + 1, seed=11).tokens
    with autocast(device):
        x = collect(model, quizzes, args.site, "grid", batch_size=64)[:rows].float()
    return x * (x.shape[1] / x.pow(2).sum(1).mean()).sqrt()


def _saelens_trainer(arch: str, d_in: int, args, device):
    import sae_lens
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    make = {
        "topk": sae_lens.TopKTrainingSAEConfig,
        "batchtopk": sae_lens.BatchTopKTrainingSAEConfig,
        "jumprelu": sae_lens.JumpReLUTrainingSAEConfig,
    }[arch]
    extra = {"k": args.k} if arch != "jumprelu" else {}
    cfg = make(d_in=d_in, d_sae=args.d_sae, device=str(device), **extra)
    trainer_cfg = SAETrainerConfig(
        total_training_samples=10**9, train_batch_size_samples=args.sae_batch, lr=1e-3,
        lr_end=1e-3, device=str(device), logger=LoggingConfig(log_to_wandb=False),
    )  # fmt: skip
    sae = sae_lens.TrainingSAE.from_dict(cfg.to_dict()).to(device)
    return SAETrainer(trainer_cfg, sae, data_provider=iter(()))


def _step_times(arch, batches, args, device, log) -> dict:
    from gridlens.sae.gated import build_sae
    from gridlens.sae.model import SAEConfig
    from gridlens.sae.train import SAETrainConfig, train_step

    d_in = batches[0].shape[1]
    sae = build_sae(SAEConfig(d_in, args.d_sae, arch, args.site, k=args.k), seed=0).to(device)
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-3)
    cfg = SAETrainConfig(tokens=args.sae_batch * 10**6, batch_size=args.sae_batch)
    fired = torch.zeros(args.d_sae, dtype=torch.long, device=device)
    turn = iter(range(10**9))

    def ours():
        result = train_step(sae, optimizer, batches[next(turn) % len(batches)], cfg)
        fired[result.fired] = 0

    row = {"ours_step_s": median_time(ours, device, args.sae_steps)}
    try:
        trainer = _saelens_trainer(arch, d_in, args, device)

        def theirs():
            trainer.step(batches[next(turn) % len(batches)])
            trainer.n_training_steps += 1

        row["saelens_step_s"] = median_time(theirs, device, args.sae_steps)
    except Exception as error:
        row["saelens_error"] = repr(error)
    theirs_text = (
        f"SAELens {row['saelens_step_s'] * 1e3:.2f} ms "
        f"({row['saelens_step_s'] / row['ours_step_s']:.2f}x ours)"
        if "saelens_step_s" in row
        else "SAELens: " + row["saelens_error"][:80]
    )
    ours_ms = row["ours_step_s"] * 1e3
    log(f"sae step {arch:9} d_sae {args.d_sae}: ours {ours_ms:.2f} ms, {theirs_text}")
    return row


def _ours_end_to_end(model, args, device) -> float:
    from gridlens.sae.model import SAEConfig
    from gridlens.sae.train import SAETrainConfig, train_sae

    d_in = model.cfg.d_model
    sae_cfg = SAEConfig(d_in, args.d_sae, "topk", args.site, k=args.k)
    train_cfg = SAETrainConfig(
        tokens=args.e2e_tokens, batch_size=args.sae_batch, warmup_steps=0, device=str(device),
        progress=False, log_every=10**9, checkpoint_every=10**9,
        buffer_quizzes=max(2, 2 * math.ceil(args.sae_batch / 100)),
    )  # fmt: skip
    sync(device)
    start = time.perf_counter()
    train_sae(model, sae_cfg, train_cfg, progress=False)
    sync(device)
    return args.e2e_tokens / (time.perf_counter() - start)


def _saelens_end_to_end(model, args, device) -> float:
    import datasets
    import sae_lens
    from sae_lens.config import LoggingConfig

    from gridlens.models.transformer_lens import to_tl_input

    hooked = model.to_transformer_lens()
    sync(device)
    start = time.perf_counter()
    quizzes = generate("default", args.e2e_tokens // 100 + 64, seed=5).tokens
    dataset = datasets.Dataset.from_dict({"tokens": to_tl_input(quizzes).tolist()})
    n = model.cfg.n_ctx
    cfg = sae_lens.LanguageModelSAERunnerConfig(
        sae=sae_lens.TopKTrainingSAEConfig(d_in=model.cfg.d_model, d_sae=args.d_sae, k=args.k),
        model_name="gridlens", hook_name=args.site, dataset_path="", is_dataset_tokenized=True,
        streaming=False, context_size=n, seqpos_slice=(n - n // 4 + 1, n), prepend_bos=False,
        training_tokens=args.e2e_tokens, train_batch_size_tokens=args.sae_batch,
        store_batch_size_prompts=64, n_batches_in_buffer=8, lr=1e-3, device=str(device),
        logger=LoggingConfig(log_to_wandb=False), checkpoint_path=None, output_path=None,
        verbose=False, autocast_lm=device.type == "cuda",
    )  # fmt: skip
    sae_lens.LanguageModelSAETrainingRunner(
        cfg, override_dataset=dataset, override_model=hooked
    ).run()
    sync(device)
    return args.e2e_tokens / (time.perf_counter() - start)


def part_sae(args, device, log) -> dict:
    model = GridGPT(get_preset(args.model), seed=0).to(device).eval()
    x = _activations(model, args, device, args.sae_batch * 4).to(device)
    batches = list(x.split(args.sae_batch))
    out: dict = {"d_sae": args.d_sae, "k": args.k, "batch": args.sae_batch, "site": args.site}
    for arch in SAE_ARCHS:
        out[arch] = _step_times(arch, batches, args, device, log)
    out["e2e_ours_tokens_per_s"] = _ours_end_to_end(model, args, device)
    try:
        out["e2e_saelens_tokens_per_s"] = _saelens_end_to_end(model, args, device)
    except Exception as error:
        out["e2e_saelens_error"] = repr(error)
    theirs = out.get("e2e_saelens_tokens_per_s")
    log(
        f"sae end to end topk, {args.e2e_tokens:,} tokens: ours "
        f"{out['e2e_ours_tokens_per_s']:,.0f} tokens/s, SAELens "
        + (f"{theirs:,.0f} tokens/s" if theirs else out["e2e_saelens_error"][:80])
    )
    return out


# ----------------------------------------------------------------------------- store


def part_store(args, device, log) -> dict:
    from gridlens.sae.activations import ActivationStore

    model = GridGPT(get_preset(args.model), seed=0).to(device).eval()
    bf16 = torch.bfloat16 if device.type == "cuda" else None
    store = ActivationStore(
        model, args.site, batch_size=args.sae_batch, device=device, autocast_dtype=bf16,
        buffer_quizzes=max(2, 2 * math.ceil(args.sae_batch / 100)),
    )  # fmt: skip
    next(store)  # the first buffer
    batches = max(1, args.store_rows // args.sae_batch)
    sync(device)
    start = time.perf_counter()
    for _ in range(batches):
        next(store)
    sync(device)
    rows_per_s = batches * args.sae_batch / (time.perf_counter() - start)
    log(f"store {args.site} of {args.model}: {rows_per_s:,.0f} rows/s (bf16: {bf16 is not None})")
    return {"rows_per_s": rows_per_s, "rows": batches * args.sae_batch, "site": args.site}


# ----------------------------------------------------------------------------- main

PARTS = {"train": part_train, "forward": part_forward, "sae": part_sae, "store": part_store}


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for gpu_all.json and gpu_all.log")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (a test)")
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated parts")
    parser.add_argument("--device", default=None, help="default: cuda if there is one")
    parser.add_argument("--original", default=None, help="folder with Fleuret's mygpt.py")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--work", default=None, help="scratch folder (default: a temp folder)")
    for key, value in FULL.items():
        parser.add_argument("--" + key.replace("_", "-"), type=type(value), default=None)
    args = parser.parse_args(argv)
    for key, value in (SMOKE if args.smoke else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    if args.compile is None:
        args.compile = args.device.startswith("cuda")
    return args


def main(argv=None) -> dict:
    args = parse(argv)
    device = torch.device(args.device)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.work is None:
        with tempfile.TemporaryDirectory(prefix="gpu_all_") as work:
            return main([*(argv if argv is not None else sys.argv[1:]), "--work", work])
    log = Log()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = peak_flops(device, torch.bfloat16)
    peak_text = f"{peak:.3g} FLOP/s" if peak else "unknown"
    log(f"gpu_all on {name} (bf16 peak {peak_text}), torch {torch.__version__}")
    results: dict = {"format": "gridlens-gpu-bench", "version": 1, "device": name}
    results["settings"] = {k: v for k, v in vars(args).items() if k not in ("work",)}
    for part in args.parts.split(","):
        start = time.perf_counter()
        try:
            results[part] = PARTS[part](args, device, log)
        except Exception as error:
            results[part] = {"error": repr(error)}
            log(f"{part} failed: {traceback.format_exc(limit=3)}")
        results[part]["seconds"] = time.perf_counter() - start
        log(f"== {part}: {results[part]['seconds']:.0f} s")
        _write(out_dir, results, log)
    return results


def _write(out_dir: Path, results: dict, log: Log) -> None:
    """Both files after every part, so a run killed at its limit still leaves its numbers."""
    data = json.dumps(results, indent=1).encode()
    atomic_write(out_dir / "gpu_all.json", lambda handle: handle.write(data))
    text = ("\n".join(log.lines) + "\n").encode()
    atomic_write(out_dir / "gpu_all.log", lambda handle: handle.write(text))


if __name__ == "__main__":
    main()
