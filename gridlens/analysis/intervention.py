"""Interventions during generation: generate every predicted grid greedily with forward hooks
active (an ablation, a patch, a steering vector) and compare with the model left alone: accuracy
per task and where on the grid generation first goes wrong.

Hooks see one position at a time during cached generation (`hook.start` is the absolute
position), so position-aware hooks must index with `p - hook.start`; `ablation_hooks` do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from gridlens.analysis.core import QuizSet, per_task, predicted_cells
from gridlens.models.generate import complete
from gridlens.plotting import finish, pyplot

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def first_mismatch(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[n] index of the first position where rows of a and b differ, -1 where they agree."""
    differ = a != b
    return torch.where(differ.any(1), differ.float().argmax(1), -1)


@dataclass
class InterventionResult:
    """Per quiz: the generated predicted grid right or not, clean and under the hooks, and the
    first wrong cell (generation order = row-major cell index, -1 when none)."""

    tasks: np.ndarray  # [n]
    clean_correct: np.ndarray  # [n] bool
    correct: np.ndarray  # [n] bool, with the hooks
    clean_first_error: np.ndarray  # [n]
    first_error: np.ndarray  # [n], with the hooks
    first_departure: np.ndarray  # [n] first cell where the hooked grid differs from the clean one
    hooks: list[str]  # hook sites the intervention used
    clean_cells: np.ndarray  # [n] share of the generated grid's cells that are right, clean
    cells: np.ndarray  # [n] the same with the hooks (partial credit where whole grids fail)
    height: int = 10
    width: int = 10

    def accuracy(self) -> dict[str, dict[str, float]]:
        clean = per_task(self.clean_correct.astype(float), self.tasks)
        hooked = per_task(self.correct.astype(float), self.tasks)
        return {
            "clean": clean,
            "intervened": hooked,
            "delta": {t: hooked[t] - clean[t] for t in clean},
        }

    def to_json(self) -> dict:
        changed = self.first_departure >= 0
        return {
            "hooks": list(self.hooks),
            "n_quizzes": len(self.tasks),
            "grid": [self.height, self.width],
            "greedy_accuracy": self.accuracy(),
            "changed_share": per_task(changed.astype(float), self.tasks),
            "cells_right": {
                "clean": per_task(self.clean_cells, self.tasks),
                "intervened": per_task(self.cells, self.tasks),
            },
            "first_error": [int(v) for v in self.first_error],
            "clean_first_error": [int(v) for v in self.clean_first_error],
            "first_departure": [int(v) for v in self.first_departure],
            "tasks_per_quiz": [str(t) for t in self.tasks],
        }

    def findings(self) -> list[str]:
        acc = self.accuracy()
        tasks = [t for t in acc["clean"] if t != "all"]
        out = [
            f"Under the intervention greedy accuracy goes from {100 * acc['clean']['all']:.1f}% "
            f"to {100 * acc['intervened']['all']:.1f}% over {len(self.tasks)} quizzes."
        ]
        if len(tasks) > 1:
            worst = min(tasks, key=lambda t: acc["delta"][t])
            out.append(
                f"Largest drop on {worst}: {100 * acc['clean'][worst]:.1f}% -> "
                f"{100 * acc['intervened'][worst]:.1f}%."
            )
        clean, hooked = per_task(self.clean_cells, self.tasks), per_task(self.cells, self.tasks)
        low = min(tasks, key=hooked.get)
        out.append(
            f"Cells right in the generated grids: {100 * clean['all']:.1f}% -> "
            f"{100 * hooked['all']:.1f}% (lowest: {low}, {100 * hooked[low]:.1f}%)."
        )
        changed = self.first_departure >= 0
        out.append(
            f"The generated grid changes in {changed.sum()} of {len(changed)} quizzes "
            f"({100 * changed.mean():.1f}%)."
        )
        errors = self.first_error[self.first_error >= 0]
        if len(errors):
            rows = errors // self.width
            out.append(
                f"First errors fall at median cell {int(np.median(errors))} "
                f"(row {int(np.median(rows))}); {100 * (rows == 0).mean():.0f}% in the first row."
            )
        return out

    def error_maps(self) -> dict[str, np.ndarray]:
        """task (and 'all') -> [H, W] count of quizzes whose first error (under the hooks) is
        at each cell."""
        out = {}
        for task in [*dict.fromkeys(self.tasks.tolist()), "all"]:
            chosen = self.first_error[(self.tasks == task) | (task == "all")]
            counts = np.bincount(chosen[chosen >= 0], minlength=self.height * self.width)
            out[str(task)] = counts.reshape(self.height, self.width)
        return out

    def plot(self, path: str | Path | None = None) -> Figure:
        """One 10x10 panel per task (and all): how many first errors fall on each cell."""
        plt = pyplot()

        maps = self.error_maps()
        acc = self.accuracy()
        cols = min(3, len(maps))
        rows = -(-len(maps) // cols)
        fig, axes = plt.subplots(
            rows, cols, figsize=(3.0 * cols, 2.9 * rows), dpi=110, squeeze=False
        )
        for ax, (task, counts) in zip(axes.flat, maps.items(), strict=False):
            image = ax.imshow(counts, cmap="magma_r", vmin=0, vmax=max(1, counts.max()))
            right = per_task(self.cells, self.tasks)[task]
            ax.set_title(
                f"{task}: {100 * acc['clean'][task]:.0f}% -> {100 * acc['intervened'][task]:.0f}% "
                f"({100 * right:.0f}% of cells)",
                fontsize=8,
            )
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(image, ax=ax, shrink=0.7, label="first errors")
        for ax in list(axes.flat)[len(maps) :]:
            ax.axis("off")
        fig.suptitle(
            "where generation first goes wrong with "
            f"{', '.join(self.hooks) or 'no hook'} intervened (panel: clean -> intervened "
            "accuracy, cells right)",
            fontsize=10,
        )
        fig.tight_layout()
        return finish(fig, path)


@torch.no_grad()
def generate_under(model, quizzes: QuizSet, fwd_hooks: Sequence = ()) -> InterventionResult:
    """Generate every predicted grid greedily, without and then with `fwd_hooks` active, in one
    batch (so hooks built per quiz, like resample ablation, line up with the rows)."""
    tokens = model.check_tokens(quizzes.tokens.to(model.device))
    cells = predicted_cells(tokens)
    clean = complete(model, tokens)[:, cells]
    with model.hooks(fwd_hooks) as hooked_model:
        hooked = complete(hooked_model, tokens)[:, cells]
    truth = tokens[:, cells]
    return InterventionResult(
        tasks=np.asarray(quizzes.tasks),
        clean_correct=(clean == truth).all(1).cpu().numpy(),
        correct=(hooked == truth).all(1).cpu().numpy(),
        clean_first_error=first_mismatch(clean, truth).cpu().numpy(),
        first_error=first_mismatch(hooked, truth).cpu().numpy(),
        first_departure=first_mismatch(hooked, clean).cpu().numpy(),
        hooks=list(dict.fromkeys(n if isinstance(n, str) else repr(n) for n, _ in fwd_hooks)),
        clean_cells=(clean == truth).double().mean(1).cpu().numpy(),
        cells=(hooked == truth).double().mean(1).cpu().numpy(),
        height=quizzes.batch.height,
        width=quizzes.batch.width,
    )
