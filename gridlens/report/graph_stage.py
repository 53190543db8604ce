"""The report's attribution graph (with `--transcoders`): the transform cell the findings pick
(the first cell that zero-ablating the task-specific MLP breaks, in the first quiz it breaks),
attributed over the transcoders, pruned, labelled from the world and checked by ablations."""

from __future__ import annotations

import numpy as np

from gridlens.analysis.core import predicted_cells
from gridlens.report.html import Link, Section, Table

HOWTO = (
    "The attribution graph of one predicted cell over transcoders replacing every MLP "
    "(gridlens.graphs): nodes are active transcoder features per position, error nodes and "
    "token embeddings; an edge is a direct effect through frozen attention patterns and "
    "LayerNorm scales. The graph keeps the nodes holding {node:.0%} of the influence on the "
    "cell's logit. Features are labelled by the world annotation they detect best (F1 on the "
    "analysis quizzes). Replacement and completeness scores follow circuit-tracer. The ablation "
    "check sets the most influential features to 0 in the replacement model and compares the "
    "logit change with the graph's prediction."
)


def transform_cell(study):
    """(tokens [T], position): the study's first broken quiz and the first cell its ablated
    answer gets wrong; without a broken quiz, the first quiz's first changed cell."""
    from gridlens.graphs.commands import changed_cell

    broken = np.flatnonzero(study.broken.numpy())
    index = int(broken[0]) if len(broken) else 0
    tokens = study.quizzes.tokens[index]
    wrong = int(study.first_wrong[index])
    if wrong < 0:
        return tokens, changed_cell(tokens)
    return tokens, predicted_cells(tokens[None]).start + wrong


def stage_graph(run, node_share: float = 0.8) -> Section | None:
    from gridlens.graphs import (
        attribute,
        build_replacement,
        check_interventions,
        graph_scores,
        label_graph,
        node_influence,
        prune,
        write_graph_page,
    )
    from gridlens.report.findings import first_of_each
    from gridlens.sae.features import position_label
    from gridlens.sae.transcoder_io import load_transcoders

    if run.transcoders_path is None:
        return None
    transcoders = load_transcoders(run.transcoders_path, device=run.model.device)
    tokens, position = transform_cell(run.study)
    rm = build_replacement(run.model, transcoders, tokens)
    graph = attribute(rm, position, max_features=128)
    details = label_graph(run.model, transcoders, graph, first_of_each(run.quizzes, 4))
    nodes, edges = prune(graph, node_share)
    scores, check = graph_scores(graph), check_interventions(rm, graph, n=12)
    title = f"{run.study.task}: the transform cell {position_label(position)}"
    write_graph_page(graph, nodes, edges, run.folder / "graph" / "graph.html", details, title)
    kept = np.flatnonzero(nodes[: graph.n_features])
    run.results["graph"] = {
        "task": run.study.task,
        "position": position,
        "features": graph.n_features,
        "kept_features": len(kept),
        "scores": scores,
        "interventions": check,
    }
    influence = node_influence(graph)
    rows = [
        [f"L{f[0]} F{f[2]}", position_label(int(f[1])), graph.labels[i], f"{influence[i]:.3f}"]
        for i in sorted(kept, key=lambda i: -influence[i])[:10]
        for f in [graph.features[i].tolist()]
    ]
    section = Section("Attribution graph", howto=HOWTO.format(node=node_share))
    section.findings = [
        f"{title}: {len(kept)} of {graph.n_features} features kept; replacement score "
        f"{scores['replacement']:.3f}, completeness {scores['completeness']:.3f}.",
        f"Ablating the {len(check['features'])} most influential features: graph vs replacement "
        f"model r = {check['pearson_r']:.3f}, signs agree for "
        f"{100 * check['sign_agreement']:.0f}%.",
    ]
    return section.add(
        Table(
            ["feature", "position", "label", "influence"],
            rows,
            "The most influential kept features, with their world-derived labels.",
        ),
        Link(
            "graph/graph.html",
            "The graph page: hover a node for its label, click it for its "
            "top examples and strongest edges.",
        ),
    )
