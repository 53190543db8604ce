"""`gridlens report`: the whole analysis of a model as one HTML page."""

from __future__ import annotations

import json
import shlex
import signal
import sys

import click

from gridlens.io import OutputPath


@click.command("report", context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--model",
    default="default",
    show_default=True,
    help="'default' (the shipped model), a run or model directory, a model file or checkpoint.",
)
@click.option(
    "--tasks", default="default", show_default=True, help="Comma-separated tasks, 'default', 'all'."
)
@click.option(
    "--out",
    type=OutputPath("dir"),
    default="report",
    show_default=True,
    help="Output folder (index.html, PNGs, report.json); an earlier report there is replaced.",
)
@click.option(
    "--size",
    type=click.Choice(["tiny", "small", "full"]),
    default="small",
    show_default=True,
    help="How many quizzes each stage uses: small takes minutes on a CPU, full much longer.",
)
@click.option(
    "-n",
    "--n-per-task",
    type=int,
    default=None,
    help="Analysis quizzes per task (overrides --size).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto (cuda if any), cpu, cuda:1")
@click.option(
    "--population",
    type=click.Path(file_okay=False),
    default=None,
    help="A `gridlens culture run` folder: adds a section on its culture.",
)
@click.option(
    "--sae",
    default=None,
    help="An SAE folder (ours or SAELens's) or 'default' for the SAE section, instead of the "
    "one the report picks or trains for the task-specific MLP.",
)
@click.option(
    "--transcoders",
    type=click.Path(file_okay=False),
    default=None,
    help="A `gridlens sae transcoder` folder: adds the attribution graph of the transform cell.",
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def report(
    model, tasks, out, size, n_per_task, seed, device, population, sae, transcoders, no_progress
) -> None:
    """Evaluate MODEL and run every circuit analysis on it; write OUT/index.html.

    \b
      gridlens report                                   # the shipped model, ./report/
      gridlens report --model runs/cpu --out runs/cpu/report --size full
      gridlens report --tasks frame,contact --n-per-task 32
    """
    from gridlens.report.build import build_report
    from gridlens.training.trainer import resolve_device

    device = str(resolve_device(device))
    args = ["gridlens", "report", "--model", model, "--tasks", tasks, "--out", out]
    args += ["--size", size, "--seed", str(seed), "--device", device]
    if n_per_task is not None:
        args += ["--n-per-task", str(n_per_task)]
    if population is not None:
        args += ["--population", population]
    if sae is not None:
        args += ["--sae", sae]
    if transcoders is not None:
        args += ["--transcoders", transcoders]
    # SIGTERM as an exception, so the half-built folder beside --out is removed as on Ctrl-C
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        folder = build_report(
            model=model,
            tasks=tasks,
            out=out,
            size=size,
            seed=seed,
            device=device,
            progress=not no_progress,
            n_per_task=n_per_task,
            command=shlex.join(args),
            population=population,
            sae=sae,
            transcoders=transcoders,
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
    data = json.loads((folder / "report.json").read_text())
    for line in data["summary"]:
        click.echo(f"- {line}")
    click.echo(f"wrote {folder / 'index.html'} ({data['timings_s']['total']:.0f} s)")
