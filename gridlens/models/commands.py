"""`gridlens model ...`: inspect and convert checkpoints."""

from __future__ import annotations

import json

import click

from gridlens.errors import CheckpointError
from gridlens.io import OutputPath


@click.group()
def model() -> None:
    """GridGPT checkpoints: show what a file holds, convert between formats."""


@model.command()
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
def info(path: str, as_json: bool) -> None:
    """Configuration and size of a checkpoint (original .pth, fork layout or ours)."""
    from gridlens.models.checkpoints import describe

    result = describe(path)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    cfg = result["config"]
    click.echo(f"{path}: {result['n_params'] / 1e6:.2f}M parameters")
    for key, value in cfg.items():
        click.echo(f"  {key:12s} {value}")


@model.command()
@click.argument("source")
@click.argument("target", type=OutputPath("any"))
@click.option(
    "--to",
    "fmt",
    type=click.Choice(["gridlens", "original", "fork"]),
    default="gridlens",
    show_default=True,
    help="gridlens: a directory with config.json + model.safetensors (or one .safetensors file); "
    "original/fork: torch.save((state_dict, accuracy)) readable by Fleuret's code",
)
@click.option("--overwrite", is_flag=True, help="replace TARGET if it exists")
def convert(source: str, target: str, fmt: str, overwrite: bool) -> None:
    """Read any supported checkpoint SOURCE and write it to TARGET."""
    import os
    import tempfile
    from pathlib import Path

    import torch

    from gridlens.models.checkpoints import load, save, to_original_state_dict

    net = load(source)
    out = Path(target)
    if out.exists() and not overwrite:
        raise CheckpointError(f"{out}: exists (pass --overwrite to replace it)")
    if fmt == "gridlens":
        save(net, out)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
        os.close(fd)
        try:
            torch.save((to_original_state_dict(net, fmt), float("nan")), tmp)
            os.replace(tmp, out)
        finally:
            Path(tmp).unlink(missing_ok=True)
    click.echo(f"wrote {out} ({fmt})")
