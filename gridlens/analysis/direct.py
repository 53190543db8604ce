"""Direct paths to the logits: each head's embedding -> OV -> unembedding map and how well the
head alone copies the previous grid; the logit lens over layers; direct logit attribution.

This model has no final LayerNorm: the readout is `unembed(resid)` with the residual as is. So
reading any residual with the unembedding is the model's own readout applied early, the logit
lens at the last layer is exactly the model's logits, and the final logits split exactly into a
sum of per-component terms (embedding, positions, each head, each MLP, the readout bias).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from gridlens.analysis.core import QuizSet, component_names, per_task, predicted_cells
from gridlens.errors import ConfigError
from gridlens.plotting import finish, pyplot
from gridlens.world.tokens import N_COLORS, grid_size_from_length

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _batches(model, quizzes: QuizSet, names: list[str], batch_size: int):
    """(tokens chunk, cache) over the quiz set, without gradients."""
    tokens = model.check_tokens(quizzes.tokens.to(model.device))
    with torch.no_grad():
        for lo in range(0, len(tokens), batch_size):
            chunk = tokens[lo : lo + batch_size]
            logits, cache = model.run_with_cache(chunk, names=names)
            yield chunk, logits, cache


def _head_weights(model, layer: int, head: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(W_V [d_value, D], W_O [d_value, D]) of one head: v = x @ W_V.T, out = z @ W_O."""
    attn, dv = model.blocks[layer].attn, model.cfg.d_value
    return attn.w_v[head].detach(), attn.w_o[head * dv : (head + 1) * dv].detach()


# ---------------------------------------------------------------------- copy scores


@dataclass
class DirectPathResult:
    """Per head: the direct-path matrix `ov[i]` [vocab, vocab] (row: the attended token, column:
    the output logit), its copy scores, and how well the head alone copies the previous grid.

    copy_score: share of the 11 colours whose own logit is the largest colour logit of its row.
    trace_score: trace / sum of |eigenvalues| of the colour block (Elhage et al.'s copying
    score: 1 for a copying map, about 0 for a random one, -1 for an anti-copying one).
    prev_vs_truth / prev_vs_prev: per head, per task, the share of predicted-grid cells where
    the argmax colour of the head's output, were it to attend only to the previous grid's copy
    of the cell (offset 100), equals the true cell / the previous grid's cell.
    actual_vs_truth / actual_vs_prev: the same for the head's actual output (its actual
    pattern), against the true cell / the previous grid's cell.
    distinct_vs_prev: actual_vs_prev over the cells where copying the previous grid can be told
    apart from copying a neighbour: the previous grid's cell differs from the cell before the
    predicted one and (below the first row) from the cell above it. distinct_share: the share
    of such cells per task.
    baseline: per task, the share of predicted cells equal to the previous grid's cell (what a
    perfect copier of the previous grid would score against the truth).
    """

    heads: list[str]
    ov: np.ndarray  # [heads, vocab, vocab]
    copy_score: np.ndarray  # [heads]
    trace_score: np.ndarray  # [heads]
    prev_vs_truth: dict[str, dict[str, float]]
    prev_vs_prev: dict[str, dict[str, float]]
    actual_vs_truth: dict[str, dict[str, float]]
    actual_vs_prev: dict[str, dict[str, float]]
    distinct_vs_prev: dict[str, dict[str, float]]
    baseline: dict[str, float]
    distinct_share: dict[str, float]

    def to_json(self) -> dict:
        return {
            "baseline_prev_grid_equals_truth": self.baseline,
            "distinct_cell_share": self.distinct_share,
            "heads": {
                head: {
                    "copy_score": float(self.copy_score[i]),
                    "trace_score": float(self.trace_score[i]),
                    "prev_cell_vs_truth": self.prev_vs_truth[head],
                    "prev_cell_vs_prev_grid": self.prev_vs_prev[head],
                    "actual_vs_truth": self.actual_vs_truth[head],
                    "actual_vs_prev_grid": self.actual_vs_prev[head],
                    "actual_vs_prev_grid_distinct_cells": self.distinct_vs_prev[head],
                    "ov": np.round(self.ov[i], 5).tolist(),
                }
                for i, head in enumerate(self.heads)
            },
        }

    def best(self, scores: dict[str, dict[str, float]]) -> str:
        """The head with the highest overall value of one of the per-head tables."""
        return max(self.heads, key=lambda h: scores[h]["all"])

    def findings(self) -> list[str]:
        copying = [h for h, c in zip(self.heads, self.copy_score, strict=True) if c >= 0.9]
        anti = [h for h, t in zip(self.heads, self.trace_score, strict=True) if t <= -0.5]
        real = self.best(self.distinct_vs_prev)
        fixed = [h for h in self.heads if self.prev_vs_prev[h]["all"] >= 0.9]
        fixed = fixed or [self.best(self.prev_vs_prev)]
        shares = ", ".join(f"{h} {self.prev_vs_prev[h]['all']:.1%}" for h in fixed)
        return [
            f"{len(copying)} of {len(self.heads)} heads map at least 10 of 11 colours to their "
            f"own logit ({', '.join(copying) or 'none'}); {len(anti)} have trace score <= -0.5 "
            f"(anti-copying: {', '.join(anti) or 'none'}).",
            "Were it to attend only to the previous grid's copy of each cell, a head alone "
            f"would reproduce that grid on this share of cells: {shares} (the previous grid "
            f"equals the truth on {self.baseline['all']:.1%} of cells).",
            f"With its actual attention, {real}'s direct output alone best matches the previous "
            f"grid on the {self.distinct_share['all']:.1%} of cells where that differs from the "
            f"cell before and the cell above: {self.distinct_vs_prev[real]['all']:.1%} (on all "
            f"cells {self.actual_vs_prev[real]['all']:.1%}; the truth "
            f"{self.actual_vs_truth[real]['all']:.1%}).",
        ]

    def plot(self, path: str | Path | None = None) -> Figure:
        """Every head's direct-path matrix (rows centred: a constant per row is irrelevant to
        the softmax), titled with its copy and trace scores."""
        plt = pyplot()
        layers = len({h.split("H")[0] for h in self.heads})
        per = len(self.heads) // layers
        fig, axes = plt.subplots(
            layers, per, figsize=(2.4 * per + 1, 2.5 * layers), squeeze=False, layout="constrained"
        )
        centred = self.ov - self.ov.mean(2, keepdims=True)
        bound = float(np.abs(centred).max()) or 1.0
        names = [str(t) for t in range(N_COLORS)] + ["A", "fA", "B", "fB"]
        for i, head in enumerate(self.heads):
            ax = axes[i // per][i % per]
            image = ax.imshow(centred[i], cmap="RdBu_r", vmin=-bound, vmax=bound)
            scores = f"copy {self.copy_score[i]:.2f}, trace {self.trace_score[i]:.2f}"
            ax.set_title(f"{head}: {scores}", fontsize=8)
            rows, cols = centred.shape[1:]
            ax.set_xticks(range(cols), names[:cols], fontsize=6, rotation=90)
            ax.set_yticks(range(rows), names[:rows], fontsize=6)
        fig.colorbar(image, ax=axes, shrink=0.6, label="logit, centred per row (one scale)")
        fig.supxlabel("output logit (token)")
        fig.supylabel("attended token")
        fig.suptitle("Direct path embedding -> LN1 -> OV -> unembedding, per head")
        return finish(fig, path)


def ln_scales(model, quizzes: QuizSet, batch_size: int = 64) -> torch.Tensor:
    """[layers, vocab] mean LN1 scale (the divisor sqrt(var + eps)) at the positions whose model
    input is each token, over the quiz set; the overall mean where a token never occurs."""
    cfg = model.cfg
    names = [f"blocks.{layer}.ln1.hook_scale" for layer in range(cfg.n_layers)]
    sums = torch.zeros(cfg.n_layers, cfg.vocab_size, dtype=torch.float64)
    counts = torch.zeros(cfg.vocab_size, dtype=torch.float64)
    for chunk, _, cache in _batches(model, quizzes, names, batch_size):
        inputs = model.model_input(chunk).flatten().cpu()
        counts += torch.bincount(inputs, minlength=cfg.vocab_size).double()
        for layer, name in enumerate(names):
            scale = cache[name].flatten().double().cpu()
            sums[layer] += torch.bincount(inputs, scale, minlength=cfg.vocab_size)
    overall = sums.sum(1, keepdim=True) / counts.sum()
    return torch.where(counts > 0, sums / counts.clamp(min=1), overall)


def direct_path_matrices(model, scales: torch.Tensor) -> torch.Tensor:
    """[layers * heads, vocab, d_vocab_out]: token embedding -> LN1 -> W_V -> W_O -> W_U.

    LayerNorm: its centring is applied exactly (it is linear), its division uses the measured
    scale of `scales[layer, token]` (see `ln_scales`), and its weight is applied. Left out, as
    they do not depend on the attended token and so add the same vector to every row: the LN
    bias, the positional part of the residual and the readout bias.
    """
    cfg = model.cfg
    emb = model.embed.weight.detach().double().cpu()
    centred = emb - emb.mean(1, keepdim=True)
    w_u = model.unembed.weight.detach().double().cpu()  # [vocab_out, D]
    out = []
    for layer in range(cfg.n_layers):
        ln_weight = model.blocks[layer].ln1.weight.detach().double().cpu()
        x = centred / scales[layer].cpu()[:, None] * ln_weight
        for head in range(cfg.n_heads):
            w_v, w_o = (w.double().cpu() for w in _head_weights(model, layer, head))
            out.append(x @ w_v.T @ w_o @ w_u.T)
    return torch.stack(out)


def _scores(ov: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(copy score, trace score) of each [vocab, vocab] matrix, on its colour block."""
    block = ov[:, :N_COLORS, :N_COLORS]
    diag = torch.arange(N_COLORS)
    copy = (block.argmax(-1) == diag).double().mean(-1)
    eig = torch.linalg.eigvals(block)
    trace = eig.real.sum(-1) / eig.abs().sum(-1).clamp_min(1e-30)
    return copy.numpy(), trace.numpy()


def copy_scores(model, quizzes: QuizSet, batch_size: int = 64) -> DirectPathResult:
    """Per head, the direct path embedding -> OV -> unembedding and how well the head alone
    copies the previous grid (see DirectPathResult). The prev-cell test uses the head's actual
    value vectors at the previous grid's cells (the real residual and LayerNorm there), its
    output projection and the unembedding, without the readout bias."""
    cfg = model.cfg
    tokens = quizzes.tokens
    cells = predicted_cells(tokens)
    grid_len = tokens.shape[1] // 4
    width = grid_size_from_length(tokens.shape[1])[1]
    prev_keys = slice(cells.start - grid_len + 1, cells.stop - grid_len + 1)  # offset 100
    ov = direct_path_matrices(model, ln_scales(model, quizzes, batch_size))
    copy, trace = _scores(ov)
    heads = component_names(cfg, ("head",))
    names = [f"blocks.{layer}.attn.hook_{site}" for layer in range(cfg.n_layers) for site in "vz"]
    w_u = model.unembed.weight.detach()[:N_COLORS]
    fixed_parts, real_parts = [], []
    for _, _, cache in _batches(model, quizzes, names, batch_size):
        fixed, real = [], []
        for layer in range(cfg.n_layers):
            v = cache[f"blocks.{layer}.attn.hook_v"][:, prev_keys]
            z = cache[f"blocks.{layer}.attn.hook_z"][:, cells]
            for head in range(cfg.n_heads):
                _, w_o = _head_weights(model, layer, head)
                fixed.append((v[:, :, head] @ w_o @ w_u.T).argmax(-1).cpu())
                real.append((z[:, :, head] @ w_o @ w_u.T).argmax(-1).cpu())
        fixed_parts.append(torch.stack(fixed, 1))
        real_parts.append(torch.stack(real, 1))
    fixed, real = torch.cat(fixed_parts), torch.cat(real_parts)  # [n, heads, cells]
    truth = tokens[:, None, cells]
    prev = tokens[:, None, cells.start - grid_len : cells.stop - grid_len]
    before = tokens[:, None, cells.start - 1 : cells.stop - 1]
    above = tokens[:, None, cells.start - width : cells.stop - width]
    first_row = torch.arange(cells.stop - cells.start) < width
    distinct = (prev != before) & (first_row | (prev != above))
    tasks = quizzes.tasks
    return DirectPathResult(
        heads,
        ov.numpy(),
        copy,
        trace,
        prev_vs_truth=_table(fixed == truth, heads, tasks),
        prev_vs_prev=_table(fixed == prev, heads, tasks),
        actual_vs_truth=_table(real == truth, heads, tasks),
        actual_vs_prev=_table(real == prev, heads, tasks),
        distinct_vs_prev=_table(real == prev, heads, tasks, distinct),
        baseline=per_task((prev == truth).double().mean((1, 2)), tasks),
        distinct_share=per_task(distinct.double().mean((1, 2)), tasks),
    )


def _table(
    hits: torch.Tensor, heads: list[str], tasks: np.ndarray, where: torch.Tensor | None = None
) -> dict[str, dict[str, float]]:
    """head -> task -> share of hits [n, heads, cells] among the cells in `where` [n, 1, cells]
    (pooled over the task's quizzes; all cells when None)."""
    if where is None:
        where = torch.ones_like(hits[:, :1])
    hits, where = hits & where, where.expand_as(hits)
    groups = {str(t): torch.from_numpy(tasks == t) for t in dict.fromkeys(tasks.tolist())}
    groups["all"] = torch.ones(len(tasks), dtype=torch.bool)
    out: dict[str, dict[str, float]] = {h: {} for h in heads}
    for task, rows in groups.items():
        share = hits[rows].sum((0, 2)) / where[rows].sum((0, 2)).clamp(min=1)
        for i, head in enumerate(heads):
            out[head][task] = float(share[i])
    return out


# ---------------------------------------------------------------------- logit lens and DLA


@dataclass
class LogitLensResult:
    """The residual stream read by the unembedding after the embedding and after each layer
    (`sites`), scored on the predicted grid (teacher-forced), and the direct logit attribution
    of the correct token's logit minus the mean logit to each of `components`.

    accuracy / loss: site -> task -> value. dla: component -> task -> mean contribution.
    dla_per_quiz [quizzes, components] and logit_diff [quizzes] (from the model's own logits)
    are kept so the exact decomposition can be checked: dla_per_quiz.sum(1) == logit_diff.
    cell: the predicted-grid cell the DLA is about (None: the mean over all 100 cells).
    """

    sites: list[str]
    accuracy: dict[str, dict[str, float]]
    loss: dict[str, dict[str, float]]
    components: list[str]
    dla: dict[str, dict[str, float]]
    dla_per_quiz: np.ndarray
    logit_diff: np.ndarray
    logit_diff_task: dict[str, float]
    cell: int | None

    def to_json(self) -> dict:
        return {
            "sites": self.sites,
            "accuracy": self.accuracy,
            "loss": self.loss,
            "dla_cell": self.cell,
            "dla": self.dla,
            "logit_diff": self.logit_diff_task,
        }

    def findings(self) -> list[str]:
        acc = [self.accuracy[s]["all"] for s in self.sites]
        ranked = sorted(self.components, key=lambda c: -abs(self.dla[c]["all"]))
        where = "averaged over all cells" if self.cell is None else f"at cell {self.cell}"
        return [
            "Predicted-grid accuracy of the residual read out directly: "
            + ", ".join(f"{s} {a:.1%}" for s, a in zip(self.sites, acc, strict=True))
            + f" (exact at {self.sites[-1]}: no final LayerNorm).",
            "Teacher-forced grid loss of the same readouts: "
            + ", ".join(f"{s} {self.loss[s]['all']:.3f}" for s in self.sites)
            + ".",
            f"Direct logit attribution {where} (correct minus mean logit "
            f"{self.logit_diff_task['all']:.2f}): largest "
            + ", ".join(f"{c} {self.dla[c]['all']:+.2f}" for c in ranked[:4])
            + ".",
        ]

    def plot(self, path: str | Path | None = None) -> Figure:
        """Left: accuracy per site per task; right: DLA per component (all tasks)."""
        plt = pyplot()
        fig, (left, right) = plt.subplots(
            1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [1, 1.4]}
        )
        x = range(len(self.sites))
        for task in self.accuracy[self.sites[0]]:
            style = {"color": "black", "lw": 2.5} if task == "all" else {"lw": 1, "alpha": 0.8}
            ys = [self.accuracy[s][task] for s in self.sites]
            left.plot(x, ys, marker="o", ms=3, label=task, **style)
        left.set_xticks(list(x), self.sites)
        left.set_ylim(0, 1.02)
        left.set_ylabel("predicted-grid cell accuracy (teacher-forced)")
        left.set_title("Logit lens: residual read by the unembedding")
        left.legend(fontsize=7)
        left.grid(alpha=0.3)
        values = [self.dla[c]["all"] for c in self.components]
        colours = ["tab:red" if v < 0 else "tab:blue" for v in values]
        right.bar(range(len(values)), values, color=colours)
        right.set_xticks(range(len(values)), self.components, rotation=90, fontsize=7)
        right.axhline(0, color="black", lw=0.6)
        where = "mean over cells" if self.cell is None else f"cell {self.cell}"
        right.set_title(
            f"Direct logit attribution ({where}); sum = {self.logit_diff_task['all']:.2f}"
        )
        right.set_ylabel("contribution to correct - mean logit")
        fig.tight_layout()
        return finish(fig, path)


def logit_lens(
    model, quizzes: QuizSet, cell: int | None = None, batch_size: int = 32
) -> LogitLensResult:
    """Logit lens per layer and direct logit attribution (see LogitLensResult).

    DLA components: `embed` (token embedding), `pos` (positions), `L{l}H{h}` (hook_z of the head
    @ its slice of W_O), `L{l}.mlp` (hook_mlp_out, its bias included) and `bias` (the readout
    bias). Their terms sum exactly to correct logit - mean logit, as there is no final LN.
    """
    cfg = model.cfg
    tokens = quizzes.tokens
    cells = predicted_cells(tokens)
    n_cells = cells.stop - cells.start
    if cell is not None and (not isinstance(cell, int) or not 0 <= cell < n_cells):
        raise ConfigError(f"cell must be None or a cell index 0..{n_cells - 1}, got {cell!r}")
    where = cells if cell is None else slice(cells.start + cell, cells.start + cell + 1)
    sites = ["embed", *(f"L{layer}" for layer in range(cfg.n_layers))]
    resid = ["blocks.0.hook_resid_pre"] + [
        f"blocks.{layer}.hook_resid_post" for layer in range(cfg.n_layers)
    ]
    names = [*resid, "hook_embed"] + [
        f"blocks.{layer}.{site}"
        for layer in range(cfg.n_layers)
        for site in ("attn.hook_z", "hook_mlp_out")
    ]
    components = ["embed", "pos"]
    for layer in range(cfg.n_layers):
        components += [f"L{layer}H{h}" for h in range(cfg.n_heads)] + [f"L{layer}.mlp"]
    components.append("bias")
    w_u = model.unembed.weight.detach().double()
    b_u = model.unembed.bias.detach().double()
    dv = cfg.d_value
    acc, loss, dla, diff = [], [], [], []
    for chunk, logits, cache in _batches(model, quizzes, names, batch_size):
        target = chunk[:, cells]
        acc_row, loss_row = [], []
        for name in resid:
            lens = model.unembed(cache[name][:, cells])
            acc_row.append((lens.argmax(-1) == target).float().mean(1).cpu())
            loss_row.append(
                F.cross_entropy(lens.float().transpose(1, 2), target, reduction="none")
                .mean(1)
                .cpu()
            )
        acc.append(torch.stack(acc_row, 1))
        loss.append(torch.stack(loss_row, 1))
        correct = chunk[:, where]
        direction = w_u[correct] - w_u.mean(0)  # [b, c, D]
        terms = [cache["hook_embed"][:, where], model.pos[where].expand(len(chunk), -1, -1)]
        for layer in range(cfg.n_layers):
            z = cache[f"blocks.{layer}.attn.hook_z"][:, where]
            w_o = model.blocks[layer].attn.w_o.detach()
            terms += [z[:, :, h] @ w_o[h * dv : (h + 1) * dv] for h in range(cfg.n_heads)]
            terms.append(cache[f"blocks.{layer}.hook_mlp_out"][:, where])
        contrib = [(t.double() * direction).sum(-1) for t in terms]
        contrib.append(b_u[correct] - b_u.mean())
        dla.append(torch.stack(contrib, -1).mean(1).cpu())  # [b, components]
        final = logits[:, where].double()
        own = final.gather(-1, correct[..., None])[..., 0] - final.mean(-1)
        diff.append(own.mean(1).cpu())
    tasks = quizzes.tasks
    acc_t, loss_t, dla_t = torch.cat(acc), torch.cat(loss), torch.cat(dla)
    logit_diff = torch.cat(diff)
    return LogitLensResult(
        sites=sites,
        accuracy={s: per_task(acc_t[:, i], tasks) for i, s in enumerate(sites)},
        loss={s: per_task(loss_t[:, i], tasks) for i, s in enumerate(sites)},
        components=components,
        dla={c: per_task(dla_t[:, i], tasks) for i, c in enumerate(components)},
        dla_per_quiz=dla_t.numpy(),
        logit_diff=logit_diff.numpy(),
        logit_diff_task=per_task(logit_diff, tasks),
        cell=cell,
    )
