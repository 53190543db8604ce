"""`gridlens train` and `gridlens eval`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from gridlens.errors import CheckpointError, ConfigError
from gridlens.io import OutputPath, atomic_write, save_or_rescue

TRAINING_FILE = "training.json"  # the training config, beside a model's config.json

_MODEL_FIELDS = ("d_model", "n_layers", "n_heads", "d_head", "d_mlp")


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--preset",
    default=None,
    help="Training preset: cpu (default), gpu, gpu-small, 37m or tiny (docs/training.md).",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="A JSON or TOML file of options (overrides the preset).",
)
@click.option(
    "--out",
    type=OutputPath("dir"),
    default=None,
    help="Run directory (checkpoints, log.jsonl, model/, eval.json, curve.png).",
)
@click.option(
    "--resume", is_flag=True, help="Continue the run in --out from its newest checkpoint."
)
@click.option(
    "--resume-from",
    type=click.Path(dir_okay=False),
    default=None,
    help="Continue from this checkpoint file (e.g. an older one).",
)
@click.option(
    "--population",
    type=int,
    default=None,
    help="Train K models with seeds seed..seed+K-1 into OUT/model_{k}/.",
)
@click.option("--tasks", default=None, help="Comma-separated tasks, 'default' (the 8) or 'all'.")
@click.option("--structures", default=None, help="Comma-separated structures or 'mix' (all five).")
@click.option("--noise", type=float, default=None, help="Prompt noise probability (0.05).")
@click.option("--steps", type=int, default=None)
@click.option("--batch-size", type=int, default=None)
@click.option("--lr", type=float, default=None)
@click.option("--warmup-steps", type=int, default=None)
@click.option("--weight-decay", type=float, default=None)
@click.option("--grad-clip", type=float, default=None)
@click.option("--seed", type=int, default=None)
@click.option("--test-seed", type=int, default=None, help="Seed of the held-out test pool.")
@click.option("--d-model", type=int, default=None)
@click.option("--n-layers", type=int, default=None)
@click.option("--n-heads", type=int, default=None)
@click.option("--d-head", type=int, default=None)
@click.option("--d-mlp", type=int, default=None)
@click.option("--device", default=None, help="auto (default), cpu, cuda, cuda:1 ...")
@click.option(
    "--dtype",
    default=None,
    type=click.Choice(["auto", "float32", "bfloat16"]),
    help="Autocast dtype; auto = bf16 on CUDA, fp32 on CPU.",
)
@click.option("--threads", type=int, default=None, help="CPU threads (0: torch's default).")
@click.option(
    "--compile/--no-compile",
    "compile",
    default=None,
    help="torch.compile the training step (the gpu presets do).",
)
@click.option(
    "--init-from",
    default=None,
    help="Start from this model's weights (a folder, a file or 'default'): continued training.",
)
@click.option(
    "--data-workers",
    type=int,
    default=None,
    help="Processes generating batches ahead (0: auto, on CUDA only).",
)
@click.option(
    "--time-budget",
    type=float,
    default=None,
    help="Seconds of training: --steps is then chosen from the step time measured in the "
    "warm-up (0: off).",
)
@click.option("--eval-every", type=int, default=None)
@click.option(
    "--eval-n", type=int, default=None, help="Quizzes per task and structure, periodic eval."
)
@click.option("--final-eval-n", type=int, default=None)
@click.option("--checkpoint-every", type=int, default=None)
@click.option("--keep-checkpoints", type=int, default=None)
@click.option("--log-every", type=int, default=None)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.pass_context
def train(
    ctx: click.Context,
    preset,
    config_file,
    out,
    resume,
    resume_from,
    population,
    no_progress,
    **options: Any,
) -> None:
    """Train a GridGPT (or a population) on quizzes from the world generator.

    \b
      gridlens train --preset cpu --out runs/cpu          # ~1 h on 2 CPU cores
      gridlens train --out runs/cpu --resume               # continue after an interruption
      gridlens train --preset gpu --out runs/gpu           # GPU, bf16, compiled, ~9 min
      gridlens train --preset 37m --out runs/37m           # GPU, bf16
      torchrun --nproc-per-node 2 $(which gridlens) train --preset 37m --out runs/ddp
      gridlens train plot runs/cpu                         # curve.png from log.jsonl
    """
    if ctx.invoked_subcommand is not None:
        return
    from gridlens.training.config import TrainConfig
    from gridlens.training.trainer import resume_config

    if out is None:
        raise click.UsageError("--out DIR is required (the run directory)")
    overrides = {k: v for k, v in options.items() if v is not None}
    if no_progress:
        overrides["progress"] = False
    resuming = bool(resume or resume_from)
    if not resuming:
        _check_fresh_out(Path(out))
    if resuming and population is None and preset is None and config_file is None:
        if resume_from:  # the configuration of the checkpoint named, not of --out
            from gridlens.training.checkpoint import load_checkpoint

            base = load_checkpoint(resume_from)["config"]
        else:
            base = resume_config(out).to_dict()
        cfg = TrainConfig.from_dict({**base, **overrides}, "options")
    else:
        cfg = TrainConfig.build(
            preset=preset or ("cpu" if config_file is None else None),
            file=config_file,
            overrides=overrides,
        )
    _check_feasible(cfg)
    if population is not None:
        from gridlens.training.population import train_population

        if resume_from:
            raise click.UsageError("--resume-from names one run; use --resume with --population")
        train_population(cfg, out, population, resume=resuming, echo=click.echo)
        return
    from gridlens.training.trainer import train as run_training

    summary = run_training(cfg, out, resume=resume_from or resume, echo=click.echo)
    if summary.get("finished") and summary.get("main", True):
        _finish_model_dir(Path(out), summary["cfg"], run_record(summary))
        click.echo(f"done: {out}/model (load with gridlens.models.load), curve {out}/curve.png")


def run_record(summary: dict[str, Any]) -> dict[str, Any]:
    """How a model was made: the command, the machine, the time and the tokens."""
    import platform
    import shlex

    import torch

    device = summary["model"].device
    record = {
        "command": shlex.join(["gridlens", *sys.argv[1:]]),
        "machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs)",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "train_seconds": round(summary["train_seconds"], 1),
        "tokens": summary["tokens"],
        "steps": summary["step"],
    }
    if device.type == "cuda":
        record["gpu_minutes"] = round(summary["train_seconds"] / 60, 2)
    return record


def _finish_model_dir(out: Path, cfg, run: dict[str, Any] | None = None) -> None:
    """Put the training config (with `extra.run`: how the model was made) and the final
    evaluation beside the weights, so the model directory alone is what `gridlens eval` and
    the shipped default model need."""
    model_dir = out / "model"
    if not model_dir.is_dir():
        return
    if run is not None:
        cfg = cfg.replace(extra={**cfg.extra, "run": run})
    (model_dir / TRAINING_FILE).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    for name in ("eval.json", "curve.png"):
        if (out / name).is_file():
            (model_dir / name).write_bytes((out / name).read_bytes())


@train.command("plot")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option(
    "--png",
    type=OutputPath("file"),
    default=None,
    help="Output PNG (default RUN_DIR/curve.png).",
)
def plot(run_dir: str, png: str | None) -> None:
    """Draw the training curve of RUN_DIR from its log.jsonl."""
    from gridlens.training.plots import plot_curve

    target = png or str(Path(run_dir) / "curve.png")
    plot_curve(Path(run_dir) / "log.jsonl", target)
    click.echo(target)


#: Quizzes a run may draw; far beyond any run (the 37M models saw about 10^8).
MAX_QUIZZES = 10**12


def _check_feasible(cfg) -> None:
    """Refuse a run whose batch cannot fit in memory or that would never end."""
    from gridlens.resources import check_fits

    m = cfg.model_config()
    per_quiz = m.n_ctx * m.n_layers * (12 * m.d_model + 2 * m.d_mlp) * 4  # activations kept
    check_fits(cfg.batch_size * per_quiz, f"a training batch of {cfg.batch_size} quizzes")
    if cfg.steps * cfg.batch_size > MAX_QUIZZES:
        raise ConfigError(
            f"{cfg.steps} steps of {cfg.batch_size} quizzes would draw "
            f"{cfg.steps * cfg.batch_size:.3g} quizzes, more than {MAX_QUIZZES:.0e}: it would "
            "never finish; ask for fewer steps"
        )


def _check_fresh_out(out: Path) -> None:
    """Refuse to start a run in a folder that holds files other than a run's: the run would
    overwrite them (a folder holding a run is refused later, with a hint to --resume)."""
    from gridlens.training.checkpoint import checkpoint_dir
    from gridlens.training.config import TrainConfig
    from gridlens.training.trainer import CONFIG_FILE, LOG_FILE

    if not out.is_dir() or checkpoint_dir(out).is_dir() or (out / "model").exists():
        return
    others = sorted(p.name for p in out.iterdir() if p.name not in (CONFIG_FILE, LOG_FILE))
    config = out / CONFIG_FILE
    if config.is_file() and not others:
        try:
            TrainConfig.from_dict(json.loads(config.read_text()), str(config))
            return  # what a run killed before its first checkpoint leaves
        except (ValueError, TypeError, AttributeError, ConfigError):
            others = [CONFIG_FILE]
    if others:
        raise ConfigError(
            f"{out}: not empty and not a training run (holds {', '.join(others[:5])}); "
            "choose a new or empty --out"
        )


# ---------------------------------------------------------------------------- eval


def resolve_model(spec: str, device: str = "cpu"):
    """(model, training config dict or None, path) for `default`, a run directory, a model
    directory/file in any format gridlens.models.load reads, or a training checkpoint (.pt)."""
    from gridlens.integrity import load_pickle
    from gridlens.models import GridGPT, load
    from gridlens.models.checkpoints import resolve_default
    from gridlens.training.checkpoint import check_checkpoint, is_checkpoint
    from gridlens.training.config import TrainConfig

    if spec == "default":
        path = Path(resolve_default(spec))
    else:
        path = Path(spec)
        if (
            path.is_dir()
            and (path / "model").is_dir()
            and not (path / "model.safetensors").exists()
        ):
            path = path / "model"  # a run directory
    training = None
    if path.is_file() and path.suffix == ".pt":
        head = load_pickle(path, "checkpoint")
        if is_checkpoint(head):
            check_checkpoint(head, path)
            cfg = TrainConfig.from_dict(head["config"], str(path))
            model = GridGPT(cfg.model_config(), seed=0)
            try:
                model.load_state_dict(head["model"])
            except (RuntimeError, KeyError, TypeError) as error:
                raise CheckpointError(f"{path}: weights do not fit its config ({error})") from None
            return model.to(device).eval(), cfg.to_dict(), path
    model = load(path, device=device).eval()
    for candidate in (
        path / TRAINING_FILE if path.is_dir() else path.parent / TRAINING_FILE,
        path.parent / "config.json" if path.is_dir() else None,
    ):
        if candidate is not None and candidate.is_file():
            try:
                data = json.loads(candidate.read_text())
                training = TrainConfig.from_dict(data, str(candidate)).to_dict()
                break
            except (json.JSONDecodeError, ConfigError):
                continue
    return model, training, path


@click.command("eval", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model_spec", metavar="MODEL")
@click.option(
    "--json",
    "json_path",
    type=OutputPath("file"),
    default=None,
    help="Write the metrics as JSON here.",
)
@click.option(
    "--out",
    type=OutputPath("dir"),
    default=None,
    help="Write eval.json, bars.png and failures.png into this directory.",
)
@click.option("--bars", type=OutputPath("file"), default=None, help="Bar chart PNG.")
@click.option("--gallery", type=OutputPath("file"), default=None, help="Failure gallery PNG.")
@click.option(
    "--tasks", default=None, help="Tasks (default: those the model was trained on, else the 8)."
)
@click.option(
    "--structures", default="forward,inverse,backward,backward_inverse", show_default=True
)
@click.option(
    "-n",
    "--n",
    "n",
    type=int,
    default=100,
    show_default=True,
    help="Test quizzes per task and structure.",
)
@click.option(
    "--seed",
    type=int,
    default=None,
    help="Test-set seed (default: the model's training test seed, else 0).",
)
@click.option(
    "--test-pool",
    type=int,
    default=None,
    help="Test pool size per task (default: the training run's, else 2000).",
)
@click.option("--sample-seed", type=int, default=0, show_default=True)
@click.option("--no-sampled", is_flag=True, help="Skip the temperature-1 sampled accuracy.")
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--threads", type=int, default=0)
def eval_command(
    model_spec,
    json_path,
    out,
    bars,
    gallery,
    tasks,
    structures,
    n,
    seed,
    test_pool,
    sample_seed,
    no_sampled,
    batch_size,
    device,
    threads,
) -> None:
    """Accuracy of MODEL per task and structure on a held-out test set.

    MODEL: `default` (the shipped model), a run directory, a model directory or file
    (our format, or an original gpt_NNN.pth), or a training checkpoint (.pt).
    """
    import torch
    from tqdm import tqdm

    from gridlens.training.data import TestSet
    from gridlens.training.evaluate import evaluate
    from gridlens.training.trainer import resolve_device
    from gridlens.world.tasks import resolve_tasks

    if n < 1 or batch_size < 1:
        raise click.UsageError("--n and --batch-size must be >= 1")
    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    names_s = tuple(s.strip() for s in structures.split(",") if s.strip())
    from gridlens.world.structures import get_structure

    for s in names_s:
        get_structure(s)
    model, training, path = resolve_model(model_spec, str(dev))
    task_names = (
        resolve_tasks(tasks)
        if tasks
        else tuple(training["tasks"] if training else resolve_tasks("default"))
    )
    test_seed = seed if seed is not None else (training["test_seed"] if training else 0)
    pool = test_pool or (training["test_pool"] if training else 2000)
    enlarged = n * len(names_s) > pool
    if enlarged:  # one slice per structure; a larger pool than training's is not disjoint
        pool = n * 5
    test_set = TestSet.build(task_names, pool, test_seed)  # a size that cannot fit fails here
    if enlarged:
        click.echo(
            f"warning: test pool enlarged to {pool} per task; only the training pool size "
            "is guaranteed disjoint from the training data",
            err=True,
        )
    if training and (test_seed != training["test_seed"] or pool != training["test_pool"]):
        click.echo(
            "note: this test set is not the one excluded from training "
            f"(training used seed {training['test_seed']}, pool {training['test_pool']})",
            err=True,
        )
    amp = torch.bfloat16 if dev.type == "cuda" else None
    total = n * len(names_s) * len(task_names)
    with tqdm(total=total, desc="eval", unit="quiz", dynamic_ncols=True, leave=False) as bar:
        result = evaluate(
            model,
            test_set,
            task_names,
            names_s,
            n=n,
            batch_size=batch_size,
            sampled=not no_sampled,
            sample_seed=sample_seed,
            max_failures=200,
            autocast_dtype=amp,
            progress=bar.update,
        )
    payload = {
        **result.to_json(),
        "model": str(path),
        "test_pool": pool,
        "sample_seed": sample_seed,
        "structures_evaluated": list(names_s),
    }
    click.echo(result.table())
    if out:
        out_dir = Path(out)
        json_path = json_path or str(out_dir / "eval.json")
        bars = bars or str(out_dir / "bars.png")
        gallery = gallery or str(out_dir / "failures.png")
    title = f"{model_spec}: {n} quizzes per task and structure"
    save_or_rescue(
        lambda place: _write_eval(place, payload, result, json_path, bars, gallery, title),
        "evaluation results",
    )


def _write_eval(place, payload, result, json_path, bars, gallery, title) -> None:
    """Write the requested eval outputs, each at place(its path)."""
    from gridlens.training.evaluate import bar_chart, failure_gallery

    if json_path:
        text = (json.dumps(payload, indent=2) + "\n").encode()
        atomic_write(place(json_path), lambda h: h.write(text))
        click.echo(f"wrote {place(json_path)}")
    if bars:
        bar_chart(result, place(bars), title=title)
        click.echo(f"wrote {place(bars)}")
    if gallery:
        drawn = failure_gallery(result.failures, place(gallery))
        click.echo(f"wrote {place(gallery)} ({drawn} failures)" if drawn else "no failures to draw")
