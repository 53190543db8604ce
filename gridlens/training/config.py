"""Training configuration: one dataclass, presets, JSON/TOML files and overrides.

Precedence: preset < config file < explicit overrides (the command-line options).

    cfg = TrainConfig.build(preset="cpu", file="run.toml", overrides={"steps": 500})
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gridlens.errors import ConfigError, unknown_name
from gridlens.models import GridGPTConfig
from gridlens.world import DEFAULT_TASKS
from gridlens.world.structures import STRUCTURE_NAMES
from gridlens.world.tasks import resolve_tasks

CONFIG_VERSION = 1

# Fields that may differ between a checkpoint and a resumed run without changing the result
# of the training (where files go, how often to print, how to show progress, devices).
RESUME_FREE_FIELDS = frozenset(
    {
        "steps",
        "log_every",
        "eval_every",
        "eval_n",
        "checkpoint_every",
        "keep_checkpoints",
        "progress",
        "threads",
        "device",
        "final_eval_n",
        "plot",
        "compile",
        "time_budget",
        "data_workers",
    }
)


@dataclass
class TrainConfig:
    """Everything that determines a training run. (docs: docs/training.md)."""

    # model (a GridGPT; MyGPT-compatible)
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_head: int = 32
    d_mlp: int = 512
    # data (the defaults follow the original run: 8 tasks, all 5 structures, noise 0.05)
    tasks: tuple[str, ...] = DEFAULT_TASKS
    structures: tuple[str, ...] = STRUCTURE_NAMES
    noise: float = 0.05
    height: int = 10
    width: int = 10
    batch_size: int = 32
    steps: int = 1000
    seed: int = 0
    # held-out test pool: every training quiz whose canonical grids hash into it is dropped
    test_seed: int = 0
    test_pool: int = 2000
    # optimisation: AdamW, linear warm-up then cosine decay to min_lr_ratio * lr
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.98
    grad_clip: float = 1.0
    # execution
    device: str = "auto"
    dtype: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU; or float32 / bfloat16
    threads: int = 0  # torch intra-op threads on CPU (0: leave torch's default)
    # a model (a folder, a file or "default") whose weights start the run instead of the
    # random initialisation: continued training; its shape must be this config's
    init_from: str = ""
    compile: bool = False  # torch.compile the training step (pays on a GPU)
    # processes generating batches ahead of the training step (0: half the CPUs, at most 8,
    # on CUDA; none on CPU, where they would compete with the step for the cores)
    data_workers: int = 0
    # wall seconds for the training steps: `steps` is then set from the step time measured
    # during the warm-up (0: train exactly `steps`)
    time_budget: float = 0.0
    # bookkeeping
    log_every: int = 10
    eval_every: int = 0  # 0: no periodic evaluation
    eval_n: int = 16  # quizzes per (task, structure) for periodic evaluation
    final_eval_n: int = 64  # quizzes per (task, structure) for the evaluation at the end
    checkpoint_every: int = 200
    keep_checkpoints: int = 3
    progress: bool = True
    plot: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes, not validated

    def __post_init__(self) -> None:
        self.tasks = resolve_tasks(
            self.tasks if not isinstance(self.tasks, list) else tuple(self.tasks)
        )
        if isinstance(self.structures, str):
            self.structures = (
                STRUCTURE_NAMES
                if self.structures in ("mix", "all")
                else tuple(s.strip() for s in self.structures.split(",") if s.strip())
            )
        self.structures = tuple(self.structures)
        if not self.structures:
            raise ConfigError("structures: at least one structure is needed")
        for s in self.structures:
            if s not in STRUCTURE_NAMES:
                raise unknown_name("structure", s, STRUCTURE_NAMES)
        positive = (
            "d_model",
            "n_layers",
            "n_heads",
            "d_head",
            "d_mlp",
            "batch_size",
            "steps",
            "test_pool",
            "log_every",
            "keep_checkpoints",
            "eval_n",
            "height",
            "width",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in (
            "warmup_steps",
            "eval_every",
            "checkpoint_every",
            "threads",
            "final_eval_n",
            "data_workers",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
        if not 0.0 <= self.noise <= 1.0:
            raise ConfigError(f"noise must be a probability in [0, 1], got {self.noise}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ConfigError(f"beta1/beta2 must lie in [0, 1), got {self.beta1}, {self.beta2}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ConfigError("weight_decay and grad_clip must be >= 0 (grad_clip 0: no clipping)")
        if not isinstance(self.init_from, str):
            raise ConfigError(f"init_from must be a path or model name, got {self.init_from!r}")
        if not isinstance(self.compile, bool):
            raise ConfigError(f"compile must be true or false, got {self.compile!r}")
        if not isinstance(self.time_budget, int | float) or not self.time_budget >= 0:
            raise ConfigError(f"time_budget must be seconds >= 0, got {self.time_budget!r}")
        if self.time_budget and self.warmup_steps < 20:
            raise ConfigError(
                "time_budget measures the step time during the warm-up: warmup_steps must be "
                f">= 20, got {self.warmup_steps}"
            )
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ConfigError(f"dtype must be auto, float32 or bfloat16, got {self.dtype!r}")
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )

    # ------------------------------------------------------------------ conversions

    def model_config(self) -> GridGPTConfig:
        from gridlens.world import quiz_length

        return GridGPTConfig(
            d_model=self.d_model,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            d_head=self.d_head,
            d_mlp=self.d_mlp,
            n_ctx=quiz_length(self.height, self.width),
        )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["tasks"] = list(self.tasks)
        d["structures"] = list(self.structures)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrainConfig:
        if not isinstance(data, dict):
            raise ConfigError(
                f"{source}: expected a table/object of options, got {type(data).__name__}"
            )
        data = {k.replace("-", "_"): v for k, v in data.items() if k != "config_version"}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown option(s) {unknown} (known: {sorted(known)})")
        for key in ("tasks", "structures"):
            if isinstance(data.get(key), list):
                data[key] = tuple(data[key])
        try:
            return cls(**data)
        except TypeError as error:
            raise ConfigError(f"{source}: {error}") from None
        except ConfigError as error:
            raise ConfigError(f"{source}: {error}") from None

    def replace(self, **changes: Any) -> TrainConfig:
        return TrainConfig.from_dict({**self.to_dict(), **changes}, "overrides")

    def differences(
        self, other: TrainConfig, ignore: frozenset[str] = RESUME_FREE_FIELDS
    ) -> list[str]:
        """'field: self -> other' for every field that differs (except `ignore`)."""
        a, b = self.to_dict(), other.to_dict()
        return [
            f"{k}: {a[k]!r} (checkpoint) vs {b[k]!r} (now)"
            for k in a
            if k not in ignore and a[k] != b.get(k)
        ]

    @classmethod
    def build(
        cls,
        preset: str | None = None,
        file: str | Path | None = None,
        overrides: dict[str, Any] | None = None,
    ) -> TrainConfig:
        """preset < file < overrides (None values in overrides are ignored)."""
        data: dict[str, Any] = dict(get_preset(preset).to_dict()) if preset else {}
        if file is not None:
            file_data = read_config_file(file)
            if "preset" in file_data:
                base = file_data.pop("preset")
                data = {**(get_preset(base).to_dict() if preset is None else data)}
            data.update({k.replace("-", "_"): v for k, v in file_data.items()})
        data.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return cls.from_dict(data, str(file) if file else "options")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A JSON (.json) or TOML (.toml) file of options; a `[train]` table is used if present."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        if p.suffix == ".toml":
            data = tomllib.loads(p.read_text())
        elif p.suffix == ".json":
            data = json.loads(p.read_text())
        else:
            raise ConfigError(f"{p}: a config file must end in .json or .toml")
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{p}: not valid {p.suffix[1:].upper()}: {error}") from None
    if isinstance(data, dict) and isinstance(data.get("train"), dict):
        data = data["train"]
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected an object of options at the top level")
    return dict(data)


PRESETS: dict[str, TrainConfig] = {}


def _register() -> None:
    # "cpu": about an hour on 2 idle CPU cores (0.65 s per step of 32 quizzes, docs/training.md).
    PRESETS["cpu"] = TrainConfig(
        d_model=128,
        n_layers=4,
        n_heads=4,
        d_head=32,
        d_mlp=512,
        batch_size=32,
        steps=5000,
        lr=3e-3,
        warmup_steps=200,
        min_lr_ratio=0.05,
        eval_every=1000,
        eval_n=16,
        final_eval_n=100,
        checkpoint_every=500,
    )
    # "37m": Fleuret's released size, for a GPU (bf16 autocast).
    PRESETS["37m"] = TrainConfig(
        d_model=512,
        n_layers=12,
        n_heads=8,
        d_head=64,
        d_mlp=2048,
        batch_size=128,
        steps=30000,
        lr=5e-4,
        warmup_steps=1000,
        min_lr_ratio=0.1,
        eval_every=2000,
        eval_n=32,
        final_eval_n=250,
        checkpoint_every=1000,
    )
    # "gpu": the competent model, one GPU for about 9 minutes (8 of training; start and the
    # evaluation add about one); 8 layers, 6.3M parameters. The step count comes from the
    # time budget; `steps` is what an H200 does in it (23.6 ms per compiled step, measured).
    PRESETS["gpu"] = TrainConfig(
        d_model=256,
        n_layers=8,
        n_heads=8,
        d_head=32,
        d_mlp=1024,
        batch_size=256,
        steps=19000,
        lr=1.5e-3,
        warmup_steps=200,
        min_lr_ratio=0.05,
        compile=True,
        time_budget=480.0,
        log_every=50,
        eval_every=500,
        eval_n=32,
        final_eval_n=250,
        checkpoint_every=1000,
    )
    # "gpu-small": the shape of the shipped default (cheap to analyse on a CPU), on a GPU
    # (12.6 ms per compiled step on an H200).
    PRESETS["gpu-small"] = PRESETS["gpu"].replace(
        d_model=128, n_layers=4, n_heads=4, d_head=32, d_mlp=512, lr=3e-3, steps=37000
    )
    # "tiny": seconds on a CPU, for tests and smoke runs.
    PRESETS["tiny"] = TrainConfig(
        d_model=32,
        n_layers=2,
        n_heads=2,
        d_head=16,
        d_mlp=64,
        batch_size=8,
        steps=20,
        lr=3e-3,
        warmup_steps=2,
        eval_every=0,
        eval_n=2,
        final_eval_n=2,
        checkpoint_every=10,
        log_every=5,
        test_pool=64,
    )


_register()


def get_preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise unknown_name("training preset", name, PRESETS)
    return PRESETS[name]
