"""Training one GridGPT on quizzes streamed from the world generator.

Teacher-forced cross-entropy over the whole sequence (as the original), AdamW with a linear
warm-up and a cosine decay, gradient clipping, bf16 autocast on CUDA. A run directory holds:

    config.json        the training config
    log.jsonl          one JSON object per line: {"step", "loss", "lr", "tokens_per_s", ...}
                       and {"step", "eval": {...}} for periodic evaluations
    checkpoints/       step_NNNNNNNN.pt, the last K (see checkpoint.py)
    model/             the final weights in our format (gridlens.models.save)
    eval.json          the final evaluation (the same format as `gridlens eval --json`)
    curve.png          the training curve (loss and evaluation accuracy per step)

`train(cfg, out, resume=True)` continues from the newest checkpoint and ends with the same
weights as an uninterrupted run: batch k is a function of (seed, k, rank), the learning rate a
function of k, and the optimiser state and RNG states are restored.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from gridlens.errors import CheckpointError, ConfigError
from gridlens.training import checkpoint as ckpt
from gridlens.training import distributed as dd
from gridlens.training.config import TrainConfig
from gridlens.training.data import QuizStream, TestSet

CONFIG_FILE = "config.json"
LOG_FILE = "log.jsonl"


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ConfigError(f"device {name!r}: {error}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} asked for but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The autocast dtype: bf16 by default on CUDA, fp32 (no autocast) on CPU."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up over warmup_steps, then cosine from lr to min_lr_ratio * lr at the end."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.min_lr_ratio
    return cfg.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices only (not on biases, LayerNorms or the embedding)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and not name.startswith("embed") else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    kwargs: dict[str, Any] = {"lr": cfg.lr, "betas": (cfg.beta1, cfg.beta2)}
    return torch.optim.AdamW(groups, **kwargs)


def sequence_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Teacher-forced cross-entropy over every position (logits at p predict token p)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tokens.reshape(-1))


class _Log:
    """Append-only JSON lines (rank 0)."""

    def __init__(self, path: Path | None):
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")


def _trim_log(path: Path, step: int) -> None:
    """Keep the log records up to `step` (the records of a killed run past its last checkpoint
    would otherwise appear twice after resuming); a fresh run starts an empty log."""
    if not path.is_file():
        return
    kept = [json.dumps(r) for r in read_log(path) if step and r.get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in kept))


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The records of a log.jsonl (a truncated last line, from a crash, is skipped)."""
    out = []
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no training log here")
    for line in p.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            out.append(json.loads(line))
    return out


def _prepare_run_dir(
    cfg: TrainConfig, out: Path, resume: bool | str | Path | None, world: dd.Dist
) -> dict[str, Any] | None:
    """Check the run directory against `resume`; return the checkpoint state to resume from."""
    existing = ckpt.list_checkpoints(out)
    if resume:
        path = Path(resume) if isinstance(resume, str | Path) else ckpt.latest_checkpoint(out)
        if path is None:
            raise CheckpointError(
                f"{out}: --resume given but no checkpoint found in {out / 'checkpoints'}"
            )
        state = ckpt.load_checkpoint(path)
        saved = TrainConfig.from_dict(state["config"], f"{path} (config)")
        diffs = saved.differences(cfg)
        if diffs:
            raise ConfigError(
                f"{path}: cannot resume, the configuration differs from the checkpoint's: "
                + "; ".join(diffs)
            )
        return state
    if existing or (out / "model").exists():
        raise ConfigError(
            f"{out}: already holds a training run; pass --resume to continue it "
            "or choose another --out"
        )
    return None


def train(
    cfg: TrainConfig,
    out: str | Path,
    resume: bool | str | Path | None = None,
    stop_after: int | None = None,
    echo=print,
) -> dict[str, Any]:
    """Train (or resume) a run into `out`. Returns a summary dict (step, finished, the trained
    `model` of this process, and the final evaluation under "eval" when there is one).

    stop_after: stop once this step count is reached, after checkpointing (as if killed
    there); used by tests and for chunked runs. Everything else comes from `cfg`.
    """
    out = Path(out)
    world = dd.env_world()
    device = resolve_device(cfg.device, world.local_rank)
    world = dd.setup(device)
    try:
        return _train(cfg, out, resume, stop_after, echo, world, device)
    finally:
        dd.cleanup()


def _train(cfg, out, resume, stop_after, echo, world: dd.Dist, device) -> dict[str, Any]:
    from gridlens.models import GridGPT, save

    if cfg.batch_size % world.world_size:
        raise ConfigError(
            f"batch_size {cfg.batch_size} must be divisible by the number of processes "
            f"({world.world_size})"
        )
    if cfg.threads and device.type == "cpu":
        torch.set_num_threads(cfg.threads)
    amp_dtype = resolve_dtype(cfg.dtype, device)
    main = world.main
    state = _prepare_run_dir(cfg, out, resume, world)
    dd.barrier(world)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        _trim_log(out / LOG_FILE, int(state["step"]) if state is not None else 0)
    log = _Log(out / LOG_FILE if main else None)

    test_set = TestSet.build(cfg.tasks, cfg.test_pool, cfg.test_seed, cfg.height, cfg.width)
    stream = QuizStream(
        cfg.tasks,
        cfg.structures,
        cfg.noise,
        cfg.batch_size // world.world_size,
        cfg.seed,
        world.rank,
        test_set.hashes(),
        cfg.height,
        cfg.width,
    )
    model = GridGPT(cfg.model_config(), seed=cfg.seed).to(device)
    optimizer = make_optimizer(model, cfg)
    start = 0
    if state is not None:
        ckpt.restore(model, optimizer, state, "model/optimiser")
        start = int(state["step"])
        if "rng" in state:
            ckpt.set_rng_state(state["rng"])
        if main:
            echo(f"resuming {out} at step {start}")
            if int(state.get("world_size", 1)) != world.world_size:
                echo(
                    f"warning: the checkpoint was written by {state.get('world_size')} "
                    f"process(es), this run has {world.world_size}: the data stream from here "
                    "differs from an uninterrupted run's"
                )
    model.train()
    net = model
    if world.enabled:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    def save_state(step: int) -> None:
        if main:
            ckpt.save_checkpoint(
                {
                    "config": cfg.to_dict(),
                    "step": step,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": {"step": step, "lr": lr_at(cfg, step)},
                    "rng": ckpt.rng_state(),
                    "world_size": world.world_size,
                },
                out,
                step,
                cfg.keep_checkpoints,
            )
        dd.barrier(world)

    def periodic_eval(step: int) -> None:
        from gridlens.training.evaluate import evaluate

        if main:
            result = evaluate(
                model,
                test_set,
                cfg.tasks,
                n=cfg.eval_n,
                sampled=False,
                autocast_dtype=amp_dtype if device.type == "cuda" else None,
            )
            record = {
                "step": step,
                "eval": {t: m["accuracy_greedy"] for t, m in result.tasks.items()},
                "eval_cell": {t: m["cell_accuracy"] for t, m in result.tasks.items()},
                "eval_loss": result.overall["loss"],
                "eval_accuracy": result.overall["accuracy_greedy"],
            }
            log.write(record)
            if bar is not None:
                bar.write(
                    f"step {step}: test accuracy {100 * record['eval_accuracy']:.1f}% "
                    f"(greedy, {cfg.eval_n} per task and structure)"
                )
        dd.barrier(world)

    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    bar = None
    if main and cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc="train", dynamic_ncols=True, unit="step")
    autocast = (
        torch.autocast(device.type, dtype=amp_dtype)
        if amp_dtype != torch.float32
        else contextlib.nullcontext()
    )
    tokens_per_step = cfg.batch_size * cfg.model_config().n_ctx
    window_loss = torch.zeros((), device=device, dtype=torch.float64)
    window_steps, window_start = 0, time.perf_counter()
    last_saved = start
    step = start
    try:
        while step < end:
            lr = lr_at(cfg, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            tokens = stream.batch(step).to(device, non_blocking=True)
            with autocast:
                logits = net(tokens)
            loss = sequence_loss(logits, tokens)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = None
            if cfg.grad_clip > 0:
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            step += 1  # right after the update: an interrupt checkpoint stays consistent
            window_loss += loss.detach()
            window_steps += 1
            if step % cfg.log_every == 0 or step == end:
                elapsed = time.perf_counter() - window_start
                mean_loss = dd.mean(float(window_loss) / window_steps, world, device)
                speed = tokens_per_step * window_steps / max(elapsed, 1e-9)
                record = {
                    "step": step,
                    "loss": mean_loss,
                    "lr": lr,
                    "tokens_per_s": speed,
                    "time": time.time(),
                }
                if grad_norm is not None:
                    record["grad_norm"] = float(grad_norm)
                log.write(record)
                if bar is not None:
                    bar.set_postfix(loss=f"{mean_loss:.4f}", tok_s=f"{speed:,.0f}", lr=f"{lr:.2e}")
                window_loss.zero_()
                window_steps, window_start = 0, time.perf_counter()
            if bar is not None:
                bar.update(1)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                save_state(step)
                last_saved = step
            if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
                periodic_eval(step)
    except KeyboardInterrupt:
        if step != last_saved:
            save_state(step)
        if bar is not None:
            bar.close()
        if main:
            echo(f"interrupted at step {step}; checkpoint saved, continue with --resume")
        raise
    if bar is not None:
        bar.close()
    if step != last_saved:
        save_state(step)
    summary: dict[str, Any] = {
        "step": step,
        "out": str(out),
        "finished": step >= cfg.steps,
        "dropped_test_quizzes": stream.dropped,
        "main": main,
        "model": model,
    }
    if step < cfg.steps:
        return summary
    if main:
        save(model, out / "model")
        if cfg.final_eval_n:
            from gridlens.training.evaluate import bar_chart, evaluate

            result = evaluate(
                model,
                test_set,
                cfg.tasks,
                n=cfg.final_eval_n,
                autocast_dtype=amp_dtype if device.type == "cuda" else None,
            )
            payload = {**result.to_json(), "model": str(out / "model"), "step": step}
            _write_json(out / "eval.json", payload)
            log.write(
                {
                    "step": step,
                    "final_eval": {t: m["accuracy_greedy"] for t, m in result.tasks.items()},
                    "eval_accuracy": result.overall["accuracy_greedy"],
                }
            )
            bar_chart(result, out / "eval_bars.png", title=f"{out.name}: step {step}")
            echo(result.table())
            summary["eval"] = payload
        if cfg.plot:
            from gridlens.training.plots import plot_curve

            plot_curve(out / LOG_FILE, out / "curve.png")
    dd.barrier(world)
    return summary


def _write_json(path: Path, data: Any) -> None:
    from gridlens.world.render import atomic_write

    atomic_write(path, lambda h: h.write((json.dumps(data, indent=2) + "\n").encode()))


def resume_config(out: str | Path) -> TrainConfig:
    """The config a run directory was started with (for `--resume` without other options)."""
    p = Path(out) / CONFIG_FILE
    if not p.is_file():
        latest = ckpt.latest_checkpoint(out)
        if latest is None:
            raise ConfigError(f"{out}: no {CONFIG_FILE} and no checkpoint: nothing to resume")
        return TrainConfig.from_dict(ckpt.load_checkpoint(latest)["config"], str(latest))
    try:
        return TrainConfig.from_dict(json.loads(p.read_text()), str(p))
    except json.JSONDecodeError as error:
        raise ConfigError(f"{p}: not valid JSON: {error}") from None


__all__ = ["lr_at", "make_optimizer", "read_log", "resume_config", "sequence_loss", "train"]
