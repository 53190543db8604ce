"""`gridlens groundtruth train|eval`: SIIT training of models with known circuits, and scoring
SAEs / circuit discovery against them."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from gridlens.errors import ConfigError
from gridlens.groundtruth.shipped import SHIPPED
from gridlens.io import OutputPath, save_or_rescue
from gridlens.progress import Stages


@click.group()
def groundtruth() -> None:
    """Transformers with known circuits (strict IIT) and scoring methods against them."""


@groundtruth.command()
@click.option(
    "--bench",
    default="parenthesis",
    show_default=True,
    help="parenthesis, left_greater, duplicate_remover, unique_extractor, histogram, reversal, "
    "sort, modular_sum, all4, all8, or tasks joined by '+'.",
)
@click.option(
    "--subspaces", is_flag=True, help="Multi-task: each task gets its own slice of each shared MLP."
)
@click.option("--out", "out_dir", type=OutputPath("dir"), required=True)
@click.option("--d-model", type=int, default=None, help="Model width (default 64; 4-task 128).")
@click.option("--d-mlp", type=int, default=None, help="MLP width (default 128; 4-task 256).")
@click.option("--max-epochs", default=200, show_default=True)
@click.option("--eval-every", default=1, show_default=True)
@click.option(
    "--extra-epochs",
    default=0,
    show_default=True,
    help="Keep training this many epochs after first meeting the thresholds; keep the passing "
    "evaluation with the largest logit margin.",
)
@click.option("--batch-size", default=256, show_default=True)
@click.option("--n-train", default=5632, show_default=True, help="Training inputs per task.")
@click.option("--n-val", default=2000, show_default=True, help="Validation inputs per task.")
@click.option("--lr", default=1e-3, show_default=True)
@click.option("--lr-end", default=2e-4, show_default=True)
@click.option("--betas", default="0.9,0.9", show_default=True, help="Adam betas.")
@click.option(
    "--weights",
    default="0.4,1.0,0.4",
    show_default=True,
    help="behaviour,iit,strict loss weights (each applied once).",
)
@click.option(
    "--strict-mode", type=click.Choice(["one", "half", "all"]), default="half", show_default=True
)
@click.option(
    "--informative",
    default=0.0,
    show_default=True,
    help="Share of IIT sources picked (among --candidates draws) to change the high-level "
    "output most; 0: uniform sources.",
)
@click.option("--candidates", default=4, show_default=True, help="Sources drawn per example.")
@click.option(
    "--source-grad/--detach-sources",
    default=True,
    show_default=True,
    help="Differentiate the IIT and strict losses through the source activations too (the "
    "gradient of the interchange objective), or treat them as a detached cache.",
)
@click.option(
    "--init",
    default=None,
    help="Start from this run's weights (a `groundtruth train` folder or a shipped model's "
    "name) instead of a fresh model; the benchmark must be the same.",
)
@click.option("--seed", default=0, show_default=True)
@click.option("--threads", default=0, show_default=True, help="torch threads (0: default).")
@click.option(
    "--resume/--no-resume",
    default=True,
    show_default=True,
    help="Resume from OUT/checkpoint if present.",
)
def train(
    bench,
    subspaces,
    out_dir,
    d_model,
    d_mlp,
    max_epochs,
    eval_every,
    extra_epochs,
    batch_size,
    n_train,
    n_val,
    lr,
    lr_end,
    betas,
    weights,
    strict_mode,
    informative,
    candidates,
    source_grad,
    init,
    seed,
    threads,
    resume,
) -> None:
    """Train one benchmark with SIIT until 100% accuracy, IIA >= 99.3%, SIIA >= 99.95%."""
    from gridlens.groundtruth.figures import training_curves
    from gridlens.groundtruth.iit import TrainConfig, save_run
    from gridlens.groundtruth.iit import train as run_train
    from gridlens.groundtruth.spec import get_benchmark

    wb, wi, ws = _floats(weights, 3, "--weights")
    cfg = TrainConfig(
        batch_size=batch_size,
        n_train_per_task=n_train,
        n_val_per_task=n_val,
        max_epochs=max_epochs,
        lr=lr,
        lr_end=lr_end,
        betas=tuple(_floats(betas, 2, "--betas")),
        weight_behaviour=wb,
        weight_iit=wi,
        weight_strict=ws,
        strict_mode=strict_mode,
        informative=informative,
        candidates=candidates,
        source_grad=source_grad,
        eval_every=eval_every,
        extra_epochs=extra_epochs,
        seed=seed,
        threads=threads,
    )
    widths = {k: v for k, v in (("d_model", d_model), ("d_mlp", d_mlp)) if v is not None}
    b = get_benchmark(bench, subspaces=subspaces, **widths)
    out = Path(out_dir)
    click.echo(f"{b.name}: nodes {b.describe()['nodes']}; unused {b.describe()['unused']}")
    click.echo(
        f"betas {cfg.betas}, informative sources {cfg.informative} of {cfg.candidates}, "
        f"source gradient {cfg.source_grad}, max_epochs {cfg.max_epochs}, seed {cfg.seed}"
    )

    def progress(row: dict) -> None:
        if "accuracy" in row:
            click.echo(
                f"epoch {row['epoch']:4d}  {row['epoch_seconds']:.2f}s  loss "
                f"{row['loss_total']:.4f}  acc {row['accuracy']:.5f}  iia "
                f"{row['iia']:.5f}  siia {row['siia']:.5f}  margin {row['margin']:.3f}"
            )

    start = _init_model(init, b) if init else None
    model, result = run_train(
        b, cfg, model=start, progress=progress, checkpoint=out / "checkpoint" if resume else None
    )

    def write(place) -> None:
        folder = place(out)
        save_run(folder, model, b, cfg, result, subspaces, bench, widths, init)
        training_curves(result.history, folder / "training.png", b.name)

    save_or_rescue(write, "trained model and its metrics")
    f = result.final
    status = (
        f"reached the thresholds at epoch {result.reached_epoch} after "
        f"{result.reached_seconds:.1f}s of training, kept epoch {result.best_epoch}"
        if result.reached_epoch
        else "did NOT reach the thresholds"
    )
    click.echo(
        f"{status}; {result.seconds_per_epoch:.2f}s/epoch; final acc "
        f"{f.get('accuracy', float('nan')):.5f} iia {f.get('iia', float('nan')):.5f} siia "
        f"{f.get('siia', float('nan')):.5f}; wrote {out}"
    )


@groundtruth.command("eval")
@click.option(
    "--run",
    "run_dir",
    required=True,
    help="A `groundtruth train` output directory, or the name of a shipped model ("
    + ", ".join(SHIPPED)
    + ") where no folder of that name exists.",
)
@click.option(
    "--out",
    "out_dir",
    type=OutputPath("dir"),
    default=None,
    help="Default: RUN/eval, or NAME-eval for a shipped model.",
)
@click.option(
    "--json",
    "json_path",
    type=OutputPath("file"),
    default=None,
    help="Also write the overall accuracy, iia and siia (and per node) and the edge-level ROC "
    "AUC of each circuit-discovery method (edge_auc) to this file.",
)
@click.option(
    "-n",
    "--n-per-task",
    default=1000,
    show_default=True,
    help="Fresh inputs per task (metrics on all; half train SAEs/probes, half score them).",
)
@click.option("--sae-arch", type=click.Choice(["topk", "relu"]), default="topk", show_default=True)
@click.option("--sae-latents", default=0, show_default=True, help="0: 2 x d_mlp.")
@click.option("--sae-k", default=8, show_default=True)
@click.option("--sae-steps", default=1000, show_default=True)
@click.option(
    "--subspace",
    type=click.Choice(["class_means", "das", "both"]),
    default="class_means",
    show_default=True,
    help="Reference subspace per MLP variable: its class means' span, the subspace DAS learns "
    "(a trained rotation), or both.",
)
@click.option("--das-steps", default=300, show_default=True, help="DAS training steps.")
@click.option(
    "--das-dims", default=0, show_default=True, help="DAS subspace dimension (0: the class means')."
)
@click.option("--seed", default=1, show_default=True)
def eval_(
    run_dir,
    out_dir,
    json_path,
    n_per_task,
    sae_arch,
    sae_latents,
    sae_k,
    sae_steps,
    subspace,
    das_steps,
    das_dims,
    seed,
) -> None:
    """Accuracy/IIA/SIIA on fresh data, SAEs vs the known variables, circuit-discovery ROC AUC."""
    import numpy as np
    import torch

    from gridlens.groundtruth.iit import _jsonable, evaluate, load_run
    from gridlens.groundtruth.shipped import resolve_run

    if n_per_task < 4:
        raise ConfigError(f"--n-per-task must be >= 4, got {n_per_task}")
    if das_steps < 1 or das_dims < 0:
        raise ConfigError(
            f"--das-steps must be >= 1 and --das-dims >= 0, got {das_steps}, {das_dims}"
        )
    stage = Stages("groundtruth eval", 4)
    with stage("loading the run"):
        folder, shipped = resolve_run(run_dir)
        model, bench, _meta = load_run(folder)
    if das_dims > bench.config.d_mlp:
        raise ConfigError(f"--das-dims {das_dims} > the MLP's width {bench.config.d_mlp}")
    out = Path(out_dir) if out_dir else Path(f"{run_dir}-eval" if shipped else folder / "eval")
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    fit_tokens, _ = bench.generate(n_per_task // 2, rng)
    test_tokens, _ = bench.generate(n_per_task - n_per_task // 2, rng)
    t0 = time.perf_counter()
    report: dict = {"run": str(folder), "shipped": shipped, "benchmark": bench.describe()}
    with stage("accuracy, IIA and SIIA"):
        m = report["metrics"] = evaluate(model, bench, torch.cat([fit_tokens, test_tokens]))
    click.echo(f"accuracy {m['accuracy']:.5f}  IIA {m['iia']:.5f}  SIIA {m['siia']:.5f}")
    report["edge_discovery"] = _eval_edges(model, bench, test_tokens, out)
    if json_path:
        _write_metrics_json(Path(json_path), report, n_per_task, seed)
    sae = dict(n_latents=sae_latents or None, arch=sae_arch, k=sae_k, sae_steps=sae_steps)
    sae.update(subspace=subspace, das_steps=das_steps, das_dims=das_dims or None)
    with stage("SAEs against the known variables"):
        report["sae"] = _eval_saes(model, bench, fit_tokens, test_tokens, out, seed, sae)
    with stage("circuit discovery"):
        report["circuit_discovery"] = _eval_circuits(model, bench, test_tokens, out)
    report["seconds"] = time.perf_counter() - t0
    (out / "eval.json").write_text(json.dumps(_jsonable(report), indent=1))
    click.echo(f"wrote {out}/eval.json and figures")


def _write_metrics_json(path: Path, report: dict, n_per_task: int, seed: int) -> None:
    from gridlens.groundtruth.iit import _jsonable
    from gridlens.io import atomic_write

    m = report["metrics"]
    keys = ("accuracy", "iia", "siia", "iia_per_node", "siia_per_node", "siia_all_unused")
    data = {
        "format": "gridlens-groundtruth-metrics",
        "version": 1,
        "run": report["run"],
        "shipped": report["shipped"],
        "benchmark": report["benchmark"]["name"],
        "n_per_task": n_per_task,
        "seed": seed,
        **{k: m[k] for k in keys},
        "edge_auc": report["edge_discovery"]["edge_auc"],
    }
    text = json.dumps(_jsonable(data), indent=1) + "\n"
    atomic_write(path, lambda handle: handle.write(text.encode()))


def _eval_saes(model, bench, fit_tokens, test_tokens, out: Path, seed: int, sae: dict) -> dict:
    import torch

    from gridlens.groundtruth.figures import sae_matrix, sae_scores
    from gridlens.groundtruth.scoring import mlp_variables, score_mlp

    report = {}
    for layer in range(bench.config.n_layers):
        if not mlp_variables(bench, layer):
            continue
        torch.manual_seed(seed)
        r = score_mlp(model, bench, layer, fit_tokens, test_tokens, seed=seed, **sae)
        sae_scores(r, out / f"sae_L{layer}.png", f"{bench.name}: MLP {layer}")
        sae_matrix(r, out / f"sae_matrix_L{layer}.png", f"{bench.name}: MLP {layer} SAE F1")
        for method in r["methods"].values():
            if "f1_matrix" in method:
                method["f1_matrix"] = method["f1_matrix"].tolist()
        report[f"L{layer}"] = r
        line = "  ".join(
            f"{k}: best F1 {v['mean_best_f1']:.3f} hungarian {v['hungarian_mean_f1']:.3f}"
            for k, v in r["methods"].items()
            if "mean_best_f1" in v
        )
        click.echo(
            f"MLP {layer}: {line}; SAE FVU {r['sae']['fvu_test']:.3f}, acc spliced "
            f"{r['sae']['accuracy_spliced']:.4f}"
        )
        references = [m for m in ("class_means", "das") if m in r["methods"]]
        for var in r["variables"]:
            iia = ", ".join(f"{m} {r['methods'][m]['iia'][var]:.4f}" for m in references)
            click.echo(f"  {var}: subspace IIA {iia}")
    return report


def _eval_edges(model, bench, test_tokens, out: Path) -> dict:
    """ACDC, EAP and EAP-IG per task against the known edges: AUC, faithfulness, seconds."""
    from gridlens.groundtruth.edges import edge_auc, score_edges
    from gridlens.groundtruth.figures import edge_discovery

    tasks = range(len(bench.tasks)) if bench.multi else [None]
    results = []
    for k in tasks:
        r = score_edges(model, bench, test_tokens, task=k)
        results.append(r)
        scores = [f"{m} {v['auc']:.3f} ({v['seconds']:.1f} s)" for m, v in r["methods"].items()]
        click.echo(f"edges {r['task']}: ROC AUC " + ", ".join(scores))
    edge_discovery(results, f"{bench.name}: edge-level circuit discovery", out / "edges.png")
    return {"edge_auc": edge_auc(results), "tasks": results}


def _eval_circuits(model, bench, test_tokens, out: Path) -> list[dict]:
    from gridlens.groundtruth.figures import circuit_scores
    from gridlens.groundtruth.scoring import circuit_discovery

    tasks = range(len(bench.tasks)) if bench.multi else [None]
    circuits = [circuit_discovery(model, bench, test_tokens, task=k) for k in tasks]
    circuit_scores(circuits, out / "circuit.png", bench.name)
    for c in circuits:
        click.echo(
            f"circuit {c['task']}: ROC AUC activation patching "
            f"{c['auc_activation_patching']:.3f}, AtP {c['auc_atp']:.3f}"
        )
    return circuits


@groundtruth.command()
@click.option(
    "--runs",
    default=",".join(SHIPPED),
    show_default=True,
    help="Comma-separated `groundtruth train` folders or shipped model names.",
)
@click.option(
    "--sites",
    default="mlp",
    show_default=True,
    help="Site kinds for the built-in methods: mlp (mlp.hook_post), z (attn.hook_z, heads "
    "flattened), resid (hook_resid_post); each variable is scored in its own layer.",
)
@click.option(
    "--train-saes",
    default="topk",
    show_default=True,
    help="SAE architectures to train on each site (relu, topk, batchtopk, jumprelu; 'none').",
)
@click.option(
    "--sae",
    "saes",
    multiple=True,
    help="[RUN=]PATH: a SAELens 6 SAE folder (ours or any tool's) to score at its own site "
    "(hook_name, hook_head_index); repeatable. Without RUN=, on every model it fits.",
)
@click.option("-n", "--n-per-task", default=1000, show_default=True, help="Half fit, half scored.")
@click.option("--sae-steps", default=500, show_default=True)
@click.option("--sae-k", default=8, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--threads",
    default=0,
    show_default=True,
    help="torch threads of one process (0: one single-threaded process per available core).",
)
@click.option(
    "--out", "out_dir", type=click.Path(file_okay=False), default="scoreboard", show_default=True
)
def score(runs, sites, train_saes, saes, n_per_task, sae_steps, sae_k, seed, threads, out_dir):
    """Score neurons, probes and SAEs (trained here or loaded) against every known variable:
    one table (JSON, Markdown, PNG), methods as rows, benchmark x variable as columns."""
    import torch

    from gridlens.groundtruth.iit import _jsonable, load_run
    from gridlens.groundtruth.scoreboard import (
        available_cores,
        check_kinds,
        figure,
        load_user_sae,
        markdown,
        out_paths,
        scoreboard,
    )
    from gridlens.groundtruth.shipped import resolve_run
    from gridlens.io import atomic_write
    from gridlens.sae.model import ARCHITECTURES

    kinds = [k for k in sites.split(",") if k]
    check_kinds(kinds)
    archs = [] if train_saes == "none" else [a for a in train_saes.split(",") if a]
    bad = [a for a in archs if a not in ARCHITECTURES]
    if bad or n_per_task < 4:
        raise ConfigError(f"--train-saes {bad} not in {ARCHITECTURES} or --n-per-task < 4")
    if threads:
        torch.set_num_threads(threads)
    workers = 1 if threads else available_cores()
    user = [load_user_sae(s) for s in saes]
    models = {}
    for run in (r for r in runs.split(",") if r):
        model, bench, _ = load_run(resolve_run(run)[0])
        models[Path(run).name] = (model, bench)
    cfg = {
        "runs": list(models),
        "sites": kinds,
        "train_saes": archs,
        "saes": list(saes),
        "n_per_task": n_per_task,
        "sae_steps": sae_steps,
        "sae_k": sae_k,
        "seed": seed,
    }
    t0 = time.perf_counter()
    board = scoreboard(models, cfg, user, log=click.echo, workers=workers)
    board["seconds"] = time.perf_counter() - t0
    paths = out_paths(Path(out_dir))
    text = json.dumps(_jsonable(board), indent=1) + "\n"
    atomic_write(paths["json"], lambda handle: handle.write(text.encode()))
    md = markdown(board)
    atomic_write(paths["md"], lambda handle: handle.write(md.encode()))
    figure(board, paths["png"])
    click.echo(
        f"{len(board['rows'])} methods x {len(board['columns'])} variables in "
        f"{board['seconds']:.0f} s; wrote {', '.join(str(p) for p in paths.values())}"
    )


def _init_model(init: str, bench):
    """The weights of run ``init`` (folder or shipped name), checked to fit ``bench``."""
    from gridlens.groundtruth.iit import load_run
    from gridlens.groundtruth.shipped import resolve_run

    model, other, _ = load_run(resolve_run(init)[0])
    if other.describe() != bench.describe():
        raise ConfigError(f"--init {init}: benchmark {other.name!r} differs from {bench.name!r}")
    model.train()
    return model


@groundtruth.command("tracr")
@click.option("--model", "name", default="hist", show_default=True,
              help="A shipped tracr program (reverse, hist, sort_unique, frac_prevs) or a folder "
              "written by save_tracr.")  # fmt: skip
@click.option("--json", "json_path", type=OutputPath("file"), default=None)
@click.option("--sae-steps", default=1000, show_default=True)
@click.option("--seed", default=0, show_default=True)
def tracr_(name, json_path, sae_steps, seed) -> None:
    """Score circuit discovery and an SAE on a tracr-compiled model (exact ground truth)."""
    import torch

    from gridlens.groundtruth.iit import _jsonable
    from gridlens.groundtruth.tracr_models import load_tracr, resolve_tracr
    from gridlens.groundtruth.tracr_scoring import all_inputs, circuit_scores, sae_scores
    from gridlens.io import atomic_write

    model, _ = load_tracr(resolve_tracr(name))
    tokens = all_inputs(model)
    torch.manual_seed(seed)
    report = {"format": "gridlens-tracr-scores", "version": 1, "model": str(name)}
    report["circuit"] = c = circuit_scores(model, tokens)
    report["sae"] = s = sae_scores(model, tokens, steps=sae_steps, seed=seed)
    click.echo(
        f"{name}: {len(tokens)} inputs; circuit ROC AUC / recall: activation patching "
        f"{c['auc_activation_patching']:.3f} / {c['recall_activation_patching']:.2f}, AtP "
        f"{c['auc_atp']:.3f} / {c['recall_atp']:.2f}; SAE on the last residual: "
        f"{s['features']} features, best-latent F1 {s['mean_best_f1']:.3f}, max cosine "
        f"{s['mean_max_cosine']:.3f}, FVU {s['fvu']:.3f}"
    )
    if json_path:
        text = json.dumps(_jsonable(report), indent=1) + "\n"
        atomic_write(Path(json_path), lambda handle: handle.write(text.encode()))


def _floats(text: str, n: int, what: str) -> list[float]:
    try:
        vals = [float(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(f"{what}: expected {n} comma-separated numbers, got {text!r}") from None
    if len(vals) != n:
        raise ConfigError(f"{what}: expected {n} comma-separated numbers, got {text!r}")
    return vals
