"""`gridlens analyze ...`: one analysis at a time, each writing its PNGs and a JSON of every
number into --out and printing its findings."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from gridlens.errors import ConfigError
from gridlens.io import OutputPath, save_or_rescue
from gridlens.progress import Stages

CONTEXT = {"help_option_names": ["-h", "--help"]}


def _common(function: Callable) -> Callable:
    """The options every analysis shares: model, quizzes, output folder, device."""
    options = [
        click.option(
            "--model",
            default="default",
            show_default=True,
            help="'default', a run or model directory, a model file or a checkpoint.",
        ),
        click.option(
            "--tasks",
            default="default",
            show_default=True,
            help="Comma-separated tasks, 'default' (the 8) or 'all'.",
        ),
        click.option(
            "-n",
            "--n-per-task",
            type=int,
            default=16,
            show_default=True,
            help="Quizzes (or pairs) per task.",
        ),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option(
            "--out",
            type=OutputPath("dir"),
            default="analysis",
            show_default=True,
            help="Folder for the PNGs and JSON.",
        ),
        click.option(
            "--device", default="auto", show_default=True, help="auto (cuda if any), cpu, cuda:1"
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _setup(command: str, options: tuple, stages: int, quizzes: bool = True):
    """(model, task names, quiz set or None, the command's Stages) after checking `options`
    (model, tasks, n_per_task, seed, device); `stages` counts the computations between loading
    the model and drawing the figures."""
    from gridlens.analysis.core import quiz_set
    from gridlens.training.commands import resolve_model
    from gridlens.training.trainer import resolve_device
    from gridlens.world.tasks import resolve_tasks

    model, tasks, n_per_task, seed, device = options
    if n_per_task < 1:
        raise ConfigError(f"--n-per-task must be >= 1, got {n_per_task}")
    if seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {seed}")
    if not any(part.strip() for part in tasks.split(",")):
        raise ConfigError(f"--tasks {tasks!r} selects no task")
    names = resolve_tasks(tasks)
    where = resolve_device(device)
    stage = Stages(f"analyze {command}", stages + 2)
    with stage("loading the model"):
        loaded = resolve_model(model, where)[0].eval()
        chosen = quiz_set(names, n_per_task, seed=seed) if quizzes else None
    return loaded, names, chosen, stage


def _names(text: str) -> str | list[str]:
    """A group name ('layers', 'heads', ...) as is; a comma-separated list as a list."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise ConfigError(f"no component names in {text!r}")
    return parts[0] if len(parts) == 1 else parts


def _write_json(path: Path, data: dict[str, Any]) -> Path:
    from gridlens.io import atomic_write

    text = (json.dumps(data, indent=2) + "\n").encode()
    return atomic_write(path, lambda handle: handle.write(text))


Draw = Callable[[Path], list[Path]]


def _png(result: Any, path: Path, **options) -> Path:
    """Write `result.plot` to `path` (a PNG) and return the path, for the files written."""
    result.plot(path, **options)
    return path


def _report(
    stage: Stages, out: str, name: str, results: dict[str, Any], draw: Draw, **extra
) -> None:
    """Draw the figures (`draw(folder)` returns their paths) and write NAME.json (every
    result's to_json) into `out`, or into a rescue folder if that fails; print the findings
    and files."""
    payload = {**extra, **{key: r.to_json() for key, r in results.items()}}

    def write(place: Callable[[Path], Path]) -> list[Path]:
        folder = place(Path(out))
        return [*draw(folder), _write_json(folder / f"{name}.json", payload)]

    with stage("figures"):
        written = save_or_rescue(write, "analysis results")
    for result in results.values():
        for line in result.findings():
            click.echo(f"- {line}")
    for path in written:
        click.echo(f"wrote {path}")


@click.group("analyze", context_settings=CONTEXT)
def analyze() -> None:
    """Circuit analyses of a model, one at a time (the report runs them all).

    \b
      gridlens analyze ablate --components heads --method mean
      gridlens analyze attention --head L0H1
      gridlens analyze patch --kind parameter --components heads
      gridlens analyze atp --method 'atp*' --compare
      gridlens analyze generate --ablate L0H1
      gridlens analyze probe --annotation changes
    """


@analyze.command("ablate", context_settings=CONTEXT)
@_common
@click.option(
    "--components",
    default="layers",
    show_default=True,
    help="'layers', 'heads', 'neurons' or comma-separated names (L0.attn, L1.mlp, L2H3, L0N17).",
)
@click.option(
    "--method", type=click.Choice(["zero", "mean", "resample"]), default="mean", show_default=True
)
@click.option("--greedy", is_flag=True, help="Also generate every grid under each ablation.")
def ablate_command(model, tasks, n_per_task, seed, out, device, components, method, greedy):
    """Ablate each component on its own; the grid loss / accuracy lost, per task."""
    from gridlens.analysis.ablation import ablate

    options = (model, tasks, n_per_task, seed, device)
    loaded, _, quizzes, stage = _setup("ablate", options, 1)
    chosen = _names(components)
    with stage("ablations"):
        result = ablate(loaded, quizzes, chosen, method=method, greedy=greedy, seed=seed)
    name = f"ablate_{method}"
    _report(stage, out, name, {"ablation": result}, lambda d: [_png(result, d / f"{name}.png")])


@analyze.command("attention", context_settings=CONTEXT)
@_common
@click.option(
    "--head", "heads", multiple=True, help="Draw this head's pattern (repeatable), e.g. L0H1."
)
@click.option("--quiz", type=int, default=0, show_default=True, help="Quiz drawn for --head.")
@click.option("--query", type=int, default=None, help="Predicted cell 0..99 (default: sharpest).")
def attention_command(model, tasks, n_per_task, seed, out, device, heads, quiz, query):
    """Classify every head by where it attends; draw the patterns of --head heads."""
    from gridlens.analysis.attention import classify_heads, plot_pattern
    from gridlens.analysis.core import ComponentError, parse_component

    loaded, _, quizzes, stage = _setup("attention", (model, tasks, n_per_task, seed, device), 1)
    for head in heads:  # before any work, so bad input writes nothing
        if parse_component(head, loaded.cfg).kind != "head":
            raise ComponentError(f"--head {head!r}: expected a head, e.g. L0H1")
    if not 0 <= quiz < len(quizzes):
        raise ConfigError(f"--quiz must be 0..{len(quizzes) - 1}, got {quiz}")
    with stage("attention patterns"):
        result = classify_heads(loaded, quizzes)

    def draw(folder: Path) -> list[Path]:
        patterns = [folder / f"pattern_{h}.png" for h in heads]
        for head, path in zip(heads, patterns, strict=True):
            plot_pattern(loaded, quizzes.tokens[quiz], head, path, query=query)
        return [_png(result, folder / "attention.png"), *patterns]

    _report(stage, out, "attention", {"heads": result}, draw)


@analyze.command("direct", context_settings=CONTEXT)
@_common
@click.option(
    "--cell", type=int, default=None, help="DLA of one predicted cell 0..99 (default all)."
)
def direct_command(model, tasks, n_per_task, seed, out, device, cell):
    """Copy scores of every head's direct path, and the logit lens with direct logit
    attribution."""
    from gridlens.analysis.direct import copy_scores, logit_lens

    loaded, _, quizzes, stage = _setup("direct", (model, tasks, n_per_task, seed, device), 2)
    with stage("copy scores"):
        copies = copy_scores(loaded, quizzes)
    with stage("logit lens"):
        lens = logit_lens(loaded, quizzes, cell=cell)
    _report(
        stage,
        out,
        "direct",
        {"copy_scores": copies, "logit_lens": lens},
        lambda d: [_png(copies, d / "copy_scores.png"), _png(lens, d / "logit_lens.png")],
    )


_KIND = click.option(
    "--kind",
    type=click.Choice(["parameter", "colour", "task"]),
    default="parameter",
    show_default=True,
    help="What the corrupted quiz changes: the task's parameter, a colour, or the task's rule.",
)
_COMPONENTS = click.option(
    "--components",
    default="heads",
    show_default=True,
    help="'heads', 'layers', 'neurons', 'resid' or comma-separated names.",
)


@analyze.command("patch", context_settings=CONTEXT)
@_common
@_KIND
@_COMPONENTS
def patch_command(model, tasks, n_per_task, seed, out, device, kind, components):
    """Activation patching: each component from the clean run into the corrupted one; the
    share of the clean answer's log-prob it restores, per task."""
    from gridlens.analysis.patching import activation_patching, make_pairs

    options = (model, tasks, n_per_task, seed, device)
    loaded, names, _, stage = _setup("patch", options, 2, quizzes=False)
    with stage("quiz pairs"):
        pairs = make_pairs(kind, names, n_per_task, seed)
    with stage("activation patching"):
        result = activation_patching(loaded, pairs, _names(components))
    name = f"patch_{kind}"
    results = {"activation_patching": result}
    _report(stage, out, name, results, lambda d: [_png(result, d / f"{name}.png")])


@analyze.command("atp", context_settings=CONTEXT)
@_common
@_KIND
@_COMPONENTS
@click.option("--method", type=click.Choice(["atp", "atp*"]), default="atp", show_default=True)
@click.option("--compare", is_flag=True, help="Also run activation patching and compare.")
def atp_command(model, tasks, n_per_task, seed, out, device, kind, components, method, compare):
    """Attribution patching (AtP, AtP*): the gradient estimate of activation patching."""
    from gridlens.analysis.attribution import attribution_patching
    from gridlens.analysis.attribution import compare as compare_results
    from gridlens.analysis.patching import activation_patching, make_pairs

    options = (model, tasks, n_per_task, seed, device)
    loaded, names, _, stage = _setup("atp", options, 3 if compare else 2, quizzes=False)
    with stage("quiz pairs"):
        pairs = make_pairs(kind, names, n_per_task, seed)
    chosen = _names(components)
    with stage(method):
        result = attribution_patching(loaded, pairs, chosen, method=method)
    stem = f"atp_{kind}" if method == "atp" else f"atpstar_{kind}"
    results: dict[str, Any] = {method: result}
    extra: dict[str, Any] = {}
    if compare:
        with stage("activation patching"):
            results["activation_patching"] = activation_patching(loaded, pairs, chosen)
        extra["agreement"] = compare_results(results["activation_patching"], result)
        click.echo(f"agreement with activation patching: {_agreement(extra['agreement'])}")

    def draw(folder: Path) -> list[Path]:
        figures = [_png(result, folder / f"{stem}.png")]
        if compare:
            figures.append(_png(results["activation_patching"], folder / f"patch_{kind}.png"))
        return figures

    _report(stage, out, stem, results, draw, **extra)


def _agreement(data: dict[str, Any]) -> str:
    """A one-line rendering of compare()'s numbers."""
    parts = []
    for key, value in data.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            parts.append(f"{key} {value:.3g}")
    return ", ".join(parts) or json.dumps(data)


@analyze.command("generate", context_settings=CONTEXT)
@_common
@click.option(
    "--ablate",
    "components",
    required=True,
    help="Components ablated together during generation (comma-separated names, or 'heads').",
)
@click.option(
    "--method", type=click.Choice(["zero", "mean", "resample"]), default="mean", show_default=True
)
def generate_command(model, tasks, n_per_task, seed, out, device, components, method):
    """Generate the answer grids autoregressively with components ablated: accuracy per task
    and where the first wrong cell falls."""
    from gridlens.analysis.ablation import ablation_hooks
    from gridlens.analysis.intervention import generate_under

    loaded, _, quizzes, stage = _setup("generate", (model, tasks, n_per_task, seed, device), 1)
    with stage("generation"):
        hooks = ablation_hooks(loaded, quizzes, _names(components), method=method, seed=seed)
        result = generate_under(loaded, quizzes, hooks)
    _report(
        stage,
        out,
        "generate",
        {"generation": result},
        lambda d: [_png(result, d / "generate.png")],
        ablated=components,
        method=method,
    )


@analyze.command("probe", context_settings=CONTEXT)
@_common
@click.option(
    "--annotation",
    default="changes",
    show_default=True,
    help="What the probes predict per token: changes, roles, objects, ...",
)
@click.option(
    "--sites", default=None, help="Comma-separated hook names (default: the residual stream)."
)
@click.option(
    "--control",
    type=click.Choice(["type", "permute"]),
    default="type",
    show_default=True,
    help="The control task: 'type' gives each token type (the colour read) a random label "
    "drawn from the training labels (Hewitt & Liang); 'permute' shuffles the labels.",
)
def probe_command(model, tasks, n_per_task, seed, out, device, annotation, sites, control):
    """Linear probes per layer for a per-token annotation, each against the majority class and
    a control task (by default each token type gets a random label: a probe that reaches the
    control memorises token types rather than reading the annotation)."""
    from gridlens.analysis.probes import train_probes

    chosen = [s.strip() for s in sites.split(",") if s.strip()] if sites else None
    if sites is not None and not chosen:
        raise ConfigError(f"--sites {sites!r} names no hook")
    loaded, _, quizzes, stage = _setup("probe", (model, tasks, n_per_task, seed, device), 1)
    with stage("probes"):
        result = train_probes(loaded, quizzes, annotation, sites=chosen, seed=seed, control=control)
    name = f"probe_{annotation}"
    _report(stage, out, name, {"probes": result}, lambda d: [_png(result, d / f"{name}.png")])
