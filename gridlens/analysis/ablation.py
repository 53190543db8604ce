"""Ablation: replace a component's output by zero, by its per-position mean over the quiz set, or
by its value on another quiz of the set (resample), and measure what the predicted grid loses.

Components are the names of `gridlens.analysis.core` (`L{l}.attn`, `L{l}.mlp`, `L{l}H{h}`,
`L{l}N{n}`). Effects are measured per task: the change in teacher-forced grid loss (and the
ratio to the clean loss), in teacher-forced cell accuracy and, with `greedy=True`, in the share of
grids generated right cell for cell with the ablation active during generation.

Speed: each component's forward starts from the clean residual stream cached before its layer,
and several components are ablated in one forward by stacking copies of the quiz batch, each copy
with its own component ablated (the hook knows which rows are which copy).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gridlens.analysis.core import (
    Component,
    QuizSet,
    component_names,
    grid_loss,
    grid_metrics,
    parse_component,
    per_task,
    predicted_cells,
)
from gridlens.errors import ConfigError, unknown_name
from gridlens.io import atomic_write
from gridlens.models.generate import complete

METHODS = ("zero", "mean", "resample")
GROUPS = {"layers": ("attn", "mlp"), "heads": ("head",), "neurons": ("neuron",)}
METRICS = ("loss_delta", "loss_ratio", "cell_accuracy_delta", "greedy_accuracy_delta")
#: rows (quizzes x stacked copies) per forward. On CPU the blocks' arithmetic dominates: 32 to
#: 256 rows per forward timed within noise for the default model, so this only bounds memory.
ROWS_PER_FORWARD = 64
FLOOR = 1e-3  # heat maps: loss increases below this (nats), negative ones too, show as this


def resolve_components(cfg, components: Sequence[str] | str) -> list[Component]:
    """'layers' (every L.attn and L.mlp), 'heads', 'neurons', one name or a list of names."""
    if isinstance(components, str):
        names = component_names(cfg, GROUPS[components]) if components in GROUPS else [components]
    else:
        names = list(components)
    if not names:
        raise ConfigError("no components to ablate")
    return [parse_component(name, cfg) for name in dict.fromkeys(names)]


def donor_index(n: int, seed: int = 0) -> np.ndarray:
    """For each quiz, another quiz of the set drawn uniformly (itself only when n == 1): the
    donor whose activations resample ablation substitutes."""
    if n == 1:
        return np.zeros(1, dtype=np.int64)
    rng = np.random.default_rng(seed)
    draw = rng.integers(0, n - 1, size=n)
    return draw + (draw >= np.arange(n))


@torch.no_grad()
def replacement_values(
    model,
    quizzes: QuizSet,
    sites: Sequence[str],
    method: str,
    seed: int = 0,
    batch_size: int = 64,
) -> dict[str, torch.Tensor | None]:
    """Per hook site, what ablation writes: None (zero); the mean at each position over the quiz
    set, [1, pos, ...] (mean); the donor quiz's activation, [n, pos, ...] (resample).

    The mean is taken per position, not over positions too: activations here depend strongly on
    the position (sinusoidal positions; markers, worked example and predicted grid each sit at
    fixed positions), so a mean over positions would write values never seen at that position
    and measure the damage of an off-distribution input, not the loss of quiz-specific
    information. The per-position mean keeps what every quiz shares at that position.
    Resample holds every quiz's donor activation (n x pos x width floats per site) in memory.
    """
    if method not in METHODS:
        raise unknown_name("ablation method", method, METHODS)
    sites = list(dict.fromkeys(sites))
    if method == "zero":
        return {site: None for site in sites}
    tokens = quizzes.tokens.to(model.device)
    chunks: dict[str, list[torch.Tensor]] = {site: [] for site in sites}
    sums: dict[str, torch.Tensor] = {}
    for lo in range(0, len(tokens), batch_size):
        _, cache = model.run_with_cache(tokens[lo : lo + batch_size], names=sites)
        for site in sites:
            if method == "mean":
                part = cache[site].sum(0, keepdim=True)
                sums[site] = part if site not in sums else sums[site] + part
            else:
                chunks[site].append(cache[site])
    if method == "mean":
        return {site: sums[site] / len(tokens) for site in sites}
    donors = torch.as_tensor(donor_index(len(tokens), seed), device=model.device)
    return {site: torch.cat(chunks[site])[donors] for site in sites}


class AblationHook:
    """Hook function for one site: copy j of a stacked batch (rows j*m .. (j+1)*m) has the
    components `copies[j]` replaced by `value` (None: zero), position-aware through `hook.start`
    so it also works one position at a time during cached generation."""

    def __init__(self, copies: Sequence[Sequence[Component]], value: torch.Tensor | None):
        self.copies = [list(c) for c in copies]
        self.value = value

    def __call__(self, x: torch.Tensor, hook) -> torch.Tensor:
        k = len(self.copies)
        if x.shape[0] % k:
            raise ConfigError(f"{k} stacked copies do not divide a batch of {x.shape[0]}")
        m = x.shape[0] // k
        value = None
        if self.value is not None:
            value = self.value[:, hook.start : hook.start + x.shape[1]]
            if value.shape[0] not in (1, m):
                raise ConfigError(
                    f"resample ablation was prepared for {value.shape[0]} quizzes; run it on "
                    f"those quizzes, in order and in one batch (got a batch of {m})"
                )
        out = x.clone()
        for j, components in enumerate(self.copies):
            part = out[j * m : (j + 1) * m]
            for c in components:
                target = c.select(part)
                if value is None:
                    target.zero_()
                else:
                    target.copy_(c.select(value).expand_as(target))
        return out


def stacked_hooks(
    copies: Sequence[Sequence[Component]], values: dict[str, torch.Tensor | None]
) -> list[tuple[str, AblationHook]]:
    """fwd_hooks ablating `copies[j]` in copy j of a batch stacked len(copies) times."""
    sites = dict.fromkeys(c.hook_name for copy in copies for c in copy)
    return [
        (
            site,
            AblationHook(
                [[c for c in copy if c.hook_name == site] for copy in copies], values[site]
            ),
        )
        for site in sites
    ]


def ablation_hooks(
    model,
    quizzes: QuizSet,
    components: Sequence[str] | str,
    method: str = "mean",
    seed: int = 0,
) -> list[tuple[str, AblationHook]]:
    """fwd_hooks ablating all `components` together, e.g. for `generate_under` or
    `model.hooks(...)`. Zero and mean hooks work on any batch; resample hooks only on
    `quizzes.tokens` itself, in one batch (each row takes its own donor's activation)."""
    chosen = resolve_components(model.cfg, components)
    values = replacement_values(model, quizzes, [c.hook_name for c in chosen], method, seed)
    return stacked_hooks([chosen], values)


def _run_from(model, layer: int, resid: torch.Tensor, fwd_hooks) -> torch.Tensor:
    """Logits from the residual stream entering block `layer`, with `fwd_hooks` active: the
    blocks before it are not recomputed."""
    return model.unembed(model.run_blocks(resid, layer, fwd_hooks=fwd_hooks))


@dataclass
class AblationResult:
    """Per-quiz metrics, clean and with each component ablated (rows follow `components`)."""

    method: str
    components: list[str]
    tasks: np.ndarray  # [n] task per quiz
    clean_loss: np.ndarray  # [n]
    clean_cell_accuracy: np.ndarray  # [n]
    loss: np.ndarray  # [C, n]
    cell_accuracy: np.ndarray  # [C, n]
    clean_greedy: np.ndarray | None = None  # [n] bool
    greedy: np.ndarray | None = None  # [C, n] bool
    seed: int = 0

    def task_names(self) -> list[str]:
        return [*dict.fromkeys(self.tasks.tolist()), "all"]

    def effect(self, metric: str = "loss_ratio") -> dict[str, dict[str, float]]:
        """component -> task (and 'all') -> effect of ablating it."""
        if metric not in METRICS:
            raise unknown_name("ablation metric", metric, METRICS)
        if metric == "greedy_accuracy_delta" and self.greedy is None:
            raise ConfigError("greedy accuracy was not measured: run ablate(..., greedy=True)")
        clean_loss = per_task(self.clean_loss, self.tasks)
        ablated, clean = {
            "loss_delta": (self.loss, self.clean_loss),
            "loss_ratio": (self.loss, self.clean_loss),
            "cell_accuracy_delta": (self.cell_accuracy, self.clean_cell_accuracy),
            "greedy_accuracy_delta": (self.greedy, self.clean_greedy),
        }[metric]
        out = {}
        for i, name in enumerate(self.components):
            if metric == "loss_ratio":
                loss = per_task(ablated[i], self.tasks)
                out[name] = {t: loss[t] / max(clean_loss[t], 1e-12) for t in loss}
            else:
                out[name] = per_task(ablated[i].astype(float) - clean.astype(float), self.tasks)
        return out

    def top(self, n: int = 10, metric: str = "loss_ratio", task: str = "all"):
        """The n most damaging components: highest loss delta/ratio, lowest accuracy delta."""
        effect = self.effect(metric)
        if task not in self.task_names():
            raise unknown_name("task", task, self.task_names())
        sign = 1.0 if metric.startswith("loss") else -1.0
        ranked = sorted(effect.items(), key=lambda item: -sign * item[1][task])
        return [(name, values[task]) for name, values in ranked[:n]]

    def clean_summary(self) -> dict[str, dict[str, float]]:
        out = {
            "loss": per_task(self.clean_loss, self.tasks),
            "cell_accuracy": per_task(self.clean_cell_accuracy, self.tasks),
        }
        if self.clean_greedy is not None:
            out["greedy_accuracy"] = per_task(self.clean_greedy.astype(float), self.tasks)
        return out

    def metrics(self) -> list[str]:
        return [m for m in METRICS if m != "greedy_accuracy_delta" or self.greedy is not None]

    def to_json(self) -> dict:
        effects = {m: self.effect(m) for m in self.metrics()}
        return {
            "method": self.method,
            "seed": self.seed,
            "n_quizzes": len(self.tasks),
            "tasks": self.task_names(),
            "components": list(self.components),
            "clean": self.clean_summary(),
            "effects": {name: {m: effects[m][name] for m in effects} for name in self.components},
        }

    def findings(self) -> list[str]:
        clean = per_task(self.clean_loss, self.tasks)["all"]
        ranked = self.top(len(self.components), "loss_ratio")
        verb = {"zero": "Zero", "mean": "Mean", "resample": "Resample"}[self.method]
        name, ratio = ranked[0]
        loss = self.effect("loss_delta")[name]["all"] + clean
        text = f"{verb}-ablating {name} multiplies grid loss by {ratio:.3g}"
        text += f" ({clean:.3g} -> {loss:.3g})"
        if len(ranked) > 1:
            text += f"; the next, {ranked[1][0]}, by {ranked[1][1]:.3g}"
        out = [text + "."]
        strong = sum(r > 2 for _, r in ranked)
        out.append(f"{strong} of {len(ranked)} components more than double the grid loss.")
        acc = self.effect("cell_accuracy_delta")
        tasks = self.task_names()[:-1]
        if len(tasks) > 1:
            comp, task = min(
                ((c, t) for c in self.components for t in tasks), key=lambda ct: acc[ct[0]][ct[1]]
            )
            out.append(
                f"Largest cell-accuracy drop on one task: {comp} on {task} "
                f"({100 * acc[comp][task]:+.1f} points; all tasks {100 * acc[comp]['all']:+.1f})."
            )
        if self.greedy is not None:
            g = self.effect("greedy_accuracy_delta")
            worst = min(self.components, key=lambda c: g[c]["all"])
            base = per_task(self.clean_greedy.astype(float), self.tasks)["all"]
            out.append(
                f"Greedy accuracy falls most under {worst}: {100 * base:.1f}% -> "
                f"{100 * (base + g[worst]['all']):.1f}%."
            )
        return out

    def plot(self, path: str | Path) -> Path:
        """Heat maps of the grid-loss increase per task (layer x head, or layer x {attn, mlp});
        a bar chart of the top components for neurons or mixed lists."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        kinds = {_kind(name) for name in self.components}
        if kinds == {"head"} or kinds <= {"attn", "mlp"}:
            fig = self._heat_maps(plt, "head" in kinds)
        else:
            fig = self._bars(plt)
        atomic_write(path, lambda handle: fig.savefig(handle, format="png"))
        plt.close(fig)
        return Path(path)

    def _heat_maps(self, plt, heads: bool):
        """One panel per task of the absolute grid-loss increase (ratios would be dominated by
        tasks whose clean loss is near zero), log colour scale clipped below FLOOR."""
        from matplotlib.colors import LogNorm

        delta = self.effect("loss_delta")
        rows, labels, key = self._layout(heads)
        tasks = self.task_names()
        cols = min(3, len(tasks))
        fig, axes = plt.subplots(
            -(-len(tasks) // cols),
            cols,
            figsize=(3.8 * cols, 3.3 * -(-len(tasks) // cols)),
            dpi=110,
            squeeze=False,
        )
        fig.subplots_adjust(hspace=0.45, wspace=0.3)
        grids = {t: np.full((len(rows), len(labels)), np.nan) for t in tasks}
        for name, (i, j) in key.items():
            for t in tasks:
                grids[t][i, j] = delta[name][t] if name in delta else np.nan
        top = max(10 * FLOOR, max(np.nanmax(g) for g in grids.values()))
        norm = LogNorm(vmin=FLOOR, vmax=top, clip=True)
        for ax, task in zip(axes.flat, tasks, strict=False):
            image = ax.imshow(
                np.clip(grids[task], FLOOR, None), cmap="Reds", norm=norm, aspect="auto"
            )
            ax.set_title(f"{task}: loss increase", fontsize=9)
            ax.set_xticks(range(len(labels)), labels, fontsize=8)
            ax.set_yticks(range(len(rows)), rows, fontsize=8)
            for (i, j), v in np.ndenumerate(grids[task]):
                if np.isfinite(v):
                    colour = "white" if v > top**0.5 * FLOOR**0.5 else "black"
                    ax.text(j, i, f"{v:+.2g}", ha="center", va="center", fontsize=7, color=colour)
        for ax in list(axes.flat)[len(tasks) :]:
            ax.axis("off")
        fig.colorbar(
            image,
            ax=axes,
            shrink=0.6,
            label=f"ablated - clean grid loss (nats); below {FLOOR:g} clipped",
        )
        fig.suptitle(f"{self.method} ablation: increase of the grid loss per task", fontsize=10)
        return fig

    def _layout(self, heads: bool):
        """(row labels, column labels, component -> (row, column)) of the heat maps."""
        layers = sorted({_layer(n) for n in self.components})
        if heads:
            columns = sorted({int(n.split("H")[1]) for n in self.components})
            labels = [f"H{h}" for h in columns]
            names = [[f"L{lay}H{h}" for h in columns] for lay in layers]
        else:
            labels = ["attn", "mlp"]
            names = [[f"L{lay}.{k}" for k in labels] for lay in layers]
        key = {n: (i, j) for i, row in enumerate(names) for j, n in enumerate(row)}
        return [f"L{lay}" for lay in layers], labels, key

    def _bars(self, plt):
        ranked = self.top(min(30, len(self.components)), "loss_ratio")
        fig, ax = plt.subplots(figsize=(8, 0.25 * len(ranked) + 1.2), dpi=110)
        names = [n for n, _ in ranked][::-1]
        ax.barh(names, [v for _, v in ranked][::-1], color="tab:red")
        ax.axvline(1.0, color="gray", lw=0.8, ls="--")
        if ranked[0][1] > 10:
            ax.set_xscale("log")
        else:  # small effects: a linear axis starting near the smallest ratio
            low = min(1.0, ranked[-1][1])
            ax.set_xlim(low - 0.05 * (ranked[0][1] - low + 1e-3), None)
        ax.set_xlabel("ablated / clean grid loss (all tasks)")
        ax.tick_params(axis="y", labelsize=7)
        ax.set_title(f"{self.method} ablation: top {len(ranked)} of {len(self.components)}")
        fig.tight_layout()
        return fig


def _kind(name: str) -> str:
    if name.endswith((".attn", ".mlp")):
        return name.rsplit(".", 1)[1]
    return "head" if "H" in name else "neuron"


def _layer(name: str) -> int:
    return int(re.match(r"L(\d+)", name).group(1))


def _ablated_resid_post(
    model, components: list[Component], cache, values: dict, rows: slice
) -> torch.Tensor:
    """The residual stream after the MLP of the components' layer, one stacked copy per MLP
    component ablated ([k * m, pos, d_model]): an MLP layer's output or one neuron's share of
    it (post_n * W_out[:, n]) swapped for its replacement, without recomputing the layer."""
    layer = components[0].layer
    resid = cache[f"blocks.{layer}.hook_resid_post"]
    copies = []
    for c in components:
        value = values[c.hook_name]
        if value is not None and value.shape[0] > 1:
            value = value[rows]
        if c.kind == "mlp":
            mid = cache[f"blocks.{layer}.hook_resid_mid"]
            copies.append(mid if value is None else mid + value)
        else:
            post = c.select(cache[c.hook_name])
            new = torch.zeros_like(post) if value is None else c.select(value)
            w_out = model.blocks[layer].mlp.fc_out.weight[:, c.index]
            copies.append(resid + (new - post).unsqueeze(-1) * w_out)
    return torch.cat(copies)


@torch.no_grad()
def ablate(
    model,
    quizzes: QuizSet,
    components: Sequence[str] | str = "layers",
    method: str = "mean",
    greedy: bool = False,
    seed: int = 0,
    rows_per_forward: int = ROWS_PER_FORWARD,
) -> AblationResult:
    """Ablate each component on its own and measure the predicted grid, per task.

    components: 'layers', 'heads', 'neurons' or names. method: 'zero', 'mean' (per-position mean
    over the quiz set, see `replacement_values`) or 'resample' (the same position of a donor quiz
    drawn with `seed`, see `donor_index`). greedy: also generate every grid with the ablation
    active (`ablation_hooks` during cached generation; one generation per component, stacked).

    Teacher-forced metrics start from the clean residual stream cached for each chunk of
    quizzes: attention components run from their block's input with the ablation hook; MLP
    layers and neurons change the residual stream after their block by a known amount (the
    replaced output, or (value - post_n) * W_out[:, n]), so only later blocks are recomputed.
    """
    if method not in METHODS:
        raise unknown_name("ablation method", method, METHODS)
    if rows_per_forward < 1:
        raise ConfigError(f"rows_per_forward must be >= 1, got {rows_per_forward}")
    chosen = resolve_components(model.cfg, components)
    tokens = model.check_tokens(quizzes.tokens.to(model.device))
    n = len(tokens)
    values = replacement_values(model, quizzes, [c.hook_name for c in chosen], method, seed)
    clean = grid_metrics(model, tokens, greedy=greedy)
    cells = predicted_cells(tokens)
    index = {c.name: i for i, c in enumerate(chosen)}
    loss = np.zeros((len(chosen), n))
    accuracy = np.zeros((len(chosen), n))
    correct = np.zeros((len(chosen), n), dtype=bool) if greedy else None
    m = min(n, rows_per_forward)
    k = max(1, rows_per_forward // m)
    # groups run together: same layer, same path (attention from resid_pre, MLP from resid_post)
    groups: dict[tuple[int, bool], list[Component]] = {}
    for c in chosen:
        groups.setdefault((c.layer, c.kind in ("attn", "head")), []).append(c)
    needed = set()
    for c in chosen:
        if c.kind in ("attn", "head"):
            needed.add(f"blocks.{c.layer}.hook_resid_pre")
        else:
            needed.update(f"blocks.{c.layer}.{s}" for s in ("hook_resid_mid", "hook_resid_post"))
            if c.kind == "neuron":
                needed.add(c.hook_name)
    for lo in range(0, n, m):
        rows = slice(lo, min(lo + m, n))
        part = tokens[rows]
        _, cache = model.run_with_cache(part, names=sorted(needed))
        chunk = {s: v if v is None or v.shape[0] == 1 else v[rows] for s, v in values.items()}
        for (layer, attention), members in groups.items():
            for g in range(0, len(members), k):
                group = members[g : g + k]
                hooks = stacked_hooks([[c] for c in group], chunk)
                stacked = part.repeat(len(group), 1)
                if attention:
                    resid = cache[f"blocks.{layer}.hook_resid_pre"].repeat(len(group), 1, 1)
                    logits = _run_from(model, layer, resid, hooks)
                else:
                    resid = _ablated_resid_post(model, group, cache, values, rows)
                    logits = _run_from(model, layer + 1, resid, ())
                ok = logits[:, cells].argmax(-1) == stacked[:, cells]
                shape = (len(group), -1)
                ids = [index[c.name] for c in group]
                loss[ids, rows] = grid_loss(logits, stacked).view(shape).cpu().numpy()
                accuracy[ids, rows] = ok.float().mean(1).view(shape).cpu().numpy()
                if greedy:
                    with model.hooks(hooks):
                        out = complete(model, stacked)
                    right = (out[:, cells] == stacked[:, cells]).all(1)
                    correct[ids, rows] = right.view(shape).cpu().numpy()
    return AblationResult(
        method=method,
        components=[c.name for c in chosen],
        tasks=np.asarray(quizzes.tasks),
        clean_loss=clean.loss.numpy(),
        clean_cell_accuracy=clean.cell_accuracy.numpy(),
        loss=loss,
        cell_accuracy=accuracy,
        clean_greedy=clean.greedy_correct.numpy() if greedy else None,
        greedy=correct,
        seed=seed,
    )
