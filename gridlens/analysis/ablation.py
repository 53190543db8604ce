"""Ablation: replace a component's output by zero, by its per-position mean over the quiz set, or
by its value on another quiz of the set (resample), and measure what the predicted grid loses.

Components are the names of `gridlens.analysis.core` (`L{l}.attn`, `L{l}.mlp`, `L{l}H{h}`,
`L{l}N{n}`). Effects are measured per task: the change in teacher-forced grid loss (and the
ratio to the clean loss), in teacher-forced cell accuracy and, with `greedy=True`, in the share of
grids generated right cell for cell with the ablation active during generation.

Speed: an ablation changes the residual stream at one point (after its block's attention, or
after its MLP) by an amount known from the clean cache: a neuron's (value - post_n) W_out[:, n], a
head's (value - z_h) W_O[h]. That change is added to the cached clean stream and only the later
blocks run, the last one for the predicted grid's queries only, with several ablated copies of
the quiz batch stacked per forward; ablations that change nothing (a dead neuron) cost nothing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from gridlens.analysis.core import (
    Component,
    QuizSet,
    component_names,
    grid_metrics,
    parse_component,
    per_task,
    predicted_cells,
)
from gridlens.analysis.patching import _tail
from gridlens.errors import ConfigError, unknown_name
from gridlens.models.generate import complete
from gridlens.notebook import Tabular, result_html
from gridlens.plotting import finish, pyplot

if TYPE_CHECKING:
    from matplotlib.figure import Figure

METHODS = ("zero", "mean", "resample")
GROUPS = {"layers": ("attn", "mlp"), "heads": ("head",), "neurons": ("neuron",)}
METRICS = ("loss_delta", "loss_ratio", "cell_accuracy_delta", "greedy_accuracy_delta")
#: bytes of the widest activation (rows x pos x d_mlp floats) one forward may hold. Past about
#: 32 MB glibc maps every new buffer afresh and its page faults cost more than the arithmetic
#: (benchmarks/ablation_speed.py): 16 MB keeps the default model's forwards at ~20 sequences.
FORWARD_BYTES = 16 * 2**20
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


@dataclass
class AblationResult(Tabular):
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

    def to_records(self) -> list[dict]:
        """One row per (component, task): every metric of ablating the component."""
        effects = {m: self.effect(m) for m in self.metrics()}
        return [
            {"component": c, "task": t, **{m: effects[m][c][t] for m in effects}}
            for c in self.components
            for t in self.task_names()
        ]

    def _repr_html_(self) -> str:
        title = f"{self.method} ablation of {len(self.components)} components"
        return result_html(title, self.findings(), self.plot(), self.to_records())

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

    def plot(self, path: str | Path | None = None) -> Figure:
        """Heat maps of the grid-loss increase per task (layer x head, or layer x {attn, mlp});
        a bar chart of the top components for neurons or mixed lists."""
        plt = pyplot()

        kinds = {_kind(name) for name in self.components}
        if kinds == {"head"} or kinds <= {"attn", "mlp"}:
            fig = self._heat_maps(plt, "head" in kinds)
        else:
            fig = self._bars(plt)
        return finish(fig, path)

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


_START = {"attn": "mid", "head": "mid", "mlp": "post", "neuron": "post"}


def _sweep_sites(chosen: list[Component]) -> list[str]:
    """Hook sites the teacher-forced sweep caches: each component's own and its start point."""
    names = {c.hook_name for c in chosen}
    names.update(f"blocks.{c.layer}.hook_resid_{_START[c.kind]}" for c in chosen)
    return sorted(names)


def _difference(act: torch.Tensor, value: torch.Tensor | None, rows: slice) -> torch.Tensor:
    """Replacement minus clean activation at one site, for the quizzes `rows` of the set."""
    if value is None:
        return -act
    if value.shape[0] > 1:
        value = value[rows]
    return value - act


def _moves(c: Component, diff: torch.Tensor) -> bool:
    """Whether ablating c changes anything in this chunk (a dead neuron's zero ablation, a
    resample from itself do not: the result is the clean run's)."""
    return bool(c.select(diff).any())


def _delta(model, group: list[Component], diff: torch.Tensor) -> torch.Tensor:
    """[k, m, pos, d_model] change of the residual stream at the components' start point, one
    copy per component: a head's (value - z_h) W_O[h], a neuron's (value - post_n) W_out[:, n],
    a whole layer's value - output."""
    cfg, c0 = model.cfg, group[0]
    if c0.kind not in ("head", "neuron"):
        return diff[None].expand(len(group), *diff.shape)
    idx = torch.tensor([c.index for c in group], device=diff.device)
    if c0.kind == "head":
        w_o = model.blocks[c0.layer].attn.w_o.view(cfg.n_heads, cfg.d_value, cfg.d_model)
        return torch.einsum("btkv,kvd->kbtd", diff[:, :, idx], w_o[idx])
    w_out = model.blocks[c0.layer].mlp.fc_out.weight  # [d_model, d_mlp]
    return torch.einsum("btk,dk->kbtd", diff[:, :, idx], w_out[:, idx])


def _answer_metrics(logits: torch.Tensor, answer: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Grid loss and cell accuracy from logits at the predicted grid's cells only."""
    loss = F.cross_entropy(logits.float().transpose(1, 2), answer, reduction="none").mean(1)
    accuracy = (logits.argmax(-1) == answer).float().mean(1)
    return loss.cpu().numpy(), accuracy.cpu().numpy()


@torch.no_grad()
def _teacher_forced(model, chosen, tokens, values, clean, rows_per_forward: int):
    """[C, n] grid loss and cell accuracy with each component ablated alone.

    Each component changes the residual stream at its start point (after its block's attention,
    or after its MLP) by a known amount (`_delta`); that is added to the cached clean stream and
    only the rest of the network runs, the last block's queries restricted to the predicted grid
    (`patching._tail`), many ablated copies stacked per forward. Components whose ablation
    changes nothing in a chunk keep the clean metrics without a forward."""
    n, qf = len(tokens), predicted_cells(tokens).start
    loss = np.repeat(clean.loss.numpy()[None], len(chosen), 0)
    accuracy = np.repeat(clean.cell_accuracy.numpy()[None], len(chosen), 0)
    index = {c.name: i for i, c in enumerate(chosen)}
    groups: dict[tuple[int, str, str], list[Component]] = {}
    for c in chosen:
        groups.setdefault((c.layer, _START[c.kind], c.hook_name), []).append(c)
    m = min(n, rows_per_forward)
    per = max(1, rows_per_forward // m)
    for lo in range(0, n, m):
        rows = slice(lo, min(lo + m, n))
        _, cache = model.run_with_cache(tokens[rows], names=_sweep_sites(chosen))
        answer = tokens[rows, qf:]
        for (layer, point, site), members in groups.items():
            diff = _difference(cache[site], values[site], rows)
            moving = [c for c in members if _moves(c, diff)]
            resid = cache[f"blocks.{layer}.hook_resid_{point}"]
            for g in range(0, len(moving), per):
                group = moving[g : g + per]
                stacked = (resid[None] + _delta(model, group, diff)).flatten(0, 1)
                logits = _tail(model, stacked, layer, point, qf)
                ids = [index[c.name] for c in group]
                part_loss, part_accuracy = _answer_metrics(logits, answer.repeat(len(group), 1))
                loss[ids, rows] = part_loss.reshape(len(group), -1)
                accuracy[ids, rows] = part_accuracy.reshape(len(group), -1)
    return loss, accuracy


@torch.no_grad()
def _greedy(model, chosen, tokens, values, rows_per_forward: int) -> np.ndarray:
    """[C, n] whether each grid is generated right with each component ablated alone during
    cached generation (the hooks of `stacked_hooks`, several components per generation)."""
    n, cells = len(tokens), predicted_cells(tokens)
    correct = np.zeros((len(chosen), n), dtype=bool)
    m = min(n, rows_per_forward)
    per = max(1, rows_per_forward // m)
    for lo in range(0, n, m):
        rows = slice(lo, min(lo + m, n))
        chunk = {s: v if v is None or v.shape[0] == 1 else v[rows] for s, v in values.items()}
        for g in range(0, len(chosen), per):
            group = chosen[g : g + per]
            stacked = tokens[rows].repeat(len(group), 1)
            with model.hooks(stacked_hooks([[c] for c in group], chunk)):
                out = complete(model, stacked)
            right = (out[:, cells] == stacked[:, cells]).all(1)
            correct[g : g + len(group), rows] = right.view(len(group), -1).cpu().numpy()
    return correct


def rows_that_fit(cfg, n_pos: int) -> int:
    """Sequences per forward whose MLP activations fit FORWARD_BYTES (at least one)."""
    return max(1, FORWARD_BYTES // (4 * n_pos * max(cfg.d_mlp, cfg.d_model)))


def ablate(
    model,
    quizzes: QuizSet,
    components: Sequence[str] | str = "layers",
    method: str = "mean",
    greedy: bool = False,
    seed: int = 0,
    rows_per_forward: int | None = None,
) -> AblationResult:
    """Ablate each component on its own and measure the predicted grid, per task.

    components: 'layers', 'heads', 'neurons' or names. method: 'zero', 'mean' (per-position mean
    over the quiz set, see `replacement_values`) or 'resample' (the same position of a donor quiz
    drawn with `seed`, see `donor_index`). greedy: also generate every grid with the ablation
    active (`ablation_hooks` during cached generation; one generation per component, stacked).
    rows_per_forward: sequences per forward (quizzes x stacked ablated copies); by default as
    many as fit FORWARD_BYTES.
    Teacher-forced metrics are computed as `_teacher_forced` says: exactly, not approximated.
    """
    if method not in METHODS:
        raise unknown_name("ablation method", method, METHODS)
    if rows_per_forward is None:
        rows_per_forward = rows_that_fit(model.cfg, quizzes.tokens.shape[-1])
    if rows_per_forward < 1:
        raise ConfigError(f"rows_per_forward must be >= 1, got {rows_per_forward}")
    chosen = resolve_components(model.cfg, components)
    tokens = model.check_tokens(quizzes.tokens.to(model.device))
    values = replacement_values(model, quizzes, [c.hook_name for c in chosen], method, seed)
    clean = grid_metrics(model, tokens, greedy=greedy)
    loss, accuracy = _teacher_forced(model, chosen, tokens, values, clean, rows_per_forward)
    correct = _greedy(model, chosen, tokens, values, rows_per_forward) if greedy else None
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
