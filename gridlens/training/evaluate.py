"""Evaluating a GridGPT on the held-out test set, per task and per structure.

For each (task, structure) the n test quizzes are completed autoregressively with the KV cache
(greedy, and sampled at temperature 1 as the original did); a quiz counts only if all cells of
the predicted (last) grid are right. Also: the per-cell accuracy of the greedy grid, the
teacher-forced cross-entropy on the predicted grid only, and, for every wrong greedy answer,
whether it is still a valid instance of the task under other parameters (the world's checker
run on the quiz with the prediction put back in its canonical place).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.nn import functional as F

from gridlens.notebook import Tabular, findings_html, image_html, table_html
from gridlens.plotting import finish, pyplot
from gridlens.world import check
from gridlens.world import structures as st
from gridlens.world.tasks import resolve_tasks
from gridlens.world.tokens import N_COLORS, grids_to_tokens

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PREDICTED_STRUCTURES: tuple[str, ...] = ("forward", "inverse", "backward", "backward_inverse")
"""The four structures whose last grid is the one to predict (the original's test)."""

METRICS = ("accuracy_greedy", "accuracy_sampled", "cell_accuracy", "loss", "wrong_valid")


@dataclass
class Failure:
    task: str
    structure: str
    truth: torch.Tensor  # [L] tokens in the structure's order
    prediction: torch.Tensor  # [L]
    valid_other: bool


@dataclass
class _Counts:
    n: int = 0
    greedy: int = 0
    sampled: int = 0
    cells: float = 0.0
    cell_total: int = 0
    loss: float = 0.0
    wrong: int = 0
    wrong_valid: int = 0

    def add(self, other: _Counts) -> None:
        for k in self.__dataclass_fields__:
            setattr(self, k, getattr(self, k) + getattr(other, k))

    def summary(self, sampled: bool) -> dict[str, Any]:
        n = max(self.n, 1)
        return {
            "accuracy_greedy": self.greedy / n,
            "accuracy_sampled": self.sampled / n if sampled else None,
            "cell_accuracy": self.cells / max(self.cell_total, 1),
            "loss": self.loss / n,
            "wrong_valid": self.wrong_valid / self.wrong if self.wrong else None,
            "n": self.n,
        }


@dataclass
class EvalResult(Tabular):
    tasks: dict[str, dict[str, Any]]
    structures: dict[str, dict[str, Any]]
    by_task_structure: dict[str, dict[str, dict[str, Any]]]
    overall: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "tasks": self.tasks,
            "structures": self.structures,
            "by_task_structure": self.by_task_structure,
            "overall": self.overall,
            **self.meta,
        }

    def to_records(self) -> list[dict[str, Any]]:
        """One row per task, then per structure, then overall (`group` says which)."""
        rows = [{"group": "task", "name": t, **m} for t, m in self.tasks.items()]
        rows += [{"group": "structure", "name": s, **m} for s, m in self.structures.items()]
        return [*rows, {"group": "overall", "name": "all", **self.overall}]

    def _repr_html_(self) -> str:
        greedy = self.overall["accuracy_greedy"]
        head = f"greedy accuracy {greedy:.1%} on {self.overall['n']} quizzes"
        chart = image_html(bar_chart(self), "accuracy per task")
        return f"<div>{findings_html([head])}{chart}{table_html(self.to_records())}</div>"

    def table(self) -> str:
        """A plain-text table: one row per task, then per structure, then overall."""
        head = f"{'':<18}{'greedy':>8}{'sampled':>9}{'cells':>8}{'loss':>8}{'wrong ok':>10}{'n':>6}"
        lines = [head, "-" * len(head)]

        def row(name: str, m: dict[str, Any]) -> str:
            def pct(x):
                return "    -" if x is None else f"{100 * x:5.1f}%"

            return (
                f"{name:<18}{pct(m['accuracy_greedy']):>8}{pct(m['accuracy_sampled']):>9}"
                f"{pct(m['cell_accuracy']):>8}{m['loss']:>8.4f}{pct(m['wrong_valid']):>10}"
                f"{m['n']:>6}"
            )

        lines += [row(t, m) for t, m in self.tasks.items()]
        lines.append("-" * len(head))
        lines += [row(s, m) for s, m in self.structures.items()]
        lines.append("-" * len(head))
        lines.append(row("overall", self.overall))
        return "\n".join(lines)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is not None and dtype != torch.float32:
        return torch.autocast(device.type, dtype=dtype)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(
    model,
    test_set,
    tasks: Sequence[str] | str | None = None,
    structures: Sequence[str] = PREDICTED_STRUCTURES,
    n: int = 100,
    batch_size: int = 256,
    sampled: bool = True,
    sample_seed: int = 0,
    max_failures: int = 0,  # failures kept in all (spread over the task/structure groups)
    autocast_dtype: torch.dtype | None = None,
    progress=None,
) -> EvalResult:
    """Evaluate `model` on `test_set` (a data.TestSet); see the module docstring."""
    from gridlens.models import last_grid_positions

    was_training = model.training
    model.eval()
    names = resolve_tasks(tasks) if tasks is not None else tuple(test_set.pools)
    device = model.device
    failures: list[Failure] = []
    generator = torch.Generator(device=device)
    generator.manual_seed(int(sample_seed))
    # All (task, structure) groups go through the model together, in batches of batch_size:
    # the KV-cache decoding costs about the same per step for 4 quizzes as for 256.
    groups = [(task, sname) for task in names for sname in structures]
    parts = [test_set.quizzes(task, sname, n) for task, sname in groups]
    all_tokens = torch.cat([p[0] for p in parts])
    all_grids = np.concatenate([p[1] for p in parts])
    group_of = np.repeat(np.arange(len(groups)), n)
    total = len(all_tokens)
    loss_all = torch.empty(total)
    greedy_all = torch.empty_like(all_tokens)
    sampled_ok = torch.zeros(total, dtype=torch.bool)
    cells = last_grid_positions(all_tokens.shape[1])
    for lo in range(0, total, batch_size):
        tokens = all_tokens[lo : lo + batch_size].to(device)
        with _autocast(device, autocast_dtype):
            logits = model(tokens)[:, cells].float()
            greedy = model.complete(tokens, temperature=0.0)
            sample = (
                model.complete(tokens, temperature=1.0, generator=generator) if sampled else None
            )
        target = tokens[:, cells]
        loss = F.cross_entropy(logits.transpose(1, 2), target, reduction="none").mean(1)
        loss_all[lo : lo + len(tokens)] = loss.cpu()
        greedy_all[lo : lo + len(tokens)] = greedy.cpu()
        if sample is not None:
            sampled_ok[lo : lo + len(tokens)] = (sample[:, cells] == target).all(1).cpu()
        if progress is not None:
            progress(len(tokens))
    right_cells = greedy_all[:, cells] == all_tokens[:, cells]
    ok = right_cells.all(1).numpy()
    by_ts: dict[str, dict[str, _Counts]] = {task: {} for task in names}
    per_group = -(-max_failures // len(groups)) if max_failures else 0  # failures kept per group
    for g, (task, sname) in enumerate(groups):
        rows = np.flatnonzero(group_of == g)
        counts = _Counts(
            n=len(rows),
            greedy=int(ok[rows].sum()),
            sampled=int(sampled_ok[rows].sum()),
            cells=float(right_cells[rows].sum()),
            cell_total=int(right_cells[rows].numel()),
            loss=float(loss_all[rows].sum()),
        )
        wrong = rows[~ok[rows]]
        if len(wrong):
            valid = _valid_other(task, st.get_structure(sname), all_grids[wrong], greedy_all[wrong])
            counts.wrong = len(wrong)
            counts.wrong_valid = int(valid.sum())
            for i, j in enumerate(wrong):
                if i >= per_group:
                    break
                failures.append(Failure(task, sname, all_tokens[j], greedy_all[j], bool(valid[i])))
        by_ts[task][sname] = counts
    model.train(was_training)
    return _summarise(
        by_ts,
        structures,
        sampled,
        {"n_per_task_structure": n, "test_seed": test_set.seed},
        failures,
    )


def _valid_other(task: str, spec, grids: np.ndarray, predicted: torch.Tensor) -> np.ndarray:
    """[m] bool: is the quiz with the predicted last grid a valid instance of `task`?"""
    h, w = grids.shape[-2:]
    slots = st.reorder(grids, spec).copy()
    slots[:, 3] = predicted[:, -h * w :].cpu().numpy().reshape(-1, h, w)
    colours_only = (slots[:, 3] < N_COLORS).all(axis=(1, 2))  # a marker in a grid: not valid
    valid = np.zeros(len(slots), dtype=bool)
    if colours_only.any():
        canonical = st.to_canonical(slots[colours_only], spec)
        tokens = grids_to_tokens(canonical, st.STRUCTURES["forward"].order)
        valid[colours_only] = check(task, tokens, h, w).numpy()
    return valid


def _summarise(by_ts, structures, sampled, meta, failures) -> EvalResult:
    tasks, per_structure, table = {}, {}, {}
    overall = _Counts()
    s_counts = {s: _Counts() for s in structures}
    for task, row in by_ts.items():
        t_counts = _Counts()
        table[task] = {}
        for s, c in row.items():
            t_counts.add(c)
            s_counts[s].add(c)
            table[task][s] = c.summary(sampled)
        overall.add(t_counts)
        tasks[task] = t_counts.summary(sampled)
    per_structure = {s: c.summary(sampled) for s, c in s_counts.items()}
    return EvalResult(tasks, per_structure, table, overall.summary(sampled), meta, failures)


# ------------------------------------------------------------------------------ figures


def bar_chart(
    result: EvalResult | dict[str, Any], path: str | Path | None = None, title: str = ""
) -> Figure:
    """Per-task accuracy (greedy, sampled) and per-cell accuracy as grouped bars, PNG."""
    plt = pyplot()

    tasks = result.tasks if isinstance(result, EvalResult) else result["tasks"]
    names = list(tasks)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names) + 2), 4), dpi=110)
    series = [
        ("accuracy_greedy", "greedy"),
        ("accuracy_sampled", "sampled (T=1)"),
        ("cell_accuracy", "per cell"),
    ]
    width = 0.27
    for i, (key, label) in enumerate(series):
        values = [tasks[t][key] if tasks[t][key] is not None else math.nan for t in names]
        ax.bar(x + (i - 1) * width, values, width, label=label)
    ax.axhline(0.95, color="gray", lw=0.8, ls="--")
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("accuracy on the predicted grid")
    ax.set_title(title or "accuracy per task")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return finish(fig, path)


def failure_gallery(failures: Sequence[Failure], path, per_task: int = 2) -> int:
    """PNG of failures: for each, the true quiz, then the prediction with wrong cells outlined.
    At most `per_task` per task. Returns the number of failures drawn (0: no file written)."""
    from gridlens.world.render import render_png

    chosen: list[Failure] = []
    seen: dict[str, int] = {}
    for f in failures:
        if seen.get(f.task, 0) < per_task:
            chosen.append(f)
            seen[f.task] = seen.get(f.task, 0) + 1
    if not chosen:
        return 0
    tokens, highlight, captions = [], [], []
    for f in chosen:
        wrong = f.truth != f.prediction
        shown = f.prediction.clone()
        cells = torch.ones_like(wrong)
        cells[:: len(shown) // 4] = False  # marker positions
        shown[cells & (shown >= N_COLORS)] = 0  # a generated marker token: drawn white, outlined
        tokens += [f.truth, shown]
        highlight += [torch.zeros_like(wrong), wrong]
        captions += [
            f"{f.task} / {f.structure}: truth",
            "prediction" + (" (valid under other params)" if f.valid_other else ""),
        ]
    render_png(
        torch.stack(tokens),
        path,
        highlight=torch.stack(highlight).numpy(),
        captions=captions,
        columns=2 if len(tokens) > 8 else 1,
    )
    return len(chosen)
