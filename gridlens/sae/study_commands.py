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
@click.option("--device", default="auto", show_default=True, help="auto (cuda if any), cpu, cuda:1")
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
    from gridlens.training.trainer import resolve_device

    out = Path(out)
    _fresh(out, ["sae", "finetune.json", "finetune.png"])
    cfg = FinetuneConfig(steps, batch_quizzes, lr, recon, sparsity, positions, tasks, seed)
    model = load(model_path, device=resolve_device(device))
    sae = load_sae(sae_path, device=model.device)
    held = quiz_set(tasks, held_out, seed=seed + 1_000_003)
    result = finetune_sae(model, sae, cfg, held, progress=not no_progress)
    record = {**result.to_json(), "sae": str(sae_path), "model": str(model_path)}
    save_sae(result.sae, out / "sae", training={"finetune": record})
    data = {**record, "findings": result.findings()}
    result.plot(out / "finetune.png")
    written = [_write_json(out / "finetune.json", data), out / "finetune.png"]
    for line in result.findings():
        click.echo(line)
    click.echo(f"wrote {out / 'sae'}, " + ", ".join(str(p) for p in written))


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        sizes = []
    if len(sizes) < 2 or sizes != sorted(set(sizes)) or sizes[0] < 1:
        raise ConfigError(f"--sizes must be two or more increasing integers, got {text!r}")
    return sizes


@click.command("split")
@click.option("--model", "model_path", default="default", show_default=True, help="Model.")
@click.option("--site", default="blocks.3.hook_mlp_out", show_default=True, help="Hook name.")
@click.option("--sizes", default="32,64,128", show_default=True, help="Dictionary sizes.")
@click.option("--saes", default=None, help="Comma-separated SAE directories instead of training.")
@click.option("--arch", default="topk", show_default=True, help="Architecture of the family.")
@click.option("--k", type=int, default=8, show_default=True, help="topk / batchtopk k.")
@click.option("--tokens", type=int, default=100_000, show_default=True, help="Rows per SAE.")
@click.option("--batch-size", type=int, default=1024, show_default=True)
@click.option(
    "--train-quizzes",
    "n_quizzes",
    type=int,
    default=200,
    show_default=True,
    help="Quizzes whose activations the family trains on.",
)
@click.option("--tasks", default="default", show_default=True, help="Tasks (training, labels).")
@click.option(
    "-n", "--n-per-task", type=int, default=4, show_default=True, help="Quizzes to label on."
)
@click.option(
    "--roots",
    default=None,
    help="Latents of the smallest SAE to draw (default: the 3 with the largest trees).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto (cuda if any), cpu, cuda:1")
@click.option("--out", type=OutputPath("dir"), required=True, help="Output folder.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def split(
    model_path, site, sizes, saes, arch, k, tokens, batch_size, n_quizzes, tasks, n_per_task,
    roots, seed, device, out, no_progress,
):  # fmt: skip
    """Feature splitting: train SAEs of growing size on one site (or read --saes), match each
    latent to its parent one size down by decoder cosine, and draw the splitting tree with the
    world-derived labels; writes OUT/sae_<size> (SAELens format), split.json and split.png."""
    from gridlens.analysis.core import quiz_set
    from gridlens.models.checkpoints import load
    from gridlens.sae.io import load_sae, save_sae
    from gridlens.sae.splitting import feature_splitting
    from gridlens.training.trainer import resolve_device

    out = Path(out)
    sizes = _sizes(sizes)
    try:
        chosen = [int(r) for r in roots.split(",") if r.strip()] if roots else None
    except ValueError:
        raise ConfigError(f"--roots must be comma-separated latents, got {roots!r}") from None
    trained = saes is None
    _fresh(out, ["split.json", "split.png", *([f"sae_{s}" for s in sizes] if trained else [])])
    model = load(model_path, device=resolve_device(device))
    if trained:
        family = _train_family(model, site, sizes, arch, k, tokens, batch_size, n_quizzes, tasks,
                               seed, not no_progress)  # fmt: skip
        for sae in family:
            save_sae(sae, out / f"sae_{sae.cfg.d_sae}", training={"family": sizes})
    else:
        family = [load_sae(p.strip(), device=model.device) for p in saes.split(",") if p.strip()]
    result = feature_splitting(model, family, quiz_set(tasks, n_per_task, seed=seed + 1))
    data = {**result.to_json(), "findings": result.findings()}
    result.plot(out / "split.png", chosen)
    written = [_write_json(out / "split.json", data), out / "split.png"]
    for line in result.findings():
        click.echo(line)
    click.echo("wrote " + ", ".join(str(p) for p in written))


def _train_family(model, site, sizes, arch, k, tokens, batch_size, n_quizzes, tasks, seed, bar):
    from gridlens.sae.activations import collect, site_width
    from gridlens.sae.model import SAEConfig
    from gridlens.sae.splitting import train_family
    from gridlens.sae.train import SAETrainConfig
    from gridlens.world import generate

    base = SAEConfig(site_width(model, site), min(sizes), arch, site, k=min(k, min(sizes)))
    cfg = SAETrainConfig(
        tokens=tokens, batch_size=batch_size, warmup_steps=5, dead_after_tokens=tokens // 5,
        seed=seed, device=str(model.device), progress=bar, log_every=10**9,
        checkpoint_every=10**9,
    )  # fmt: skip
    quizzes = generate(tasks, n_quizzes, seed=seed, structure="mix").tokens
    rows = collect(model, quizzes, site, "grid", 64)
    return train_family(rows, base, sizes, cfg, progress=bar)


COMMANDS = [finetune, split]
