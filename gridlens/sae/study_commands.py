"""CLI commands that make new dictionaries from trained ones: `finetune` (KL fine-tuning) and
`split` (feature splitting across dictionary sizes). Plain click commands added to the `sae`
group from COMMANDS; each validates its paths first and writes SAE, JSON and PNG into --out."""

from __future__ import annotations

import json
from pathlib import Path

import click

from gridlens.errors import ConfigError
from gridlens.io import OutputPath, atomic_write


def _write_json(path: Path, data: dict) -> Path:
    text = (json.dumps(data, indent=1) + "\n").encode()
    return atomic_write(path, lambda handle: handle.write(text))


def _fresh(out: Path, names: list[str]) -> None:
    """Refuse to overwrite what a user already has in `out`."""
    taken = [n for n in names if (out / n).exists()]
    if taken:
        raise ConfigError(f"{out}: already holds {taken}; choose another --out")


@click.command("finetune")
@click.option("--model", "model_path", default="default", show_default=True, help="Model.")
@click.option("--sae", "sae_path", default="default", show_default=True, help="SAE directory.")
@click.option("--tasks", default="default", show_default=True, help="Tasks to train and score on.")
@click.option("--steps", type=int, default=60, show_default=True)
@click.option("-n", "batch_quizzes", type=int, default=16, show_default=True, help="Quizzes/step.")
@click.option("--lr", type=float, default=5e-4, show_default=True)
@click.option("--recon", type=float, default=0.1, show_default=True, help="FVU coefficient.")
@click.option("--sparsity", type=float, default=0.1, show_default=True, help="Relative L1.")
@click.option(
    "--positions",
    default="grid",
    show_default=True,
    type=click.Choice(["grid", "all", "no_markers"]),
)
@click.option("--held-out", type=int, default=4, show_default=True, help="Held-out quizzes/task.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default=None, help="cpu, cuda ... (default: where the model loads).")
@click.option("--out", type=OutputPath("dir"), required=True, help="Output folder.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def finetune(
    model_path, sae_path, tasks, steps, batch_quizzes, lr, recon, sparsity, positions, held_out,
    seed, device, out, no_progress,
):  # fmt: skip
    """KL fine-tuning: train the SAE spliced into the frozen model so the predicted grid's
    distribution matches the clean model's (plus a reconstruction term); writes the tuned SAE
    (SAELens format) to OUT/sae, finetune.json and finetune.png."""
    from gridlens.analysis.core import quiz_set
    from gridlens.models.checkpoints import load
    from gridlens.sae.finetune import FinetuneConfig, finetune_sae
    from gridlens.sae.io import load_sae, save_sae

    out = Path(out)
    _fresh(out, ["sae", "finetune.json", "finetune.png"])
    cfg = FinetuneConfig(steps, batch_quizzes, lr, recon, sparsity, positions, tasks, seed)
    model = load(model_path, device=device)
    sae = load_sae(sae_path, device=model.device)
    held = quiz_set(tasks, held_out, seed=seed + 1_000_003)
    result = finetune_sae(model, sae, cfg, held, progress=not no_progress)
    record = {**result.to_json(), "sae": str(sae_path), "model": str(model_path)}
    save_sae(result.sae, out / "sae", training={"finetune": record})
    data = {**record, "findings": result.findings()}
    written = [_write_json(out / "finetune.json", data), result.plot(out / "finetune.png")]
    for line in result.findings():
        click.echo(line)
    click.echo(f"wrote {out / 'sae'}, " + ", ".join(str(p) for p in written))


COMMANDS = [finetune]
