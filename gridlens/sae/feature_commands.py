"""CLI commands for reading an SAE's features: `features`, `dashboard`, `steer`, `attribute`.
Plain click commands (the `sae` group adds them from COMMANDS); each writes PNG + JSON into
--out and prints what it wrote."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from gridlens.errors import ConfigError
from gridlens.io import OutputPath, atomic_write
from gridlens.progress import Stages


def _common(fn: Callable) -> Callable:
    """Options every feature command shares: model, SAE, quiz set, output folder."""
    options = [
        click.option(
            "--model",
            "model_path",
            default="default",
            show_default=True,
            help="model checkpoint (file, directory or 'default')",
        ),
        click.option(
            "--sae",
            "sae_path",
            default="default",
            show_default=True,
            help="SAE directory (SAELens format) or 'default'",
        ),
        click.option(
            "--tasks",
            default="default",
            show_default=True,
            help="tasks of the quiz set (names, comma-separated, 'default' or 'all')",
        ),
        click.option(
            "-n", "--n-per-task", default=32, show_default=True, type=int, help="quizzes per task"
        ),
        click.option("--seed", default=0, show_default=True, type=int, help="quiz set seed"),
        click.option(
            "--out",
            "out_dir",
            required=True,
            type=OutputPath("dir"),
            help="output folder for PNG and JSON",
        ),
        click.option(
            "--device", default="auto", show_default=True, help="auto (cuda if any), cpu, cuda:1"
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _load(model_path: str, sae_path: str, tasks: str, n_per_task: int, seed: int, device: str):
    from gridlens.analysis.core import quiz_set
    from gridlens.models.checkpoints import load
    from gridlens.sae.io import load_sae
    from gridlens.training.trainer import resolve_device

    model = load(model_path, device=resolve_device(device))
    sae = load_sae(sae_path, device=model.device)
    if sae.cfg.hook_name not in model.hook_names:
        raise ConfigError(f"the SAE reads {sae.cfg.hook_name!r}, which this model does not have")
    return model, sae, quiz_set(tasks, n_per_task, seed=seed)


def _write_json(path: Path, data: Any) -> Path:
    text = json.dumps(data, indent=1).encode()
    return atomic_write(path, lambda handle: handle.write(text))


def _int_list(text: str | None, what: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated integers, got {text!r}") from None


def _float_list(text: str, what: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated numbers, got {text!r}") from None


def _echo(paths) -> None:
    for p in paths:
        click.echo(str(Path(p).resolve()))


@click.command("features")
@_common
@click.option(
    "--positions",
    default="grid",
    show_default=True,
    type=click.Choice(["grid", "no_markers", "all"]),
    help="positions recorded",
)
@click.option(
    "--latents",
    default=None,
    help="latents to draw (default: the most task-specific per task and the best-labelled)",
)
@click.option("--n-latents", default=16, show_default=True, type=int)
@click.option("--n-examples", default=6, show_default=True, type=int)
def features(
    model_path,
    sae_path,
    tasks,
    n_per_task,
    seed,
    out_dir,
    device,
    positions,
    latents,
    n_latents,
    n_examples,
) -> None:
    """Top examples, automatic labels and the feature x task expression matrix."""
    from gridlens.sae.dashboard import choose_latents
    from gridlens.sae.features import (
        expression_matrix,
        latent_activations,
        promoted_logits,
        render_examples,
    )
    from gridlens.sae.labels import label_latents

    stage = Stages("sae features", 4)
    with stage("loading the model and SAE"):
        model, sae, quizzes = _load(model_path, sae_path, tasks, n_per_task, seed, device)
    out = Path(out_dir)
    with stage("latent activations and labels"):
        acts = latent_activations(model, sae, quizzes, positions)
        expression = expression_matrix(acts)
        labels = label_latents(acts)
    chosen = _int_list(latents, "--latents") or choose_latents(expression, labels, n_latents)
    with stage("figures"):
        expression.plot(out / "expression.png")
        labels.plot(out / "labels_f1.png")
        written = [out / "expression.png", *labels.write(out), out / "labels_f1.png"]
        for j in chosen:
            if labels.fires[acts.check_latent(j)]:
                path = out / f"latent_{j:05d}_examples.png"
                written.append(render_examples(acts, j, path, n_examples))
    with stage("promoted logits"):
        logits = promoted_logits(model, sae)
    summary = {
        "hook_name": sae.cfg.hook_name,
        "quizzes": len(quizzes),
        "positions": positions,
        "latents": {
            str(j): {
                "label": labels.best(j, 3),
                "firing": dict(
                    zip(expression.tasks, expression.firing[j].round(4).tolist(), strict=True)
                ),
                "top_examples": [e.__dict__ for e in acts.top_examples(j, n_examples)],
            }
            for j in chosen
        },
        "promoted_logits": logits.to_json(chosen),
        "expression": expression.to_json(),
        "findings": expression.findings() + labels.findings(),
    }
    written.append(_write_json(out / "features.json", summary))
    _echo(written)


@click.command("dashboard")
@_common
@click.option(
    "--positions",
    default="grid",
    show_default=True,
    type=click.Choice(["grid", "no_markers", "all"]),
)
@click.option("--latents", default=None, help="latents to show (default: chosen automatically)")
@click.option("--n-latents", default=24, show_default=True, type=int)
@click.option("--n-examples", default=6, show_default=True, type=int)
def dashboard(
    model_path,
    sae_path,
    tasks,
    n_per_task,
    seed,
    out_dir,
    device,
    positions,
    latents,
    n_latents,
    n_examples,
) -> None:
    """A static HTML dashboard (index + one page per latent) in --out; open index.html."""
    from gridlens.sae.dashboard import write_dashboard

    stage = Stages("sae dashboard", 2)
    with stage("loading the model and SAE"):
        model, sae, quizzes = _load(model_path, sae_path, tasks, n_per_task, seed, device)
    chosen = _int_list(latents, "--latents")
    with stage("dashboard"):
        index = write_dashboard(
            model, sae, quizzes, out_dir, chosen, n_latents, n_examples, positions
        )
    _echo([index])


def _read_direction(path: Path, d_in: int):
    """A steering vector of `d_in` values from a .npy or a .pt/.pth (weights-only) file."""
    import numpy as np
    import torch

    from gridlens.integrity import load_pickle

    if path.suffix not in (".npy", ".pt", ".pth"):
        raise ConfigError(f"--direction {path}: expected a .npy, .pt or .pth file")
    if path.suffix != ".npy":
        direction = load_pickle(path, "direction file", ConfigError)
    else:
        try:
            direction = torch.from_numpy(np.load(path, allow_pickle=False))
        except (OSError, ValueError, TypeError) as error:
            raise ConfigError(f"--direction {path}: not a readable .npy array ({error})") from None
    if not torch.is_tensor(direction) or not direction.is_floating_point():
        raise ConfigError(f"--direction {path}: expected an array of floats")
    if direction.numel() != d_in:
        raise ConfigError(f"--direction {path}: {direction.numel()} values, need {d_in}")
    return direction.reshape(d_in).float()


@click.command("steer")
@_common
@click.option("--latents", default=None, help="latents whose decoder rows are added")
@click.option(
    "--direction",
    "direction_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="a .npy or .pt vector to add instead of latents",
)
@click.option("--scales", default="0,1,2,4,8,16", show_default=True)
@click.option(
    "--positions",
    default="grid",
    show_default=True,
    type=click.Choice(["grid", "no_markers", "all"]),
)
@click.option(
    "--check-tasks",
    default="all",
    show_default=True,
    help="tasks whose rules are checked on the outputs",
)
@click.option(
    "--site",
    default=None,
    help="hook to add the direction at (default: the SAE's own; the width must match)",
)
@click.option(
    "--scan",
    default=None,
    help="coefficients (e.g. -10:10:21 = 21 from -10 to 10) for a per-component scan: direct "
    "logit attribution and logit lens at each, teacher-forced (steering_scan.json/png)",
)
def steer(
    model_path,
    sae_path,
    tasks,
    n_per_task,
    seed,
    out_dir,
    device,
    latents,
    direction_path,
    scales,
    positions,
    check_tasks,
    site,
    scan,
) -> None:
    """Add decoder directions x scale while generating; which task rule do outputs follow?"""
    from gridlens.sae.steering import decoder_direction
    from gridlens.sae.steering import steer as run_steer

    stage = Stages("sae steer", 2)
    with stage("loading the model and SAE"):
        model, sae, quizzes = _load(model_path, sae_path, tasks, n_per_task, seed, device)
    chosen = _int_list(latents, "--latents")
    if (chosen is None) == (direction_path is None):
        raise ConfigError("give exactly one of --latents and --direction")
    coefficients = _scan_coefficients(scan) if scan is not None else None
    hook_name = site or sae.cfg.hook_name
    if site is not None:
        from gridlens.sae.activations import site_width

        if site_width(model, site) != sae.cfg.d_in:
            raise ConfigError(
                f"--site {site} has width {site_width(model, site)}, the direction {sae.cfg.d_in}"
            )
    if chosen is not None:
        direction, what = decoder_direction(sae, chosen), f"latents {chosen}"
    else:
        path = Path(direction_path)
        direction, what = _read_direction(path, sae.cfg.d_in), f"direction {path.name}"
    factors = _float_list(scales, "--scales")
    with stage("steered generation"):
        result = run_steer(
            model, quizzes, direction, hook_name, factors, positions, check_tasks, what
        )
    out = Path(out_dir)
    data = {**result.to_json(), "findings": result.findings()}
    result.plot(out / "steering.png")
    written = [out / "steering.png", _write_json(out / "steering.json", data)]
    if coefficients is not None:
        from gridlens.sae.steering import component_scan

        swept = component_scan(model, quizzes, direction, hook_name, coefficients, positions, what)
        data = {**swept.to_json(), "findings": swept.findings()}
        swept.plot(out / "steering_scan.png")
        written += [out / "steering_scan.png", _write_json(out / "steering_scan.json", data)]
    _echo(written)


def _scan_coefficients(text: str) -> list[float]:
    """'lo:hi:n' (n evenly spaced from lo to hi) or comma-separated numbers."""
    if ":" not in text:
        return _float_list(text, "--scan")
    try:
        lo, hi, n = text.split(":")
        count = int(n)
        values = [float(lo) + (float(hi) - float(lo)) * i / max(count - 1, 1) for i in range(count)]
    except ValueError:
        raise ConfigError(
            f"--scan must be lo:hi:n or comma-separated numbers, got {text!r}"
        ) from None
    if count < 1:
        raise ConfigError(f"--scan needs n >= 1, got {text!r}")
    return values


@click.command("attribute")
@_common
@click.option(
    "--top-k",
    default=5,
    show_default=True,
    type=int,
    help="latents per task ablated / amplified in the causal tests (0: none)",
)
@click.option(
    "--amplify",
    default=5.0,
    show_default=True,
    type=float,
    help="factor for the amplification test",
)
@click.option("--mask-task", default=None, help="learn a sparse latent mask on this task")
@click.option("--mask-steps", default=100, show_default=True, type=int)
@click.option("--penalty", default=1e-3, show_default=True, type=float)
@click.option(
    "--gate", default="sigmoid", show_default=True, type=click.Choice(["sigmoid", "hard_concrete"])
)
def attribute(
    model_path,
    sae_path,
    tasks,
    n_per_task,
    seed,
    out_dir,
    device,
    top_k,
    amplify,
    mask_task,
    mask_steps,
    penalty,
    gate,
) -> None:
    """Gradient x activation per latent and task, a learned mask, ablation and amplification."""
    from gridlens.sae import attribution

    stage = Stages("sae attribute", 2 + (top_k > 0) + (mask_task is not None))
    with stage("loading the model and SAE"):
        model, sae, quizzes = _load(model_path, sae_path, tasks, n_per_task, seed, device)
    out = Path(out_dir)
    with stage("attribution"):
        result = attribution.attribute(model, sae, quizzes)
    result.plot(out / "attribution.png")
    written = [out / "attribution.png"]
    data: dict[str, Any] = {"attribution": result.to_json(), "findings": result.findings()}
    if top_k > 0:
        with stage("causal tests"):
            data["causal"] = _causal_tests(model, sae, quizzes, result, top_k, amplify, data)
    if mask_task is not None:
        rows = quizzes.subset(quizzes.tasks == mask_task)
        if len(rows) == 0:
            raise ConfigError(f"--mask-task {mask_task!r} is not among the quiz set's tasks")
        with stage("learned mask"):
            mask = attribution.learned_mask(
                model, sae, rows, penalty, mask_steps, gate=gate, seed=seed
            )
        mask.plot(out / "mask.png")
        written.append(out / "mask.png")
        kept = (
            attribution.ablate_latents(model, sae, rows, mask.kept, invert=True)
            if mask.kept
            else None
        )
        data["mask"] = {
            **mask.to_json(),
            "task": mask_task,
            "keep_only": kept.to_json() if kept else None,
        }
        data["findings"] += mask.findings() + (kept.findings() if kept else [])
    written.append(_write_json(out / "attribution.json", data))
    _echo(written)


def _causal_tests(model, sae, quizzes, result, top_k: int, amplify: float, data: dict) -> dict:
    """Per task, its top_k latents ablated and amplified; their findings go into `data`."""
    from gridlens.analysis.core import grid_metrics
    from gridlens.sae import attribution

    causal = {}
    for task in result.tasks:
        rows = quizzes.subset(quizzes.tasks == task)
        latents = [j for j, a in result.top_latents(task, top_k) if a > 0]
        if not latents:
            continue
        base = grid_metrics(model, rows.tokens, greedy=True).summary(rows.tasks)
        zeroed = attribution.ablate_latents(model, sae, rows, latents, baseline=base)
        amplified = attribution.amplify_latents(model, sae, rows, latents, amplify, baseline=base)
        causal[task] = {"ablate": zeroed.to_json(), "amplify": amplified.to_json()}
        data["findings"] += zeroed.findings() + amplified.findings()
    return causal


@click.command("pairs")
@_common
@click.option(
    "--saes",
    default=None,
    help="comma-separated SAE directories to loop over "
    "(default: --sae alone); each is studied on its own",
)
@click.option(
    "--k",
    "top_k",
    default=5,
    show_default=True,
    type=int,
    help="(position, latent) pairs zeroed per quiz",
)
@click.option(
    "--n-latents", default=40, show_default=True, type=int, help="latents in the expression matrix"
)
@click.option("--clusters", default=4, show_default=True, type=int, help="example clusters")
@click.option(
    "--check-tasks",
    default="all",
    show_default=True,
    help="tasks whose rules are checked on the outputs",
)
def pairs(
    model_path,
    sae_path,
    tasks,
    n_per_task,
    seed,
    out_dir,
    device,
    saes,
    top_k,
    n_latents,
    clusters,
    check_tasks,
) -> None:
    """Seed 004: per-quiz attribution in the SAE basis, the clustered latent x example matrix,
    and each quiz's top-k (position, latent) pairs of each sign zeroed while generating."""
    from gridlens.sae.attribution import attribution_study
    from gridlens.sae.io import load_sae

    if top_k < 1 or n_latents < 2 or clusters < 1:
        raise ConfigError("--k and --clusters must be >= 1 and --n-latents >= 2")
    model, first, quizzes = _load(model_path, sae_path, tasks, n_per_task, seed, device)
    paths = [p.strip() for p in saes.split(",") if p.strip()] if saes else [sae_path]
    family = {
        Path(p).name or p: first if p == sae_path else load_sae(p, device=model.device)
        for p in paths
    }
    for name, sae in family.items():
        if sae.cfg.hook_name not in model.hook_names:
            raise ConfigError(f"SAE {name} reads {sae.cfg.hook_name!r}, which the model lacks")
    if len(family) != len(paths):
        raise ConfigError(f"--saes names must differ (their folder names are the labels): {paths}")
    study = attribution_study(model, family, quizzes, top_k, check_tasks, n_latents, clusters)
    out = Path(out_dir)
    study.plot(out / "pairs.png")
    written = [out / "pairs.png"]
    for i, (name, clustered) in enumerate(study.expression.items()):
        written.append(out / f"expression_{i}_{_slug(name)}.png")
        clustered.plot(written[-1])
    data = {**study.to_json(), "findings": study.findings()}
    written.append(_write_json(out / "pairs.json", data))
    for line in study.findings():
        click.echo(line)
    _echo(written)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:40]


COMMANDS = [features, dashboard, steer, attribute, pairs]
