"""Training a population: K models with different seeds in one command.

Layout (what the culture loop will read):

    POP/population.json     {"k": K, "seeds": [...], "members": ["model_0", ...], "config": {...}}
    POP/model_{k}/          a complete run directory (config.json, log.jsonl, checkpoints/,
                            model/, eval.json, curve.png) for member k, seed = config.seed + k

Members share the test pool (test_seed), so their accuracies are comparable and no member
trains on a test quiz. The members train one after the other; `resume=True` skips finished
members and resumes an interrupted one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gridlens.errors import ConfigError
from gridlens.training.config import TrainConfig
from gridlens.training.trainer import train

INDEX_FILE = "population.json"


def member_dir(out: str | Path, k: int) -> Path:
    return Path(out) / f"model_{k}"


def member_config(cfg: TrainConfig, k: int) -> TrainConfig:
    return cfg.replace(seed=cfg.seed + k)


def train_population(
    cfg: TrainConfig, out: str | Path, k: int, resume: bool = False, echo=print
) -> dict[str, Any]:
    if k < 1:
        raise ConfigError(f"population size must be >= 1, got {k}")
    out = Path(out)
    index = out / INDEX_FILE
    if index.exists() and not resume:
        raise ConfigError(
            f"{out}: already holds a population; pass --resume or choose another --out"
        )
    if index.exists():
        saved = json.loads(index.read_text())
        old = TrainConfig.from_dict(saved["config"], str(index))
        diffs = old.differences(cfg)
        if diffs or saved.get("k") != k:
            raise ConfigError(
                f"{index}: cannot resume, differs: "
                + "; ".join(
                    diffs + ([f"k: {saved.get('k')} vs {k}"] if saved.get("k") != k else [])
                )
            )
    out.mkdir(parents=True, exist_ok=True)
    seeds = [cfg.seed + i for i in range(k)]
    index.write_text(
        json.dumps(
            {
                "k": k,
                "seeds": seeds,
                "members": [member_dir(out, i).name for i in range(k)],
                "config": cfg.to_dict(),
            },
            indent=2,
        )
        + "\n"
    )
    results = {}
    for i in range(k):
        d = member_dir(out, i)
        if (d / "model").exists():
            echo(f"member {i}: finished already ({d})")
            continue
        echo(f"member {i}/{k}: seed {seeds[i]} -> {d}")
        has_ckpt = (d / "checkpoints").is_dir() and any((d / "checkpoints").glob("step_*.pt"))
        results[i] = train(member_config(cfg, i), d, resume=resume and has_ckpt, echo=echo)
    return {"out": str(out), "k": k, "members": [str(member_dir(out, i)) for i in range(k)]}
