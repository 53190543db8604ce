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
import os
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
from gridlens.training.throughput import Prefetcher, flops_per_token, peak_flops

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


def make_optimizer(
    model: torch.nn.Module, cfg: TrainConfig, fused: bool = False
) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices only (not on biases, LayerNorms or the embedding)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and not name.startswith("embed") else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    kwargs: dict[str, Any] = {"lr": cfg.lr, "betas": (cfg.beta1, cfg.beta2)}
    if fused:  # one kernel for all parameters (CUDA): the many small tensors cost launches
        kwargs["fused"] = True
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
    if cfg.batch_size % world.world_size:
        raise ConfigError(
            f"batch_size {cfg.batch_size} must be divisible by the number of processes "
            f"({world.world_size})"
        )
    if cfg.threads and device.type == "cpu":
        torch.set_num_threads(cfg.threads)
    state = _prepare_run_dir(cfg, out, resume, world)
    dd.barrier(world)
    run = _Run(cfg, out, world, device, state, echo)
    try:
        step = run.loop(stop_after)
    finally:
        run.close()
    summary: dict[str, Any] = {
        "step": step,
        "out": str(out),
        "finished": step >= run.cfg.steps,
        "dropped_test_quizzes": run.stream.dropped,
        "main": world.main,
        "model": run.model,
        "cfg": run.cfg,
        "tokens": step * run.tokens_per_step,
        "train_seconds": run.train_seconds,
    }
    if summary["finished"] and world.main:
        summary["eval"] = run.finish(step)
    dd.barrier(world)
    return summary


class _Run:
    """One training process: the model, optimiser, data and bookkeeping of a run, and the
    training loop (`loop`), with its logging, checkpoints and evaluations."""

    def __init__(self, cfg: TrainConfig, out: Path, world: dd.Dist, device, state, echo):
        from gridlens.models import GridGPT

        self.cfg, self.out, self.world, self.device, self.echo = cfg, out, world, device, echo
        self.amp_dtype = resolve_dtype(cfg.dtype, device)
        self.main = world.main
        if self.main:
            out.mkdir(parents=True, exist_ok=True)
            self.write_config()
            _trim_log(out / LOG_FILE, int(state["step"]) if state is not None else 0)
        self.log = _Log(out / LOG_FILE if self.main else None)
        self.test_set = TestSet.build(
            cfg.tasks, cfg.test_pool, cfg.test_seed, cfg.height, cfg.width
        )
        self.stream = QuizStream(
            cfg.tasks,
            cfg.structures,
            cfg.noise,
            cfg.batch_size // world.world_size,
            cfg.seed,
            world.rank,
            self.test_set.hashes(),
            cfg.height,
            cfg.width,
        )
        self.model = GridGPT(cfg.model_config(), seed=cfg.seed).to(device)
        self.optimizer = make_optimizer(self.model, cfg, fused=device.type == "cuda")
        self.start = 0
        if state is not None:
            self.restore(state)
        elif cfg.init_from:
            self.initialise_from(cfg.init_from)
        self.model.train()
        self.loss_fn = self.make_loss_fn()
        self.tokens_per_step = cfg.batch_size * cfg.model_config().n_ctx
        self.flops_per_step = flops_per_token(cfg.model_config()) * self.tokens_per_step
        self.peak = peak_flops(device, self.amp_dtype)
        if self.peak is not None:
            self.peak *= world.world_size
        self.bar = None
        self.prefetch: Prefetcher | None = None
        self.train_seconds = 0.0
        self.last_saved = self.step_reached = self.start

    def write_config(self) -> None:
        (self.out / CONFIG_FILE).write_text(json.dumps(self.cfg.to_dict(), indent=2) + "\n")

    def restore(self, state: dict[str, Any]) -> None:
        ckpt.restore(self.model, self.optimizer, state, "model/optimiser")
        self.start = int(state["step"])
        if "rng" in state:
            ckpt.set_rng_state(state["rng"])
        if self.main:
            self.echo(f"resuming {self.out} at step {self.start}")
            if int(state.get("world_size", 1)) != self.world.world_size:
                self.echo(
                    f"warning: the checkpoint was written by {state.get('world_size')} "
                    f"process(es), this run has {self.world.world_size}: the data stream from "
                    "here differs from an uninterrupted run's"
                )

    def initialise_from(self, source: str) -> None:
        """Start from the weights of another model of the same shape (continued training)."""
        from gridlens.models import load

        donor = load(source)
        if donor.cfg.to_dict() != self.model.cfg.to_dict():
            mine, theirs = self.model.cfg.to_dict(), donor.cfg.to_dict()
            diffs = [f"{k}: {theirs[k]!r} vs {mine[k]!r}" for k in mine if mine[k] != theirs[k]]
            raise ConfigError(
                f"init_from {source}: its shape differs from this run's ({'; '.join(diffs)})"
            )
        self.model.load_state_dict(donor.state_dict())
        if self.main:
            self.echo(f"initialised from the weights of {source}")

    def make_loss_fn(self):
        """tokens -> loss: the forward under autocast and the loss, compiled if asked. One
        process: `train_logits` (no checks, no host sync); several: through DDP."""
        cfg, model = self.cfg, self.model
        if self.world.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            forward = DistributedDataParallel(model, device_ids=ids)
        else:
            forward = model.train_logits
        use_amp = self.amp_dtype != torch.float32
        device_type, amp_dtype = self.device.type, self.amp_dtype

        def loss_fn(tokens: torch.Tensor) -> torch.Tensor:
            with torch.autocast(device_type, dtype=amp_dtype, enabled=use_amp):
                logits = forward(tokens)
            return sequence_loss(logits, tokens)

        return torch.compile(loss_fn) if cfg.compile else loss_fn

    # ------------------------------------------------------------------ the loop

    def loop(self, stop_after: int | None) -> int:
        """Train from self.start; returns the step reached. With a time budget the step count
        is fixed during the warm-up (see `calibrate`)."""
        cfg = self.cfg
        if self.main and cfg.progress:
            from tqdm import tqdm

            self.bar = tqdm(
                total=cfg.steps, initial=self.start, desc="train", dynamic_ncols=True, unit="step"
            )
        self.began = time.perf_counter()
        self.stop_after = stop_after
        try:
            step = self.steps(self.start)
        except KeyboardInterrupt:
            self.interrupted(self.step_reached)
            raise
        self.train_seconds = time.perf_counter() - self.began
        if step != self.last_saved:
            self.save_state(step)
        return step

    def synchronized_clock(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def end(self) -> int:
        return self.cfg.steps if self.stop_after is None else min(self.cfg.steps, self.stop_after)

    def steps(self, step: int) -> int:
        """Train from `step` to the end; returns the step reached. With a time budget, the
        steps between the first and the second quarter of the warm-up are timed (after
        compilation) and `calibrate` then fixes the end."""
        cfg = self.cfg
        calibrate_at = cfg.warmup_steps // 2 if cfg.time_budget else -1
        timed_from = max(step, calibrate_at // 2)
        timer = self.synchronized_clock() if step == timed_from < calibrate_at else None
        if (self.device.type == "cuda" or cfg.data_workers) and step < self.end():
            workers = cfg.data_workers or min(8, max(1, (os.cpu_count() or 2) // 2))
            self.prefetch = Prefetcher(self.stream, step, self.end(), self.device, workers)
        window = _Window(self.device)
        try:
            while step < self.end():
                loss, grad_norm = self.update(step)
                step += 1  # right after the update: an interrupt checkpoint stays consistent
                self.step_reached = step
                window.add(loss)
                if step == timed_from:
                    timer = self.synchronized_clock()
                if step == calibrate_at and timer is not None:
                    per_step = (self.synchronized_clock() - timer) / (step - timed_from)
                    began = time.perf_counter()
                    self.calibrate(step, per_step)
                    window.began += time.perf_counter() - began
                self.after_step(step, window, grad_norm)
        finally:
            self.close_prefetch()
        return step

    def after_step(self, step: int, window: _Window, grad_norm) -> None:
        """Logging, the progress bar, checkpoints and periodic evaluations."""
        cfg = self.cfg
        if step % cfg.log_every == 0 or step == self.end():
            self.log_window(step, window, grad_norm)
        if self.bar is not None:
            self.bar.update(1)
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            self.save_state(step)
        if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
            began = time.perf_counter()
            self.periodic_eval(step)
            window.began += time.perf_counter() - began  # tokens/s counts training alone

    def update(self, step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        cfg, lr = self.cfg, lr_at(self.cfg, step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.prefetch is not None:
            tokens = self.prefetch.get(step)
        else:
            tokens = self.stream.batch(step).to(self.device)
        loss = self.loss_fn(tokens)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = None
        if cfg.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        return loss.detach(), grad_norm

    def calibrate(self, step: int, per_step: float) -> None:
        """Fix `steps` so that the training ends within `time_budget` seconds, from the step
        time measured over the second quarter of the warm-up (the first holds compilation)
        and one evaluation's cost. Before the warm-up ends the schedule does not depend on
        `steps`, so the run is the same as one started with the chosen `--steps`."""
        cfg = self.cfg
        per_step = dd.mean(per_step, self.world, self.device)
        eval_s = 0.0
        if cfg.eval_every:
            began = time.perf_counter()
            self.periodic_eval(step)
            eval_s = (time.perf_counter() - began) / cfg.eval_every
        left = cfg.time_budget - (time.perf_counter() - self.began)
        steps = max(cfg.warmup_steps + 1, step + int(left / (per_step + eval_s)))
        self.cfg = cfg.replace(steps=steps)
        if self.main:
            self.write_config()
            record = {"step": step, "calibrated_steps": steps, "step_seconds": per_step}
            self.log.write({**record, "eval_seconds_per_step": eval_s})
            self.echo(
                f"time budget {cfg.time_budget:.0f} s: {per_step * 1e3:.1f} ms per step, "
                f"training for {steps} steps"
            )
        if self.bar is not None:
            self.bar.total = steps
            self.bar.refresh()

    def log_window(self, step: int, window: _Window, grad_norm) -> None:
        seconds, steps, mean_loss = window.close(self.world)
        speed = self.tokens_per_step * steps / max(seconds, 1e-9)
        record = {
            "step": step,
            "loss": mean_loss,
            "lr": lr_at(self.cfg, step - 1),
            "tokens_per_s": speed,
            "time": time.time(),
        }
        if self.peak is not None:
            record["mfu"] = self.flops_per_step * steps / max(seconds, 1e-9) / self.peak
        if grad_norm is not None:
            record["grad_norm"] = float(grad_norm)
        if self.prefetch is not None:
            record["data_gen_s"] = self.prefetch.gen_s
            record["data_wait_s"] = self.prefetch.wait_s
        self.log.write(record)
        if self.bar is not None:
            shown = {"loss": f"{mean_loss:.4f}", "tok_s": f"{speed:,.0f}"}
            if "mfu" in record:
                shown["mfu"] = f"{100 * record['mfu']:.1f}%"
            self.bar.set_postfix(**shown, lr=f"{record['lr']:.2e}")

    def save_state(self, step: int) -> None:
        if self.main:
            ckpt.save_checkpoint(
                {
                    "config": self.cfg.to_dict(),
                    "step": step,
                    "model": self.model.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": {"step": step, "lr": lr_at(self.cfg, step)},
                    "rng": ckpt.rng_state(),
                    "world_size": self.world.world_size,
                },
                self.out,
                step,
                self.cfg.keep_checkpoints,
            )
        self.last_saved = step
        dd.barrier(self.world)

    def evaluate(self, n: int, sampled: bool):
        from gridlens.training.evaluate import evaluate

        return evaluate(
            self.model,
            self.test_set,
            self.cfg.tasks,
            n=n,
            sampled=sampled,
            batch_size=1024 if self.device.type == "cuda" else 256,
            autocast_dtype=self.amp_dtype if self.device.type == "cuda" else None,
        )

    def periodic_eval(self, step: int) -> None:
        if self.main:
            result = self.evaluate(self.cfg.eval_n, sampled=False)
            record = {
                "step": step,
                "eval": {t: m["accuracy_greedy"] for t, m in result.tasks.items()},
                "eval_cell": {t: m["cell_accuracy"] for t, m in result.tasks.items()},
                "eval_loss": result.overall["loss"],
                "eval_accuracy": result.overall["accuracy_greedy"],
            }
            self.log.write(record)
            if self.bar is not None:
                self.bar.write(
                    f"step {step}: test accuracy {100 * record['eval_accuracy']:.1f}% "
                    f"(greedy, {self.cfg.eval_n} per task and structure)"
                )
        dd.barrier(self.world)

    def interrupted(self, step: int) -> None:
        if step != self.last_saved:
            self.save_state(step)
        if self.bar is not None:
            self.bar.close()
        if self.main:
            self.echo(f"interrupted at step {step}; checkpoint saved, continue with --resume")

    def close_prefetch(self) -> None:
        if self.prefetch is not None:
            self.prefetch.close()
            self.prefetch = None

    def close(self) -> None:
        self.close_prefetch()
        if self.bar is not None:
            self.bar.close()

    def finish(self, step: int) -> dict[str, Any] | None:
        """The final weights, evaluation, bar chart and curve (rank 0)."""
        from gridlens.models import save

        save(self.model, self.out / "model")
        payload = None
        if self.cfg.final_eval_n:
            from gridlens.training.evaluate import bar_chart

            result = self.evaluate(self.cfg.final_eval_n, sampled=True)
            payload = {**result.to_json(), "model": str(self.out / "model"), "step": step}
            _write_json(self.out / "eval.json", payload)
            self.log.write(
                {
                    "step": step,
                    "final_eval": {t: m["accuracy_greedy"] for t, m in result.tasks.items()},
                    "eval_accuracy": result.overall["accuracy_greedy"],
                }
            )
            bar_chart(result, self.out / "eval_bars.png", title=f"{self.out.name}: step {step}")
            self.echo(result.table())
        if self.cfg.plot:
            from gridlens.training.plots import plot_curve

            plot_curve(self.out / LOG_FILE, self.out / "curve.png")
        return payload


class _Window:
    """The mean loss and wall time of the steps since the last log record."""

    def __init__(self, device):
        self.device = device
        self.loss = torch.zeros((), device=device, dtype=torch.float64)
        self.count = 0
        self.began = time.perf_counter()

    def add(self, loss: torch.Tensor) -> None:
        self.loss += loss
        self.count += 1

    def close(self, world: dd.Dist) -> tuple[float, int, float]:
        """(seconds, steps, mean loss over the processes), and start the next window."""
        mean_loss = dd.mean(float(self.loss) / self.count, world, self.device)
        seconds, steps = time.perf_counter() - self.began, self.count
        self.loss.zero_()
        self.count, self.began = 0, time.perf_counter()
        return seconds, steps, mean_loss


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
