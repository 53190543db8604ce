"""`gridlens sae train` and `gridlens sae eval`.

Presets hold recipes measured on real runs; options given on the command line override them.
`default` is the CPU recipe for the shipped default model (see training.json of
gridlens/data/default_sae for the run it came from).
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import click

from gridlens.errors import ConfigError, unknown_name
from gridlens.io import OutputPath
from gridlens.progress import Stages
from gridlens.sae.architectures import ARCHITECTURES
from gridlens.sae.crosscoder_commands import crosscoder
from gridlens.sae.feature_commands import COMMANDS
from gridlens.sae.study_commands import COMMANDS as STUDY_COMMANDS
from gridlens.sae.transcoder_commands import transcoder

#: name -> (SAEConfig fields, SAETrainConfig fields)
PRESETS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "default": (
        {"hook_name": "blocks.3.hook_mlp_out", "architecture": "topk", "d_sae": 256, "k": 32},
        {"tokens": 1_000_000, "batch_size": 4096, "lr": 1e-3, "dead_after_tokens": 50_000},
    ),
    "tiny": (  # a smoke test: seconds on a CPU
        {"hook_name": "blocks.3.hook_mlp_out", "architecture": "topk", "d_sae": 256, "k": 16},
        {"tokens": 40_960, "batch_size": 1024, "buffer_quizzes": 32, "warmup_steps": 5},
    ),
}


def _build_configs(preset: str, base: tuple[dict, dict] | None, sae_opts: dict, train_opts: dict):
    from gridlens.sae.model import SAEConfig
    from gridlens.sae.train import SAETrainConfig

    if base is None:
        if preset not in PRESETS:
            raise unknown_name("SAE preset", preset, PRESETS)
        base = PRESETS[preset]
    sae_fields = {**base[0], **{k: v for k, v in sae_opts.items() if v is not None}}
    train_fields = {**base[1], **{k: v for k, v in train_opts.items() if v is not None}}
    return sae_fields, SAETrainConfig.from_dict(train_fields), SAEConfig


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def sae() -> None:
    """Sparse autoencoders on a model's activations: train, evaluate, read features, steer."""


@sae.command("train")
@click.option(
    "--preset",
    default="default",
    show_default=True,
    help=f"Recipe to start from ({', '.join(PRESETS)}); the options below override it.",
)
@click.option("--model", "model_path", default="default", show_default=True, help="Model.")
@click.option("--site", default=None, help="Hook name, e.g. blocks.3.hook_mlp_out.")
@click.option("--arch", default=None, type=click.Choice(list(ARCHITECTURES)))
@click.option("--d-sae", type=int, default=None, help="Number of latents.")
@click.option("--expansion", type=int, default=None, help="Latents = expansion x d_in.")
@click.option("--k", type=int, default=None, help="Active latents per row (topk, batchtopk).")
@click.option("--l1", type=float, default=None, help="L1 coefficient (relu).")
@click.option("--l0", type=float, default=None, help="L0 coefficient (jumprelu).")
@click.option(
    "--ghost-grads",
    default=None,
    type=click.Choice(["off", "original", "improved"]),
    help="Ghost grads for dead latents (any architecture; replaces AuxK for topk/batchtopk).",
)
@click.option("--tokens", type=int, default=None, help="Activation rows to train on.")
@click.option("--batch-size", type=int, default=None)
@click.option("--lr", type=float, default=None)
@click.option(
    "--positions",
    default=None,
    type=click.Choice(["grid", "all", "no_markers"]),
    help="Positions of each quiz to train on (grid: the predicted grid's 100 cells).",
)
@click.option("--tasks", default=None, help="Comma-separated tasks, 'default' or 'all'.")
@click.option("--buffer-quizzes", type=int, default=None, help="Quizzes in the shuffle buffer.")
@click.option(
    "--out",
    type=OutputPath("dir"),
    required=True,
    help="Output directory (the SAE, training.json, log.jsonl, checkpoints/).",
)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its checkpoint.")
@click.option("--device", default=None, help="auto (default), cpu, cuda ...")
@click.option(
    "--dtype",
    default=None,
    type=click.Choice(["auto", "float32", "bfloat16"]),
    help="Autocast of the model forward; auto = bf16 on CUDA, fp32 on CPU.",
)
@click.option("--threads", type=int, default=None, help="CPU threads for torch.")
@click.option("--seed", type=int, default=None)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option(
    "--cache",
    default=None,
    help="Train on the activations of this cache (`gridlens sae cache`) instead of the model.",
)
def train_command(
    preset, model_path, site, arch, d_sae, expansion, k, l1, l0, ghost_grads, tokens, batch_size,
    lr, positions, tasks, buffer_quizzes, out, resume, device, dtype, threads, seed, no_progress,
    cache,
):  # fmt: skip
    """Train an SAE on activations of freshly generated quizzes streamed through the model (or
    read from a cache). Under `torchrun --nproc-per-node N` the processes train it together."""
    import torch

    from gridlens.models.checkpoints import load
    from gridlens.sae.activations import site_width
    from gridlens.sae.cache import ActivationCache
    from gridlens.sae.train import train_sae
    from gridlens.training import checkpoint as ckpt
    from gridlens.training import distributed as dd

    if threads:
        torch.set_num_threads(threads)
    if d_sae is not None and expansion is not None:
        raise ConfigError("give --d-sae or --expansion, not both")
    base = None
    if resume:
        latest = ckpt.latest_checkpoint(out)
        if latest is None:
            raise ConfigError(
                f"{out}: --resume given but no checkpoint in {Path(out) / 'checkpoints'}"
            )
        saved = ckpt.load_checkpoint(latest)["config"]
        base = (saved["sae"], saved["train"])
    sae_opts = {"hook_name": site, "architecture": arch, "d_sae": d_sae, "k": k}
    train_opts = {
        "l1_coefficient": l1,
        "l0_coefficient": l0,
        "ghost_grads": ghost_grads,
        "tokens": tokens,
        "batch_size": batch_size,
        "lr": lr,
        "positions": positions,
        "tasks": tasks,
        "buffer_quizzes": buffer_quizzes,
        "device": device,
        "dtype": dtype,
        "seed": seed,
        "progress": False if no_progress else None,
    }
    if cache is not None:
        train_opts["cache"] = str(Path(cache).resolve())
        if site is None and base is None:
            sae_opts["hook_name"] = ActivationCache(cache).hook_name
    sae_fields, train_cfg, sae_config_cls = _build_configs(preset, base, sae_opts, train_opts)
    if train_cfg.cache is not None:
        model, width = None, ActivationCache(train_cfg.cache).d_in
    else:
        model = load(model_path)
        width = site_width(model, sae_fields["hook_name"])
    sae_fields["d_in"] = width
    if expansion is not None:
        sae_fields["d_sae"] = expansion * width
    command = shlex.join(["gridlens", *sys.argv[1:]]) if sys.argv else "gridlens sae train"
    train_cfg = train_cfg.replace(
        extra={**train_cfg.extra, "model": str(model_path), "command": command}
    )
    sae_cfg = sae_config_cls.from_dict(sae_fields)
    start = time.perf_counter()
    try:
        train_sae(model, sae_cfg, train_cfg, out, resume=resume)
    finally:
        dd.cleanup()  # leave the torchrun process group (a no-op in one process)
    if not dd.env_world().main:
        return
    summary = json.loads((Path(out) / "training.json").read_text())
    final = {"explained_variance": float("nan"), "l0": float("nan"), "dead": float("nan")}
    final.update(summary.get("final", {}))
    click.echo(
        f"{sae_cfg.architecture} SAE at {sae_cfg.hook_name}: {sae_cfg.d_sae} latents, "
        f"{summary['tokens']:,} tokens in {time.perf_counter() - start:.0f} s "
        f"({summary['tokens_per_s']:,.0f} tokens/s); last steps: explained variance "
        f"{final['explained_variance']:.3f}, L0 {final['l0']:.1f}, dead {100 * final['dead']:.1f}%"
    )
    click.echo(f"wrote {out} (evaluate it with: gridlens sae eval --sae {out})")


@sae.command("cache")
@click.option("--preset", default="default", show_default=True, help="Recipe for the defaults.")
@click.option("--model", "model_path", default="default", show_default=True, help="Model.")
@click.option("--site", default=None, help="Hook name (default: the preset's).")
@click.option("--rows", type=int, required=True, help="Activation rows to cache.")
@click.option("--positions", default=None, type=click.Choice(["grid", "all", "no_markers"]))
@click.option("--tasks", default=None, help="Comma-separated tasks, 'default' or 'all'.")
@click.option("--batch-size", type=int, default=None, help="Rows per store batch (as in train).")
@click.option("--buffer-quizzes", type=int, default=None, help="Quizzes in the shuffle buffer.")
@click.option("--seed", type=int, default=None)
@click.option("--shard-rows", type=int, default=None, help="Rows per shard (default: 64 MB).")
@click.option("--out", type=OutputPath("dir"), required=True, help="The cache directory.")
@click.option("--device", default=None, help="auto (default), cpu, cuda ...")
@click.option("--dtype", default=None, type=click.Choice(["auto", "float32", "bfloat16"]))
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def cache_command(
    preset, model_path, site, rows, positions, tasks, batch_size, buffer_quizzes, seed,
    shard_rows, out, device, dtype, no_progress,
):  # fmt: skip
    """Run the model once and cache a site's activations as checksummed safetensors shards, in
    the order `sae train` would stream them (same seed, batch size and buffer): SAE runs with
    --cache then replay them without the model."""
    from gridlens.models.checkpoints import load
    from gridlens.sae.activations import site_width
    from gridlens.sae.cache import write_cache
    from gridlens.sae.train import make_store
    from gridlens.training.trainer import resolve_device

    if rows < 1 or (shard_rows is not None and shard_rows < 1):
        raise ConfigError(f"--rows and --shard-rows must be >= 1, got {rows}, {shard_rows}")
    options = {"positions": positions, "tasks": tasks, "batch_size": batch_size, "seed": seed}
    options.update(buffer_quizzes=buffer_quizzes, device=device, dtype=dtype)
    sae_fields, train_cfg, sae_config_cls = _build_configs(
        preset, None, {"hook_name": site}, options
    )
    device = resolve_device(train_cfg.device)
    model = load(model_path).to(device)
    sae_fields["d_in"] = site_width(model, sae_fields["hook_name"])
    store = make_store(model, sae_config_cls.from_dict(sae_fields), train_cfg, device)
    meta = {"hook_name": sae_fields["hook_name"], "model": str(model_path)}
    meta.update({k: train_cfg.to_dict()[k] for k in ("positions", "tasks", "structure", "noise")})
    meta.update(seed=train_cfg.seed, batch_size=train_cfg.batch_size)
    meta.update(buffer_quizzes=train_cfg.buffer_quizzes)
    write_cache(store, out, rows, meta, shard_rows, progress=not no_progress)
    click.echo(f"wrote {rows:,} rows of {meta['hook_name']} to {out}")


@sae.command("eval")
@click.option("--model", "model_path", default="default", show_default=True, help="Model.")
@click.option("--sae", "sae_path", default="default", show_default=True, help="SAE directory.")
@click.option("--tasks", default="default", show_default=True, help="Tasks of the quiz set.")
@click.option("-n", "--n-per-task", type=int, default=32, show_default=True)
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of the quiz set.")
@click.option(
    "--positions",
    default="grid",
    show_default=True,
    type=click.Choice(["grid", "all", "no_markers"]),
)
@click.option("--greedy/--no-greedy", default=True, show_default=True, help="Greedy accuracy.")
@click.option(
    "--out",
    type=OutputPath("dir"),
    default=None,
    help="Write sae_eval.json and sae_eval.png here.",
)
@click.option("--device", default="auto", show_default=True, help="auto (cuda if any), cpu, cuda:1")
@click.option(
    "--encoder",
    default="learned",
    show_default=True,
    help="Comma-separated encoders on the SAE's dictionary: learned, mp (matching pursuit), gp "
    "(gradient pursuit); more than one, or a pursuit, compares them at equal L0.",
)
@click.option("--l0", type=int, default=None, help="Pursuit L0 (default: the learned one's).")
@click.option("--k-sweep", default=None, help="TopK: comma-separated test-time k, e.g. 8,16,32.")
def eval_command(
    model_path, sae_path, tasks, n_per_task, seed, positions, greedy, out, device, encoder, l0,
    k_sweep,
):  # fmt: skip
    """Explained variance, L0, dead latents and loss recovered of an SAE, per task."""
    from gridlens.analysis.core import quiz_set
    from gridlens.io import atomic_write
    from gridlens.models.checkpoints import load
    from gridlens.sae.io import load_sae
    from gridlens.sae.metrics import evaluate_sae
    from gridlens.sae.pursuit import ENCODERS
    from gridlens.training.trainer import resolve_device

    encoders = tuple(e.strip() for e in encoder.split(",") if e.strip())
    for name in encoders:
        if name not in ENCODERS:
            raise unknown_name("encoder", name, ENCODERS)
    stage = Stages("sae eval", 2)
    with stage("loading the model and SAE"):
        model = load(model_path, device=resolve_device(device))
        sae_model = load_sae(sae_path, device=model.device)
        quizzes = quiz_set(tasks, n_per_task=n_per_task, seed=seed)
    with stage("evaluation"):
        if k_sweep is not None:
            _k_sweep(model, sae_model, quizzes, k_sweep, positions, out)
            return
        if encoders != ("learned",):
            _compare_encoders(model, sae_model, quizzes, encoders, l0, positions, greedy, out)
            return
        result = evaluate_sae(model, sae_model, quizzes, positions, greedy=greedy)
    for line in result.findings():
        click.echo(line)
    if out is not None:
        folder = Path(out)
        payload = {**result.to_json(), "sae": str(sae_path), "model": str(model_path)}
        text = (json.dumps(payload, indent=2) + "\n").encode()
        atomic_write(folder / "sae_eval.json", lambda h: h.write(text))
        png = folder / "sae_eval.png"
        result.plot(png)
        click.echo(f"wrote {folder / 'sae_eval.json'} and {png}")
    else:
        click.echo(json.dumps(result.to_json(), indent=2))


def _k_sweep(model, sae_model, quizzes, k_sweep, positions, out) -> None:
    from gridlens.io import atomic_write
    from gridlens.sae.encoders import topk_sweep

    if sae_model.cfg.architecture != "topk":
        raise ConfigError(f"--k-sweep needs a topk SAE, got {sae_model.cfg.architecture}")
    ks = tuple(int(k) for k in k_sweep.split(","))
    result = topk_sweep(model, sae_model, quizzes, ks, positions)
    for k, v in result.items():
        click.echo(
            f"k {k:4d}: L0 {v['l0']:6.1f}  explained variance {v['explained_variance']:.3f}  "
            f"loss recovered {v['loss_recovered']:.3f}"
        )
    if out is not None:
        payload = {"format": "gridlens.sae_k_sweep", "version": 1, "sweep": result}
        text = (json.dumps(payload, indent=2) + "\n").encode()
        atomic_write(Path(out) / "sae_k_sweep.json", lambda h: h.write(text))


def _compare_encoders(model, sae_model, quizzes, encoders, l0, positions, greedy, out) -> None:
    from gridlens.io import atomic_write
    from gridlens.sae.encoders import compare_encoders

    result = compare_encoders(model, sae_model, quizzes, encoders, l0, positions, greedy)
    for line in result.findings():
        click.echo(line)
    if out is None:
        return
    text = (json.dumps(result.to_json(), indent=2) + "\n").encode()
    atomic_write(Path(out) / "sae_encoders.json", lambda h: h.write(text))
    figures = result.plot(out)
    click.echo(f"wrote {Path(out) / 'sae_encoders.json'} and {len(figures)} PNGs in {out}")


for _command in [*COMMANDS, *STUDY_COMMANDS, crosscoder]:
    sae.add_command(_command)
sae.add_command(transcoder)
