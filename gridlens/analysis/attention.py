"""Attention heads: where each head looks, classified by what the attended token is relative to
the cell being predicted, and a drawing of one head's pattern over the four grids of a quiz.

Positions and offsets. With MyGPT's BOS shift, position p holds token p - 1 and its logits
predict token p. The pattern is indexed [query p, key k] and the *offset* is p - k. So the key
at offset 0 ("self") holds the token just before the predicted one, offset 1 ("previous token")
the one before that, and offset 100 holds the previous grid's copy of the cell being predicted
(101 tokens before that cell: a grid is a marker plus 100 cells). Offset 101 holds the previous
grid's copy of the query's own input cell (the cell before the predicted one). Which of the two
a write-up's "offset 101" means depends on whether it counts from the predicted token or from
the query position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from gridlens.analysis.core import ComponentError, QuizSet, component_names, parse_component
from gridlens.errors import ConfigError, TokenError
from gridlens.notebook import Tabular, result_html
from gridlens.plotting import finish, pyplot
from gridlens.world.tokens import COLOR_RGB, N_COLORS, TOKEN_TO_GRID, grid_size_from_length

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Categories of attended keys, in priority order (a key belongs to the first that matches).
CATEGORIES: tuple[str, ...] = (
    "bos",
    "marker",
    "self",
    "prev_token",
    "cell_above",
    "same_grid_other",
    "prev_grid_same_cell",
    "prev_grid_query_cell",
    "prev_grid_row",
    "prev_grid_col",
    "prev_grid_other",
    "two_grids_back_same_cell",
    "three_grids_back_same_cell",
    "earlier_grids_other",
    "other",
)
CATEGORY_HELP: dict[str, str] = {
    "bos": "position 0 (the BOS token)",
    "marker": "a grid marker token (A, f_A, B, f_B)",
    "self": "offset 0: the query's own input, the token just before the predicted one",
    "prev_token": "offset 1: two tokens before the predicted one",
    "cell_above": "offset 9: the cell above the predicted one in its own grid",
    "same_grid_other": "another earlier cell of the predicted cell's own grid",
    "prev_grid_same_cell": "offset 100: the previous grid's copy of the cell being predicted",
    "prev_grid_query_cell": "offset 101: the previous grid's copy of the query's input cell",
    "prev_grid_row": "another cell of the previous grid in the predicted cell's row",
    "prev_grid_col": "another cell of the previous grid in the predicted cell's column",
    "prev_grid_other": "any other cell of the previous grid",
    "two_grids_back_same_cell": "offsets 201/202: the predicted or query cell, two grids back",
    "three_grids_back_same_cell": "offsets 302/303: the predicted or query cell, 3 grids back",
    "earlier_grids_other": "any other cell two or three grids back",
    "other": "anything else (cells seen by queries that predict a marker)",
}
_INDEX = {name: i for i, name in enumerate(CATEGORIES)}


def category_matrix(length: int) -> torch.Tensor:
    """[length, length] category index of key k for query p (-1 where k > p, invisible)."""
    height, width = grid_size_from_length(length)
    grid_len = height * width + 1
    q = torch.arange(length)[:, None]
    k = torch.arange(length)[None, :]
    offset = q - k
    grid_q, cell_q = q // grid_len, q % grid_len - 1  # the predicted token; cell -1 = marker
    token_k = k - 1  # the token key k holds; -1 = BOS
    grid_k, cell_k = token_k.div(grid_len, rounding_mode="floor"), token_k % grid_len - 1
    is_cell = (cell_k >= 0) & (cell_q >= 0) & (token_k >= 0)
    prev = is_cell & (grid_k == grid_q - 1)
    near = (cell_k == cell_q) | (cell_k == cell_q - 1)
    same = is_cell & (grid_k == grid_q)
    rules = [  # lowest priority first: later rules overwrite earlier ones
        ("earlier_grids_other", is_cell & (grid_k < grid_q - 1)),
        ("three_grids_back_same_cell", is_cell & (grid_k == grid_q - 3) & near),
        ("two_grids_back_same_cell", is_cell & (grid_k == grid_q - 2) & near),
        ("prev_grid_other", prev),
        ("prev_grid_col", prev & (cell_k % width == cell_q % width)),
        ("prev_grid_row", prev & (cell_k // width == cell_q // width)),
        ("prev_grid_query_cell", prev & (cell_k == cell_q - 1)),
        ("prev_grid_same_cell", prev & (cell_k == cell_q)),
        ("same_grid_other", same),
        ("cell_above", same & (cell_k == cell_q - width)),
        ("prev_token", offset == 1),
        ("self", offset == 0),
        ("marker", (cell_k == -1) & (token_k >= 0)),
        ("bos", k == 0),
    ]
    out = torch.full((length, length), _INDEX["other"], dtype=torch.long)
    for name, mask in rules:
        out[mask.expand(length, length)] = _INDEX[name]
    out[offset < 0] = -1
    return out


def _head(model, head: str):
    comp = parse_component(head, model.cfg)
    if comp.kind != "head":
        raise ComponentError(
            f"{head!r} is not an attention head; expected a name like 'L0H1' "
            f"(heads: {', '.join(component_names(model.cfg, ('head',))[:8])}, ...)"
        )
    return comp


def _patterns(model, tokens: torch.Tensor, layers: list[int]) -> dict[int, torch.Tensor]:
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in layers]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens.to(model.device), names=names)
    return {layer: cache[name].float().cpu() for layer, name in zip(layers, names, strict=True)}


# ---------------------------------------------------------------------- classification


@dataclass
class HeadClassification(Tabular):
    """Attention mass by key category for every head (see CATEGORIES / CATEGORY_HELP).

    mass_predicted: [heads, categories] averaged over quizzes and over the queries that predict
    the cells of the predicted grid; mass_all: the same over every query position; per_task:
    task -> mass_predicted of that task's quizzes. Each row sums to 1.
    """

    heads: list[str]
    mass_predicted: np.ndarray
    mass_all: np.ndarray
    per_task: dict[str, np.ndarray]
    entropy_bits: np.ndarray  # [heads] mean entropy of the predicted-grid queries' patterns
    top_offset: np.ndarray  # [heads] the offset with the most predicted-grid attention
    top_offset_mass: np.ndarray  # [heads] its mass
    threshold: float = 0.5
    categories: tuple[str, ...] = field(default=CATEGORIES)

    def labels(self) -> list[tuple[str, float]]:
        """(dominant category, its predicted-grid mass) per head; 'mixed' below the threshold."""
        out = []
        for row in self.mass_predicted:
            best = int(row.argmax())
            name = self.categories[best] if row[best] >= self.threshold else "mixed"
            out.append((name, float(row[best])))
        return out

    def to_json(self) -> dict:
        labels = self.labels()
        return {
            "categories": {c: CATEGORY_HELP[c] for c in self.categories},
            "threshold": self.threshold,
            "heads": {
                head: {
                    "label": labels[i][0],
                    "label_mass": labels[i][1],
                    "entropy_bits": float(self.entropy_bits[i]),
                    "top_offset": int(self.top_offset[i]),
                    "top_offset_mass": float(self.top_offset_mass[i]),
                    "mass_predicted_grid": _row(self.mass_predicted[i], self.categories),
                    "mass_all_positions": _row(self.mass_all[i], self.categories),
                }
                for i, head in enumerate(self.heads)
            },
            "per_task": {
                task: {h: _row(m[i], self.categories) for i, h in enumerate(self.heads)}
                for task, m in self.per_task.items()
            },
        }

    def table(self) -> str:
        """Markdown: one row per head with its label, top offset, entropy and key masses."""
        shown = ("marker", "self", "prev_token", "cell_above", "prev_grid_same_cell")
        lines = [
            "| head | label | mass | top offset | entropy (bits) | " + " | ".join(shown) + " |",
            "|---" * (5 + len(shown)) + "|",
        ]
        for i, (head, (label, mass)) in enumerate(zip(self.heads, self.labels(), strict=True)):
            values = " | ".join(f"{self.mass_predicted[i, _INDEX[c]]:.2f}" for c in shown)
            lines.append(
                f"| {head} | {label} | {mass:.2f} | {int(self.top_offset[i])} "
                f"({self.top_offset_mass[i]:.2f}) | {self.entropy_bits[i]:.2f} | {values} |"
            )
        return "\n".join(lines)

    def to_records(self) -> list[dict]:
        """One row per head: its label, entropy, top offset and mass on every key category."""
        return [
            {"head": head, "label": label, "entropy_bits": float(self.entropy_bits[i]),
             "top_offset": int(self.top_offset[i]),
             **{c: float(self.mass_predicted[i, j]) for j, c in enumerate(self.categories)}}
            for i, (head, (label, _)) in enumerate(zip(self.heads, self.labels(), strict=True))
        ]  # fmt: skip

    def _repr_html_(self) -> str:
        title = f"attention of {len(self.heads)} heads by key category"
        return result_html(title, self.findings(), self.plot(), self.to_records())

    def findings(self) -> list[str]:
        labels = self.labels()
        clear = [(i, name, m) for i, (name, m) in enumerate(labels) if name != "mixed"]
        clear.sort(key=lambda item: -item[2])
        out = [
            f"{self.heads[i]} puts {m:.2f} of its predicted-grid attention on {name} "
            f"({CATEGORY_HELP[name]}); its top offset is {int(self.top_offset[i])}."
            for i, name, m in clear[:3]
        ]
        n_mixed = sum(name == "mixed" for name, _ in labels)
        sharp = int(np.argmin(self.entropy_bits))
        out.append(
            f"{n_mixed} of {len(self.heads)} heads have no category above {self.threshold:.2f}; "
            f"the sharpest head is {self.heads[sharp]} "
            f"(mean entropy {self.entropy_bits[sharp]:.2f} bits)."
        )
        return out

    def plot(self, path: str | Path | None = None) -> Figure:
        """Heads x categories heat map of the predicted-grid attention mass."""
        plt = pyplot()
        n = len(self.heads)
        fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(self.categories), 1.5 + 0.32 * n))
        im = ax.imshow(self.mass_predicted, cmap="viridis", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(self.categories)), self.categories, rotation=40, ha="right")
        labels = [f"{h}: {name}" for h, (name, _) in zip(self.heads, self.labels(), strict=True)]
        ax.set_yticks(range(n), labels, fontsize=8)
        if n * len(self.categories) <= 400:
            for i in range(n):
                for j in range(len(self.categories)):
                    v = self.mass_predicted[i, j]
                    if v >= 0.05:
                        color = "black" if v > 0.6 else "white"
                        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, c=color)
        fig.colorbar(im, ax=ax, label="attention mass (predicted-grid queries)")
        ax.set_title("Attention mass by key category, per head")
        fig.tight_layout()
        return finish(fig, path)


def _row(values: np.ndarray, categories: tuple[str, ...]) -> dict[str, float]:
    return {c: float(v) for c, v in zip(categories, values, strict=True)}


def classify_heads(
    model, quizzes: QuizSet, threshold: float = 0.5, batch_size: int = 32
) -> HeadClassification:
    """Attention mass of every head by key category (see the module docstring for offsets),
    averaged over the predicted grid's queries and over all queries; a head is labelled with
    its dominant category when that holds at least `threshold` of its predicted-grid mass."""
    if not 0 < threshold <= 1:
        raise ConfigError(f"threshold must be in (0, 1], got {threshold}")
    tokens = quizzes.tokens
    n, length = tokens.shape
    cats = category_matrix(length)
    onehot = torch.zeros(length, length, len(CATEGORIES))
    visible = cats >= 0
    onehot[visible, cats[visible]] = 1.0
    first = length - length // 4 + 1  # the first query predicting a cell of the last grid
    q_idx = torch.arange(first, length)
    offsets = torch.arange(length)
    key_idx = q_idx[:, None] - offsets[None, :]  # [queries, offsets]
    key_ok = key_idx >= 0
    key_idx = key_idx.clamp(min=0)

    layers, heads_per = model.cfg.n_layers, model.cfg.n_heads
    n_heads = layers * heads_per
    pred = np.zeros((n, n_heads, len(CATEGORIES)))
    every = np.zeros((n, n_heads, len(CATEGORIES)))
    entropy = np.zeros((n, n_heads))
    by_offset = torch.zeros(n_heads, length, dtype=torch.float64)
    onehot, key_idx, key_ok = (t.to(model.device) for t in (onehot, key_idx, key_ok))
    rows = slice(0, 0)

    def reduce(pat: torch.Tensor, hook) -> None:
        """Fold one layer's pattern [b, h, q, k] into the statistics, so none is kept."""
        pat = pat.float()
        hs = slice(hook.layer() * heads_per, (hook.layer() + 1) * heads_per)
        mass = torch.einsum("bhqk,qkc->bhqc", pat, onehot)
        pred[rows, hs] = mass[:, :, first:].mean(2).cpu().numpy()
        every[rows, hs] = mass.mean(2).cpu().numpy()
        p = pat[:, :, first:]
        entropy[rows, hs] = (-(p * torch.log2(p.clamp_min(1e-30))).sum(-1)).mean(2).cpu().numpy()
        gathered = p.gather(3, key_idx.expand(*p.shape[:2], -1, -1)) * key_ok
        by_offset[hs] += gathered.double().sum((0, 2)).cpu()

    hooks = [(f"blocks.{layer}.attn.hook_pattern", reduce) for layer in range(layers)]
    for lo in range(0, n, batch_size):
        chunk = tokens[lo : lo + batch_size]
        rows = slice(lo, lo + len(chunk))
        with torch.no_grad():
            model.run_with_hooks(chunk.to(model.device), fwd_hooks=hooks)
    by_offset /= n * len(q_idx)
    top = by_offset.max(1)
    tasks = quizzes.tasks
    per_task = {str(t): pred[tasks == t].mean(0) for t in dict.fromkeys(tasks.tolist())}
    per_task["all"] = pred.mean(0)
    return HeadClassification(
        heads=component_names(model.cfg, ("head",)),
        mass_predicted=pred.mean(0),
        mass_all=every.mean(0),
        per_task=per_task,
        entropy_bits=entropy.mean(0),
        top_offset=top.indices.numpy(),
        top_offset_mass=top.values.numpy(),
        threshold=threshold,
    )


# ---------------------------------------------------------------------- one pattern


def plot_pattern(
    model, tokens: torch.Tensor, head: str, path: str | Path | None = None, query: int | None = None
) -> Figure:
    """One head's attention for one quiz: the quiz's four grids, and under each the weight the
    query puts on each of its cells, plus the whole [404, 404] pattern as a thumbnail.

    query: the cell (0..99, row-major) of the predicted grid whose prediction is the query (the
    query position is the one whose logits predict that cell). None picks the cell whose query
    puts the largest weight on a single grid cell (the sharpest lookup).
    """
    comp = _head(model, head)
    tokens = torch.as_tensor(tokens)
    if tokens.dim() == 1:
        tokens = tokens[None]
    if tokens.dim() != 2 or tokens.shape[0] != 1:
        raise TokenError(
            f"plot_pattern takes one quiz, [404] or [1, 404]; got {list(tokens.shape)}"
        )
    length = tokens.shape[1]
    height, width = grid_size_from_length(length)
    grid_len = height * width + 1
    pattern = _patterns(model, tokens, [comp.layer])[comp.layer][0, comp.index]  # [q, k]
    cell_keys = torch.tensor(  # key position holding cell c of grid g
        [[g * grid_len + 2 + c for c in range(height * width)] for g in range(4)]
    )
    first = length - height * width
    if query is None:
        rows = pattern[first:].clone()
        rows[:, [0, *(g * grid_len + 1 for g in range(4))]] = 0  # BOS and markers
        query = int(rows.max(1).values.argmax())
        how = "the sharpest cell lookup"
    elif not isinstance(query, int) or not 0 <= query < height * width:
        raise ConfigError(f"query must be a cell index 0..{height * width - 1}, got {query!r}")
    else:
        how = "chosen"
    q = first + query
    row = pattern[q]
    weights = torch.full((4, height * width), float("nan"))
    ok = cell_keys <= q
    weights[ok] = row[cell_keys[ok]]
    markers = [float(row[g * grid_len + 1]) for g in range(4)]
    grids = tokens[0].reshape(4, grid_len)
    names = [TOKEN_TO_GRID.get(int(m), "?") for m in grids[:, 0]]

    plt = pyplot()
    fig = plt.figure(figsize=(16, 7))
    spec = fig.add_gridspec(2, 7, width_ratios=[1, 1, 1, 1, 0.07, 0.45, 2.1])
    vmax = max(float(np.nanmax(weights.numpy())), 1e-6)
    image = None
    for g in range(4):
        top = fig.add_subplot(spec[0, g])
        colours = COLOR_RGB[grids[g, 1:].clamp(max=N_COLORS - 1).reshape(height, width).numpy()]
        top.imshow(colours)
        top.set_title(f"grid {g + 1}: {names[g]}", fontsize=10)
        bottom = fig.add_subplot(spec[1, g])
        image = bottom.imshow(
            weights[g].reshape(height, width).numpy(), cmap="magma", vmin=0, vmax=vmax
        )
        bottom.set_title(f"marker {names[g]}: {markers[g]:.3f}", fontsize=9)
        for ax in (top, bottom):
            ax.set_xticks([])
            ax.set_yticks([])
        for value, (r, c) in _top_cells(weights[g], width, vmax):
            bottom.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=7, c="cyan")
    r, c = divmod(query, width)
    for i, ax in enumerate(fig.axes):  # the predicted cell, and the same cell in earlier grids
        solid = i >= len(fig.axes) - 2
        box = plt.Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, ec="lime", lw=2 if solid else 1)
        ax.add_patch(box)
    fig.colorbar(image, cax=fig.add_subplot(spec[1, 4]), label="attention weight")
    thumb = fig.add_subplot(spec[:, 6])
    whole = thumb.imshow(np.log10(pattern.numpy() + 1e-4), cmap="viridis", vmin=-4, vmax=0)
    fig.colorbar(whole, ax=thumb, fraction=0.04, label="log10 attention weight")
    thumb.axhline(q, color="red", lw=0.6)
    for g in range(1, 4):
        thumb.axvline(g * grid_len + 0.5, color="white", lw=0.3)
        thumb.axhline(g * grid_len + 0.5, color="white", lw=0.3)
    thumb.set_title("whole pattern (log10 weight; query row in red)", fontsize=9)
    thumb.set_xlabel("key position")
    thumb.set_ylabel("query position")
    fig.suptitle(
        f"{head}: query predicting cell {query} (row {r}, col {c}) of the predicted grid, "
        f"{how}; position {q}; BOS {float(row[0]):.3f}, markers {sum(markers):.3f}, "
        f"top offset {int(q - row.argmax())} ({float(row.max()):.2f})",
        fontsize=10,
    )
    return finish(fig, path)


def _top_cells(weights: torch.Tensor, width: int, vmax: float):
    """(weight, (row, col)) of the cells worth labelling: at least 10% of the largest weight."""
    values = torch.nan_to_num(weights, nan=0.0)
    order = values.argsort(descending=True)[:8]
    return [
        (float(values[i]), divmod(int(i), width))
        for i in order
        if values[i] >= 0.1 * vmax and not math.isnan(float(weights[i]))
    ]
