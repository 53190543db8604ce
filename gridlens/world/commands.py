"""`gridlens world ...`: show quizzes, render the gallery, write datasets, check quiz files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from gridlens.errors import ConfigError, GridlensError, TokenError
from gridlens.integrity import load_pickle
from gridlens.io import OutputPath

STRUCTURE_HELP = (
    "forward (A, f_A, B, f_B), inverse, backward, backward_inverse, generation, a comma-separated "
    "list of them, or 'mix' (uniform over all five)"
)


def _positive(name: str, value: int, most: int | None = None) -> None:
    if value < 1 or (most is not None and value > most):
        bound = f"1..{most}" if most is not None else ">= 1"
        raise ConfigError(f"{name} must be {bound}, got {value}")


def _seed(seed: int) -> None:
    if seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {seed}")


def _structure(value: str | None):
    if value is None:
        return None
    if "," in value:
        return [s.strip() for s in value.split(",") if s.strip()]
    return value


_HIGHLIGHT = click.option(
    "--highlight",
    type=click.Choice(["none", "changes", "noise"]),
    default="none",
    is_flag=False,
    flag_value="changes",
    show_default=True,
    help="Outline the cells that change between X and f(X), or the noisy cells "
    "(--highlight alone: changes).",
)


def _png_path(out: str) -> Path:
    path = Path(out)
    if path.suffix.lower() != ".png":
        raise ConfigError(f"--out {out!r} must name a .png file")
    if path.is_dir():
        raise ConfigError(f"--out {out!r} is a folder; give a .png file name")
    return path


@click.group()
def world() -> None:
    """The culture grid world: look at quizzes, write datasets, check quizzes."""


@world.command()
@click.option(
    "--task",
    "-t",
    "tasks",
    default="default",
    show_default=True,
    help="A task, comma-separated tasks, 'default' (the 8 released) or 'all'.",
)
@click.option("-n", "n", type=int, default=4, show_default=True, help="Number of quizzes.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--structure", default=None, help=f"Quiz structure: {STRUCTURE_HELP}. Default: forward."
)
@click.option(
    "--noise",
    type=float,
    default=0.0,
    show_default=True,
    help="Prompt-noise probability per cell of the third grid.",
)
@click.option("--height", type=int, default=10, show_default=True)
@click.option("--width", type=int, default=10, show_default=True)
@_HIGHLIGHT
@click.option(
    "--out",
    "-o",
    type=OutputPath("file"),
    default=None,
    help="Write a PNG here instead of printing.",
)
@click.option("--columns", type=int, default=None, help="Quizzes side by side in the PNG.")
@click.option("--cell", type=int, default=14, show_default=True, help="Cell size in pixels.")
@click.option(
    "--color/--no-color",
    default=None,
    help="Terminal colours (default: on a terminal unless NO_COLOR is set).",
)
def show(tasks, n, seed, structure, noise, height, width, highlight, out, columns, cell, color):
    """Generate quizzes and print them to the terminal, or render them to a PNG with --out.

    Example: gridlens world show --task frame -n 8 --out frame.png
    """
    from gridlens.world.generate import generate
    from gridlens.world.render import print_quizzes, render_png

    _positive("-n", n, 1000)
    _seed(seed)
    if columns is not None:
        _positive("--columns", columns)
    path = _png_path(out) if out is not None else None
    batch = generate(tasks, n, seed=seed, structure=_structure(structure), noise=noise,
                     height=height, width=width)  # fmt: skip
    mark = None if highlight == "none" else highlight
    if path is None:
        print_quizzes(batch, color=color, highlight=mark)
    else:
        render_png(batch, path, highlight=mark, columns=columns, cell=cell)
        click.echo(str(path.resolve()))


@world.command()
@click.option(
    "--out",
    "-o",
    type=OutputPath("file"),
    default="gallery.png",
    show_default=True,
    help="The PNG to write.",
)
@click.option("-n", "--per-task", type=int, default=3, show_default=True, help="Quizzes per task.")
@click.option(
    "--tasks",
    default="all",
    show_default=True,
    help="Tasks to show: 'all', 'default' or comma-separated names.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--cell", type=int, default=12, show_default=True, help="Cell size in pixels.")
@_HIGHLIGHT
def gallery(out, per_task, tasks, seed, cell, highlight):
    """Render a few quizzes of every task to one PNG and print its path.

    Each row shows one task; every quiz is in the forward structure (A, f(A), B, f(B)), with
    the grid to predict, f(B), framed. The 8 tasks of the released models are starred (*).
    """
    import numpy as np
    import torch

    from gridlens.world.generate import generate
    from gridlens.world.render import render_png
    from gridlens.world.tasks import DEFAULT_TASKS, resolve_tasks

    _positive("--per-task", per_task, 20)
    _seed(seed)
    path = _png_path(out)
    names = resolve_tasks(tasks)
    parts, captions, masks = [], [], []
    for k, name in enumerate(names):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(k,)))
        batch = generate(name, per_task, seed=rng)
        parts.append(batch.tokens)
        if highlight != "none":
            masks.append(batch.token_annotations(highlight) > 0)
        captions += [f"{name} *" if name in DEFAULT_TASKS else name] * per_task
    mask = np.concatenate(masks) if masks else None
    render_png(torch.cat(parts), path, captions=captions, highlight=mask, columns=per_task,
               cell=cell)  # fmt: skip
    click.echo(str(path.resolve()))


@world.command()
@click.argument("out_dir", type=OutputPath("dir"))
@click.option("-n", "n", type=int, default=1_000_000, show_default=True, help="Quizzes.")
@click.option(
    "--tasks",
    default="default",
    show_default=True,
    help="'default' (the 8 released), 'all' or comma-separated names.",
)
@click.option("--structure", default="mix", show_default=True, help=STRUCTURE_HELP + ".")
@click.option(
    "--noise",
    type=float,
    default=0.05,
    show_default=True,
    help="Prompt-noise probability (forward and inverse structures only).",
)
@click.option("--shard-size", type=int, default=100_000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--height", type=int, default=10, show_default=True)
@click.option("--width", type=int, default=10, show_default=True)
@click.option("--chunk-size", type=int, default=10_000, show_default=True, hidden=True)
@click.option("--progress/--no-progress", default=True, show_default=True)
def dataset(out_dir, n, tasks, structure, noise, shard_size, seed, height, width, chunk_size,
            progress):  # fmt: skip
    """Write N quizzes as checksummed shards in OUT_DIR, with a manifest.

    Resumable: re-running the same command keeps complete, verified shards and writes the
    rest. Read it back with gridlens.world.dataset.open_dataset(OUT_DIR).batches(256).
    """
    from gridlens.world.dataset import write_dataset

    manifest = write_dataset(out_dir, n, tasks=tasks, structure=_structure(structure),
                             noise=noise, shard_size=shard_size, seed=seed, height=height,
                             width=width, chunk_size=chunk_size, progress=progress)  # fmt: skip
    click.echo(
        f"{out_dir}: {manifest['count']} quizzes in {len(manifest['shards'])} shards "
        f"({', '.join(manifest['tasks'])})"
    )


def _load_tokens(path: Path, task: str):
    """Tokens from .npy, .npz (key 'tokens', the task's name, or a single array), .safetensors
    (key 'tokens') or .pt/.pth (a tensor, weights-only loading)."""
    import numpy as np
    import torch

    suffix = path.suffix.lower()
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        if suffix == ".npy":
            return torch.as_tensor(np.load(path, allow_pickle=False))
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                keys = list(data.keys())
                key = "tokens" if "tokens" in keys else task if task in keys else None
                if key is None and len(keys) == 1:
                    key = keys[0]
                if key is None:
                    raise TokenError(
                        f"{path}: no array named 'tokens' or {task!r} (arrays: {', '.join(keys)})"
                    )
                return torch.as_tensor(data[key])
        if suffix == ".safetensors":
            from safetensors.numpy import load_file

            data = load_file(path)
            if "tokens" not in data:
                raise TokenError(f"{path}: no tensor named 'tokens'")
            return torch.as_tensor(data["tokens"])
        if suffix in (".pt", ".pth"):
            data = load_pickle(path, "token file", TokenError)
            if isinstance(data, dict) and "tokens" in data:
                data = data["tokens"]
            if not isinstance(data, torch.Tensor):
                raise TokenError(f"{path}: expected a token tensor, got {type(data).__name__}")
            return data
    except GridlensError:
        raise
    except Exception as error:  # a malformed file of a known type
        raise TokenError(f"{path}: cannot read tokens ({type(error).__name__}: {error})") from None
    raise ConfigError(f"{path}: unsupported file type {suffix!r} (.npy, .npz, .safetensors, .pt)")


@world.command()
@click.argument("task")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--height", type=int, default=None, help="Grid height (default: from the length).")
@click.option("--width", type=int, default=None, help="Grid width (default: from the length).")
@click.option(
    "--json",
    "json_out",
    type=OutputPath("file"),
    default=None,
    help="Also write the verdicts as JSON.",
)
def check(task, file, height, width, json_out):
    """Check which quizzes in FILE are valid instances of TASK.

    FILE holds tokens [n, L] (.npy, .npz, .safetensors or .pt) in any structure; each quiz is
    reordered to (A, f_A, B, f_B) by its markers first. Prints the count of valid quizzes.
    """
    from gridlens.io import atomic_write
    from gridlens.world import structures as st
    from gridlens.world.generate import check as check_quizzes
    from gridlens.world.tasks import get_task
    from gridlens.world.tokens import grid_size_from_length

    get_task(task)  # unknown names fail before reading anything
    tokens = _load_tokens(Path(file), task)
    if tokens.ndim == 1:
        tokens = tokens[None]
    if tokens.ndim != 2:
        raise TokenError(f"{file}: tokens must have shape [n, L], got {list(tokens.shape)}")
    if height is None or width is None:
        height, width = grid_size_from_length(tokens.shape[1])
    ok = check_quizzes(task, st.to_forward_tokens(tokens, height, width), height, width)
    valid = int(ok.sum())
    click.echo(f"{task}: {valid}/{len(ok)} quizzes valid")
    if json_out is not None:
        report = {"task": task, "file": str(file), "count": len(ok), "valid": valid,
                  "invalid_indices": (~ok).nonzero().flatten().tolist()}  # fmt: skip
        data = json.dumps(report, indent=1).encode()
        atomic_write(json_out, lambda handle: handle.write(data))


@world.command(name="tasks")
def list_tasks():
    """List the tasks (the 8 of the released models are starred)."""
    from gridlens.world.tasks import DEFAULT_TASKS, TASKS, get_task

    for name in TASKS:
        try:
            description = get_task(name).description
        except ImportError:  # pragma: no cover - a task module not written yet
            description = "(not available)"
        star = "*" if name in DEFAULT_TASKS else " "
        click.echo(f"{star} {name:14s} {description}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(world())
