"""A static HTML page of a pruned attribution graph: one file, no server, no network.

The graph is drawn as inline SVG by Python (it shows without JavaScript): columns are the
positions the pruned graph uses, grouped by grid (A, f_A, B, f_B); rows are the token
embeddings (bottom), the layers, and the target logit (top). Edges are blue when positive,
red when negative, their width |weight|. Hovering a node shows its label (an SVG <title>);
clicking it (a few lines of JavaScript) opens a panel with the label's precision and recall,
the feature's top examples drawn as grids, and its strongest incoming and outgoing edges.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from gridlens.graphs.attribution import AttributionGraph
from gridlens.io import atomic_write
from gridlens.sae.features import position_label
from gridlens.world.tokens import COLOR_RGB

NODE_GAP, ROW_GAP, GRID_GAP, MARGIN = 18, 70, 30, 40
STYLE = """
body { font-family: sans-serif; margin: 1em; color: #222; }
#wrap { display: flex; gap: 1em; align-items: flex-start; }
#graph { overflow-x: auto; border: 1px solid #ddd; max-width: 75vw; }
#panel { min-width: 22em; max-width: 28em; font-size: 0.9em; }
.node { cursor: pointer; stroke: #333; stroke-width: 0.6; }
.node.selected { stroke: #f0f; stroke-width: 3; }
.grid { border: 1px solid #999; display: inline-grid; grid-template-columns: repeat(10, 7px);
        margin: 2px; }
.grid span { width: 7px; height: 7px; }
.grid span.hit { outline: 2px solid #f0f; }
td, th { padding: 0.1em 0.4em; text-align: left; }
"""
SCRIPT = """
const data = JSON.parse(document.getElementById('graph-data').textContent);
function grid(g, cell) {
  return '<div class="grid">' + g.map((c, i) => '<span style="background:' + data.colours[c] +
    '"' + (i === cell ? ' class="hit"' : '') + '></span>').join('') + '</div>';
}
function edgeList(title, list) {
  if (!list.length) return '';
  return '<h4>' + title + '</h4><table>' + list.map(e => '<tr><td>' + data.nodes[e[0]].name +
    '</td><td>' + e[1].toFixed(3) + '</td></tr>').join('') + '</table>';
}
function show(i) {
  const n = data.nodes[i];
  document.querySelectorAll('.node.selected').forEach(x => x.classList.remove('selected'));
  document.querySelector('[data-node="' + i + '"]').classList.add('selected');
  let h = '<h3>' + n.name + '</h3><p>' + n.label + '</p>';
  if (n.best) h += '<p>F1 ' + n.best.f1.toFixed(3) + ', precision ' + n.best.precision.toFixed(3) +
    ', recall ' + n.best.recall.toFixed(3) + '</p>';
  if (n.activation !== null) h += '<p>activation ' + n.activation.toFixed(4) + '</p>';
  (n.examples || []).forEach(e => { h += '<div>' + e.task + ' · ' + e.position + ' · ' +
    e.value + '<br>' + grid(e.grid, e.cell) + '</div>'; });
  h += edgeList('strongest inputs', n.inputs) + edgeList('strongest outputs', n.outputs);
  const panel = document.getElementById('panel');
  panel.innerHTML = h;
  panel.dataset.node = i;
}
const target = document.querySelector('[data-kind="target"]');
const box = document.getElementById('graph');
box.scrollLeft = target.getAttribute('cx') - box.clientWidth / 2;
document.querySelectorAll('.node').forEach(el =>
  el.addEventListener('click', () => show(+el.dataset.node)));
"""


def _name(graph: AttributionGraph, i: int) -> str:
    kind, layer, pos = graph.node_kind(i)
    where = position_label(pos)
    if kind == "feature":
        return f"L{layer} F{int(graph.features[i][2])} @ {where}"
    if kind == "error":
        return f"L{layer} error @ {where}"
    if kind == "token":
        return f"token @ {where}"
    return f"logit of token {graph.token} @ {where}"


def _layout(graph: AttributionGraph, kept: np.ndarray) -> dict[int, tuple[float, float]]:
    """(x, y) of each kept node: columns by position (grouped by grid), rows by layer."""
    rows = {}
    for i in kept.tolist():
        _, layer, pos = graph.node_kind(i)
        rows.setdefault((layer, pos), []).append(i)
    positions = sorted({pos for _, pos in rows})
    width = {p: max(len(v) for (lay, q), v in rows.items() if q == p) for p in positions}
    left, x0, last_slot = {}, MARGIN, None
    for p in positions:
        slot = p // 101
        if last_slot is not None and slot != last_slot:
            x0 += GRID_GAP
        left[p], x0, last_slot = x0, x0 + width[p] * NODE_GAP + 6, slot
    top = MARGIN + (graph.n_layers + 1) * ROW_GAP
    xy = {}
    for (layer, pos), nodes in rows.items():
        for k, i in enumerate(nodes):
            xy[i] = (left[pos] + k * NODE_GAP + NODE_GAP / 2, top - (layer + 1) * ROW_GAP)
    return xy


def _node_svg(graph: AttributionGraph, i: int, x: float, y: float, name: str, label: str) -> str:
    kind, _, pos = graph.node_kind(i)
    tip = html.escape(f"{name}: {label}" if label else name)
    attrs = f'class="node" data-node="{i}" data-kind="{kind}"'
    if kind == "error":
        return (f'<rect {attrs} x="{x - 5:.1f}" y="{y - 5:.1f}" width="10" height="10" '
                f'fill="#bbb"><title>{tip}</title></rect>')  # fmt: skip
    if kind == "token":
        token = graph_token(graph, pos)
        r, g, b = COLOR_RGB[token] if token < len(COLOR_RGB) else (0, 0, 0)
        fill = f"rgb({r},{g},{b})"
    else:
        fill = "#f5b700" if kind == "target" else "#4caf50"
    return (f'<circle {attrs} cx="{x:.1f}" cy="{y:.1f}" r="6" fill="{fill}">'
            f"<title>{tip}</title></circle>")  # fmt: skip


def graph_token(graph: AttributionGraph, pos: int) -> int:
    """The token the model reads at `pos` (the shifted input: the previous token)."""
    return int(graph.tokens[pos - 1]) if pos > 0 else 0


def write_graph_page(
    graph: AttributionGraph,
    nodes: np.ndarray,
    edges: np.ndarray,
    path: str | Path,
    details: dict[int, dict] | None = None,
    title: str = "attribution graph",
    summary: str = "",
) -> Path:
    """Write the page of the pruned graph (node mask `nodes`, edge mask `edges`) to `path`;
    nodes without a kept edge (most token nodes) are left out of the drawing."""
    details = details or {}
    weights = np.where(edges, graph.adjacency, 0.0)
    connected = (weights != 0).any(0) | (weights != 0).any(1)
    connected[graph.target_index] = True
    kept = np.flatnonzero(nodes & connected)  # the pruned graph's nodes that carry an edge
    xy = _layout(graph, kept)
    scale = max(float(np.abs(weights).max()), 1e-12)
    lines = []
    for t, s in zip(*np.nonzero(weights), strict=True):
        (x1, y1), (x2, y2), w = xy[int(s)], xy[int(t)], weights[t, s]
        colour = "#2a6fdb" if w > 0 else "#d62728"
        lines.append(
            f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{colour}" '
            f'stroke-opacity="0.6" stroke-width="{0.4 + 4 * abs(w) / scale:.2f}"/>'
        )
    names = {int(i): _name(graph, int(i)) for i in kept}
    labels = {
        int(i): graph.labels[i] if i < graph.n_features and graph.labels else "" for i in kept
    }
    circles = [_node_svg(graph, i, *xy[i], names[i], labels[i]) for i in xy]
    width = max(x for x, _ in xy.values()) + MARGIN
    height = MARGIN * 2 + (graph.n_layers + 1) * ROW_GAP
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height}">'
           + "".join(lines) + "".join(circles) + "</svg>")  # fmt: skip
    data = {
        "colours": [f"rgb({r},{g},{b})" for r, g, b in COLOR_RGB.tolist()],
        "nodes": {i: _node_data(graph, i, names, labels[i], details, weights) for i in names},
    }
    blob = json.dumps(data).replace("</", "<\\/")
    page = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<p>{html.escape(summary)}</p><div id='wrap'><div id='graph'>{svg}</div>"
        f"<div id='panel'>Click a node for its label, top examples and edges.</div></div>"
        f"<script type='application/json' id='graph-data'>{blob}</script>"
        f"<script>{SCRIPT}</script></body></html>"
    )
    return atomic_write(path, lambda h: h.write(page.encode()))


def _node_data(graph, i: int, names, label: str, details, weights) -> dict:
    def strongest(values: np.ndarray) -> list:
        order = np.argsort(-np.abs(values))[:8]
        return [[int(j), float(values[j])] for j in order if values[j] != 0 and int(j) in names]

    extra = details.get(i, {})
    is_feature = i < graph.n_features
    return {
        "name": names[i],
        "label": label,
        "best": (extra.get("best") or [None])[0],
        "activation": float(graph.activations[i]) if is_feature else None,
        "examples": extra.get("examples", []),
        "inputs": strongest(weights[i]),
        "outputs": strongest(weights[:, i]),
    }
