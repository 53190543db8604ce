"""Crosscoders across a culture population's members, against a control: member 0 and a
randomly initialised model of the same shape. Prints each run's sharing summary and its time.

    OMP_NUM_THREADS=1 python benchmarks/crosscoder_population.py POPULATION [--steps 1500]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from gridlens.models import GridGPT
from gridlens.sae.crosscoder import (
    CrosscoderConfig,
    CrosscoderTrainConfig,
    PairedStream,
    train_crosscoder,
)
from gridlens.training.culture.commands import _read_index
from gridlens.training.culture.loop import population_models


def run(models, cfg, site: str, steps: int, d_sae: int) -> dict:
    """Train one crosscoder over `models` at `site`; its summary with wall and CPU seconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    grid = (cfg.height, cfg.width)
    stream = PairedStream([(m, site) for m in models], cfg.tasks, "grid", 1024, grid=grid)
    names = tuple(f"m{i}" for i in range(len(models)))
    shape = CrosscoderConfig(names, models[0].cfg.d_model, d_sae)
    _, summary = train_crosscoder(stream, shape, CrosscoderTrainConfig(steps=steps), False)
    summary.pop("live_latent_indices")
    summary["wall_s"], summary["cpu_s"] = time.perf_counter() - wall, time.process_time() - cpu
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("population")
    parser.add_argument("--site", default="blocks.1.hook_resid_post")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--d-sae", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = _read_index(args.population)
    members = population_models(args.population)
    control = GridGPT(members[0].cfg, seed=123).eval()
    for name, models in {"population": members, "member0_vs_random": [members[0], control]}.items():
        summary = run(models, cfg, args.site, args.steps, args.d_sae)
        print(name, json.dumps(summary))


if __name__ == "__main__":
    main()
