"""`gridlens sae crosscoder`: train a crosscoder over several layers of one model, or over the
same site of several models, and say which of its latents are shared and which specific."""

from __future__ import annotations

import json
from pathlib import Path

import click

from gridlens.errors import ConfigError
from gridlens.io import OutputPath, atomic_write


def pair_sources(models: tuple[str, ...], sites: tuple[str, ...]) -> list[tuple[str, str]]:
    """(model, site) per source: one model x several sites, several models x one site, or
    equally many of each (paired in order)."""
    if not models or not sites:
        raise ConfigError("give at least one --model and one --site")
    if len(models) == 1:
        models = models * len(sites)
    elif len(sites) == 1:
        sites = sites * len(models)
    if len(models) != len(sites):
        raise ConfigError(
            f"{len(models)} models and {len(sites)} sites: give one model and several sites, "
            "several models and one site, or as many of each"
        )
    sources = list(zip(models, sites, strict=True))
    if len(sources) < 2 or len(set(sources)) < len(sources):
        raise ConfigError(f"a crosscoder needs >= 2 distinct sources, got {sources}")
    return sources


def _population(folder: str, device) -> tuple[tuple[str, ...], tuple[int, int], str, dict]:
    """A culture population's members as named models, its grid size and its tasks."""
    from gridlens.training.culture.commands import _read_index
    from gridlens.training.culture.loop import population_models

    cfg = _read_index(folder)
    members = population_models(folder, device=device)
    names = tuple(f"member{i}" for i in range(len(members)))
    return names, (cfg.height, cfg.width), cfg.tasks, dict(zip(names, members, strict=True))


def _sources(models, population, sites, grid, tasks, device):
    """(name, site) pairs, the (model, site) sources, the grid size and the tasks to draw."""
    from gridlens.models.checkpoints import load
    from gridlens.sae.activations import check_site, site_width

    if population is not None:
        if models != ("default",):
            raise ConfigError("give either --population or --model, not both")
        models, grid, tasks, loaded = _population(population, device)
    else:
        loaded = {m: load(m, device=device) for m in dict.fromkeys(models)}
    pairs = pair_sources(models, sites)
    sources = [(loaded[m], site) for m, site in pairs]
    for model, site in sources:
        check_site(model, site)
    widths = {site_width(model, site) for model, site in sources}
    if len(widths) != 1:
        raise ConfigError(f"the sources have different widths {sorted(widths)}")
    return pairs, sources, grid, tasks


def _source_name(model: str, site: str, models: list[str]) -> str:
    return site if len(set(models)) == 1 else f"{Path(model).name or model}:{site}"


def _write(cc, summary: dict, out: Path) -> None:
    """The crosscoder, sharing.json and sharing.png into `out`."""
    import torch

    from gridlens.sae.crosscoder import Sharing, save_crosscoder

    save_crosscoder(cc, out, summary)
    text = (json.dumps(summary, indent=1) + "\n").encode()
    atomic_write(out / "sharing.json", lambda handle: handle.write(text))
    alive = torch.zeros(cc.cfg.d_sae, dtype=torch.bool)
    alive[summary["live_latent_indices"]] = True
    Sharing.of(cc, alive).plot(out / "sharing.png")


@click.command("crosscoder")
@click.option(
    "--model",
    "models",
    multiple=True,
    default=("default",),
    show_default=True,
    help="Model (repeat for a crosscoder across models).",
)
@click.option(
    "--population",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="A culture population folder: its members are the models (its grids the size).",
)
@click.option(
    "--site",
    "sites",
    multiple=True,
    required=True,
    help="Hook name (repeat for a crosscoder across layers), e.g. blocks.1.hook_resid_post.",
)
@click.option("--arch", default="relu", show_default=True, type=click.Choice(["relu", "topk"]))
@click.option("--d-sae", type=int, default=512, show_default=True, help="Number of latents.")
@click.option("--k", type=int, default=16, show_default=True, help="Active latents (topk).")
@click.option("--l1", type=float, default=2.0, show_default=True, help="L1 coefficient (relu).")
@click.option("--steps", type=int, default=2000, show_default=True)
@click.option("--batch-size", type=int, default=1024, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--tasks", default="default", show_default=True, help="Tasks of the quizzes.")
@click.option(
    "--positions",
    default="grid",
    show_default=True,
    type=click.Choice(["grid", "all", "no_markers"]),
)
@click.option("--height", type=int, default=10, show_default=True, help="Grid height.")
@click.option("--width", type=int, default=10, show_default=True, help="Grid width.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda ...")
@click.option(
    "--out",
    type=OutputPath("dir"),
    required=True,
    help="Output directory: crosscoder.safetensors, sharing.json, sharing.png.",
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def crosscoder(
    models, population, sites, arch, d_sae, k, l1, steps, batch_size, lr, tasks, positions,
    height, width, seed, device, out, no_progress,
):  # fmt: skip
    """Train a crosscoder (one dictionary over several sources) on fresh quizzes and measure
    which latents the sources share: the universality question, across models or layers."""
    import torch

    from gridlens.sae.activations import site_width
    from gridlens.sae.crosscoder import (
        CrosscoderConfig,
        CrosscoderTrainConfig,
        PairedStream,
        train_crosscoder,
    )
    from gridlens.training.trainer import resolve_device

    device = resolve_device(device)
    pairs, sources, grid, tasks = _sources(models, population, sites, (height, width), tasks,
                                           device)  # fmt: skip
    names = tuple(_source_name(m, s, [m for m, _ in pairs]) for m, s in pairs)
    cfg = CrosscoderConfig(names, site_width(*sources[0]), d_sae, arch, k)
    train = CrosscoderTrainConfig(steps=steps, lr=lr, l1=l1, seed=seed)
    torch.manual_seed(seed)
    stream = PairedStream(sources, tasks, positions, batch_size, seed=seed, grid=grid)
    cc, summary = train_crosscoder(stream, cfg, train, not no_progress, device)
    summary["sources"] = [{"model": m, "site": s} for m, s in pairs]
    _write(cc, summary, Path(out))
    share = summary["sharing"]
    ev = ", ".join(f"{n} {v:.3f}" for n, v in summary["explained_variance"].items())
    click.echo(f"explained variance {ev}; L0 {summary['l0']:.1f}; "
               f"dead {summary['dead_fraction']:.1%}")  # fmt: skip
    click.echo(f"{share['live_latents']} live latents: {share['shared_fraction']:.1%} shared, "
               f"specific {share['specific_fraction']}")  # fmt: skip
    click.echo(f"wrote {Path(out) / 'crosscoder.safetensors'}, sharing.json and sharing.png")
