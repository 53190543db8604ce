"""`gridlens sae transcoder`: train one transcoder per MLP layer, then evaluate them together
(explained variance of each MLP output, loss recovered with every MLP replaced)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from gridlens.errors import ConfigError
from gridlens.io import OutputPath, atomic_write
from gridlens.sae.architectures import ARCHITECTURES


def _layers(spec: str, n_layers: int) -> list[int]:
    if spec == "all":
        return list(range(n_layers))
    try:
        layers = sorted({int(part) for part in spec.split(",") if part.strip()})
    except ValueError:
        raise ConfigError(
            f"--layers takes 'all' or comma-separated integers, got {spec!r}"
        ) from None
    bad = [lay for lay in layers if not 0 <= lay < n_layers]
    if bad or not layers:
        raise ConfigError(f"--layers {spec!r}: the model has layers 0..{n_layers - 1}")
    return layers


@click.command("transcoder")
@click.option("--model", "model_path", default="default", show_default=True, help="Model.")
@click.option("--layers", default="all", show_default=True, help="'all' or e.g. 0,2.")
@click.option("--arch", default="topk", show_default=True,
              type=click.Choice([a for a in ARCHITECTURES if a != "gated"]))  # fmt: skip
@click.option("--d-sae", type=int, default=512, show_default=True, help="Latents per layer.")
@click.option("--k", type=int, default=16, show_default=True, help="Active latents (topk).")
@click.option("--l0", type=float, default=None, help="L0 coefficient (jumprelu).")
@click.option("--skip", is_flag=True, help="Add a linear skip connection.")
@click.option("--tokens", type=int, default=200_000, show_default=True, help="Rows per layer.")
@click.option("--batch-size", type=int, default=2048, show_default=True)
@click.option("--lr", type=float, default=None)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("-n", "n_per_task", type=int, default=16, show_default=True,
              help="Evaluation quizzes per task.")  # fmt: skip
@click.option("--out", type=OutputPath("dir"), required=True, help="Folder (layer_L/ each).")
@click.option("--resume", is_flag=True, help="Continue unfinished layers from checkpoints.")
@click.option("--device", default=None, help="auto (default), cpu, cuda ...")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def transcoder(
    model_path, layers, arch, d_sae, k, l0, skip, tokens, batch_size, lr, seed, n_per_task, out,
    resume, device, no_progress,
):  # fmt: skip
    """Train transcoders (MLP input -> MLP output) with the SAE trainer, one per layer."""
    from gridlens.analysis.core import quiz_set
    from gridlens.models.checkpoints import load
    from gridlens.sae.train import SAETrainConfig, train_sae
    from gridlens.sae.transcoder import TranscoderConfig, evaluate_transcoders
    from gridlens.sae.transcoder_io import layer_dir, load_transcoder
    from gridlens.training import checkpoint as ckpt

    model = load(model_path, device=device)
    chosen = _layers(layers, model.cfg.n_layers)
    train_fields = {"tokens": tokens, "batch_size": batch_size, "seed": seed,
                    "buffer_quizzes": 64, "warmup_steps": 10, "dead_after_tokens": 50_000,
                    "device": device or "auto", "progress": not no_progress,
                    "extra": {"model": str(model_path)}}  # fmt: skip
    if lr is not None:
        train_fields["lr"] = lr
    if l0 is not None:
        train_fields["l0_coefficient"] = l0
    train_cfg = SAETrainConfig.from_dict(train_fields)
    trained, start = {}, time.perf_counter()
    for layer in chosen:
        cfg = TranscoderConfig.for_layer(
            layer, model.cfg.d_model, d_sae, architecture=arch, k=k, skip=skip
        )
        folder = layer_dir(out, layer)
        if resume and (folder / "training.json").is_file():
            trained[layer] = load_transcoder(folder, model.device)
            continue
        again = resume and ckpt.latest_checkpoint(folder) is not None
        trained[layer] = train_sae(model, cfg, train_cfg, folder, resume=again)
    metrics = evaluate_transcoders(model, trained, quiz_set("default", n_per_task, seed=seed + 1))
    metrics["seconds"] = time.perf_counter() - start
    text = (json.dumps(metrics, indent=2) + "\n").encode()
    atomic_write(Path(out) / "metrics.json", lambda h: h.write(text))
    for layer, row in metrics["layers"].items():
        click.echo(f"layer {layer}: explained variance {row['explained_variance']:.3f}, "
                   f"L0 {row['l0']:.1f}, dead {100 * row['dead_fraction']:.1f}%")  # fmt: skip
    click.echo(
        f"loss recovered with {len(trained)} MLP(s) replaced: {metrics['loss_recovered']:.3f} "
        f"(clean {metrics['loss_clean']:.4f}, replaced {metrics['loss_replaced']:.4f}, "
        f"zeroed {metrics['loss_zero']:.4f}); wrote {out}"
    )
