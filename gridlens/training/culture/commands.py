"""`gridlens culture run|report|export|import`."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

import click

from gridlens.errors import ConfigError, unknown_name
from gridlens.io import OutputPath, atomic_write
from gridlens.progress import Stages

if TYPE_CHECKING:
    from gridlens.training.culture.config import CultureConfig


def _parse_sets(pairs: tuple[str, ...]) -> dict[str, object]:
    """--set name=value pairs, typed by the setting's declared type."""
    from gridlens.training.culture.config import CultureConfig

    settings = {f.name: f.type for f in fields(CultureConfig)}
    out: dict[str, object] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects name=value, got {pair!r}")
        name, value = pair.split("=", 1)
        name = name.strip().replace("-", "_")
        if name not in settings:
            raise unknown_name("culture setting", name, list(settings))
        kind = {"int": int, "float": float, "str": str}[str(settings[name])]
        try:
            out[name] = kind(value)
        except ValueError:
            what = {int: "an integer", float: "a number"}.get(kind, "text")
            raise ConfigError(f"--set {name}: {value!r} is not {what}") from None
    return out


def _saved_settings(path: Path) -> dict:
    try:
        return json.loads(path.read_text())["config"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ConfigError(f"{path}: unreadable population settings ({error})") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def culture() -> None:
    """The culture loop: populations that make and learn their own quizzes."""


@culture.command("run")
@click.option("--out", type=OutputPath("dir"), required=True, help="Population folder.")
@click.option(
    "--preset",
    default=None,
    help="cpu (the default) or 37m (the original). With --resume: the population's own "
    "settings, unless a preset is named.",
)
@click.option("--resume", is_flag=True, help="Continue the population in --out.")
@click.option("--rounds", type=int, default=None, help="Run until this many rounds are done.")
@click.option("--set", "sets", multiple=True, metavar="NAME=VALUE", help="Override a setting.")
@click.option("--device", default="auto", show_default=True, help="auto (cuda if any), cpu, cuda:1")
@click.option("--threads", type=int, default=None, help="torch CPU threads.")
@click.option("--no-progress", is_flag=True)
def run_command(out, preset, resume, rounds, sets, device, threads, no_progress) -> None:
    """Train a population and grow its culture; every round is saved and resumable."""
    from gridlens.training.culture.config import CultureConfig, get_culture_preset
    from gridlens.training.culture.loop import run_culture
    from gridlens.training.trainer import resolve_device

    if threads:
        import torch

        torch.set_num_threads(threads)
    overrides = _parse_sets(sets)
    if rounds is not None:
        overrides["rounds"] = rounds
    saved = Path(out) / "culture.json"
    if resume and preset is None and saved.exists():
        base = CultureConfig.from_dict(_saved_settings(saved), str(saved))
    else:
        base = get_culture_preset(preset or "cpu")
    cfg = base.replace(**overrides)
    summary = run_culture(
        cfg,
        out,
        resume=resume,
        device=resolve_device(device),
        progress=not no_progress,
        echo=click.echo,
    )
    click.echo(json.dumps(summary))


@culture.command("report")
@click.option("--population", type=click.Path(file_okay=False), required=True)
@click.option("--out", type=OutputPath("dir"), default=None, help="Default POP/report.")
def report_command(population, out) -> None:
    """Figures and JSON: accuracies per round, kept and novel quizzes, a gallery by label."""
    from gridlens.training.culture.report import culture_report

    summary = culture_report(population, out)
    click.echo(f"wrote {Path(summary['out']).resolve()}")
    c = summary["culture"]
    click.echo(
        f"{summary['rounds']} rounds, culture {c['train']} train + {c['test']} test quizzes, "
        f"by checker label {c['by_label']}"
    )


@culture.command("export")
@click.option("--population", type=click.Path(file_okay=False), required=True)
@click.option("--out", type=OutputPath("file"), required=True, help="c_quizzes.pth")
def export_command(population, out) -> None:
    """Write the culture in the original c_quizzes.pth layout (train list, test list)."""
    from gridlens.training.culture.report import load_population_summary
    from gridlens.training.culture.store import save_original

    _, _, _, found = load_population_summary(population)
    path = save_original(out, found)
    click.echo(f"wrote {Path(path).resolve()} ({len(found.train)} train, {len(found.test)} test)")


@culture.command("import")
@click.option("--population", type=click.Path(file_okay=False), required=True)
@click.argument("c_quizzes", type=click.Path(dir_okay=False, exists=True))
def import_command(population, c_quizzes) -> None:
    """Add an original c_quizzes.pth to a population's culture (as one committed round)."""
    from gridlens.training.culture.config import CultureConfig
    from gridlens.training.culture.loop import Population, _read_json

    index = _read_json(Path(population) / "culture.json")
    cfg = CultureConfig.from_dict(index.get("config", {}), population)
    pop = Population.open(population, cfg, resume=True)
    added = pop.import_original(c_quizzes)
    click.echo(f"imported {added} culture quizzes into {population} (round {pop.round})")


@culture.command("universality")
@click.option("--population", type=click.Path(file_okay=False), required=True)
@click.option("--site", default="blocks.1.mlp.hook_post", show_default=True, help="Hook site.")
@click.option("--models", default="0,1", show_default=True, help="Two member indices: A,B.")
@click.option("-n", "--quizzes", type=int, default=64, show_default=True, help="Shared inputs.")
@click.option("--sae-a", type=click.Path(file_okay=False), default=None, help="SAE of model A.")
@click.option("--sae-b", type=click.Path(file_okay=False), default=None, help="SAE of model B.")
@click.option("--out", type=OutputPath("dir"), default=None, help="Default POP/report.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--all-pairs", is_flag=True, help="Also every pair of members (neurons).")
def universality_command(
    population, site, models, quizzes, sae_a, sae_b, out, seed, all_pairs
) -> None:
    """Shared units across models: neuron (or SAE latent) correlations with a baseline."""
    from gridlens.analysis import universality as un
    from gridlens.training.culture.loop import population_models
    from gridlens.world import generate

    index = _read_index(population)
    members = population_models(population)
    try:
        a, b = (int(x) for x in models.split(","))
    except ValueError:
        raise ConfigError(f"--models takes two member indices like 0,1; got {models!r}") from None
    for i in (a, b):
        if not 0 <= i < len(members):
            raise ConfigError(f"--models: member {i} does not exist (k={len(members)})")
    tokens = generate(
        index.tasks, quizzes, seed=seed, height=index.height, width=index.width
    ).tokens
    out_dir = Path(out) if out else Path(population) / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    if (sae_a is None) != (sae_b is None):
        raise ConfigError("give both --sae-a and --sae-b, or neither")
    stage = Stages("culture universality", 3 if all_pairs else 2)
    with stage("correlations"):
        if sae_a is not None:
            from gridlens.sae.io import load_sae

            result = un.latent_universality(
                members[a], load_sae(sae_a), members[b], load_sae(sae_b), tokens
            )
            stem = "universality_sae"
        else:
            result = un.neuron_universality(members[a], members[b], tokens, site)
            stem = "universality"
    figure = out_dir / f"{stem}.png"
    data = {"models": [a, b], **result.to_json()}
    if all_pairs:

        def measure(x, y):
            return un.neuron_universality(x, y, tokens, site)

        with stage("every pair of members"):
            matrix = un.pairwise(members, measure)
        data["pairwise_mean_max_match"] = matrix.tolist()
    with stage("figures"):
        result.plot(figure)
        if all_pairs:
            un.plot_pairwise(matrix, out_dir / "universality_pairs.png", f"neurons at {site}")
    text = json.dumps(data, indent=2) + "\n"
    atomic_write(out_dir / f"{stem}.json", lambda handle: handle.write(text.encode()))
    for line in result.findings():
        click.echo(line)
    click.echo(f"wrote {figure.resolve()}")


def _read_index(population) -> CultureConfig:
    from gridlens.training.culture.config import CultureConfig
    from gridlens.training.culture.loop import _read_json

    data = _read_json(Path(population) / "culture.json")
    return CultureConfig.from_dict(data.get("config", {}), str(Path(population) / "culture.json"))
