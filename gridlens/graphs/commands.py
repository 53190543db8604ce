"""`gridlens graph build`: the attribution graph of one predicted cell of one quiz, pruned,
labelled from the world's annotations, checked by interventions, as JSON and a static page."""

from __future__ import annotations

import json
from pathlib import Path

import click

from gridlens.errors import ConfigError
from gridlens.io import OutputPath, atomic_write


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def graph() -> None:
    """Attribution graphs over transcoders (train them with `gridlens sae transcoder`)."""


def changed_cell(tokens) -> int:
    """The first cell of the predicted (last) grid that differs from the grid before it (the
    cell the task's rule transforms, for the canonical structure); else the grid's last cell."""
    import torch

    per_grid = tokens.shape[-1] // 4
    last = torch.arange(3 * per_grid + 1, 4 * per_grid)
    changed = (tokens[last] != tokens[last - per_grid]).nonzero().flatten()
    return int(last[changed[0]]) if len(changed) else int(last[-1])


@graph.command("build")
@click.option("--model", "model_path", default="default", show_default=True, help="Model.")
@click.option("--transcoders", "tc_path", required=True, help="Folder of `sae transcoder`.")
@click.option("--task", default="contact", show_default=True, help="Task of the quiz.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the quiz.")
@click.option("--position", type=int, default=None,
              help="Predicted cell (default: the last grid's first changed cell).")  # fmt: skip
@click.option("--max-features", type=int, default=256, show_default=True)
@click.option("--node-share", type=float, default=0.8, show_default=True)
@click.option("--edge-share", type=float, default=0.98, show_default=True)
@click.option("-n", "n_per_task", type=int, default=8, show_default=True,
              help="Quizzes per task for the feature labels.")  # fmt: skip
@click.option("--interventions", type=int, default=20, show_default=True,
              help="Graph features to check by ablation.")  # fmt: skip
@click.option("--out", type=OutputPath("dir"), required=True, help="Output folder.")
@click.option("--device", default="auto", show_default=True, help="auto (cuda if any), cpu, cuda:1")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def build(
    model_path, tc_path, task, seed, position, max_features, node_share, edge_share, n_per_task,
    interventions, out, device, no_progress,
):  # fmt: skip
    """Attribute one predicted cell: graph.json, graph.html, interventions.json in --out."""
    from gridlens.analysis.core import quiz_set
    from gridlens.graphs.attribution import attribute, graph_scores, prune, rows_check
    from gridlens.graphs.html import write_graph_page
    from gridlens.graphs.interventions import check_interventions
    from gridlens.graphs.labels import label_graph
    from gridlens.graphs.replacement import build_replacement
    from gridlens.models.checkpoints import load
    from gridlens.sae.transcoder_io import load_transcoders
    from gridlens.training.trainer import resolve_device
    from gridlens.world import generate

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out}: exists and is not empty; choose another --out")
    model = load(model_path, device=resolve_device(device))
    transcoders = load_transcoders(tc_path, device=model.device)
    tokens = generate([task], 1, seed=seed).tokens[0]
    position = changed_cell(tokens) if position is None else position
    rm = build_replacement(model, transcoders, tokens)
    result = attribute(rm, position, max_features=max_features, progress=not no_progress)
    labels = label_graph(model, transcoders, result, quiz_set("default", n_per_task, seed=seed))
    nodes, edges = prune(result, node_share, edge_share)
    scores = graph_scores(result)
    check = check_interventions(rm, result, n=interventions)
    summary = (
        f"{task} quiz (seed {seed}), logit of token {result.token} at position {position}; "
        f"{int(nodes[: result.n_features].sum())} of {result.n_features} features kept; "
        f"replacement score {scores['replacement']:.3f}, "
        f"completeness {scores['completeness']:.3f}; "
        f"ablations: graph vs replacement model r = {check['pearson_r']:.3f}, "
        f"sign agreement {check['sign_agreement']:.2f}"
    )
    payload = {**result.to_json(nodes, edges), "scores": scores, "task": task, "seed": seed,
               "decomposition_error": rows_check(result), "summary": summary}  # fmt: skip
    for name, data in (("graph.json", payload), ("interventions.json", check)):
        text = (json.dumps(data, indent=1) + "\n").encode()
        atomic_write(out / name, lambda h, text=text: h.write(text))
    page = write_graph_page(result, nodes, edges, out / "graph.html", labels,
                            title=f"{task}: cell {position}", summary=summary)  # fmt: skip
    click.echo(summary)
    click.echo(f"wrote {page}, {out / 'graph.json'} and {out / 'interventions.json'}")
