"""Claims 4 and 5 of the published investigation: one MLP layer matters for one task, and the
first cell where the ablated model departs from the truth decides the rest of its answer.

The seed zero-ablated layer 8's MLP of a 12-layer model and saw `contact` fail. Here the layer and
the task are found: the (MLP layer, task) pair whose zero ablation raises that task's grid loss
most relative to the next-most-hurt task. `MlpStudy` then holds fresh quizzes of that task with
their clean and ablated greedy answers, which claims 5 to 7 share.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gridlens.analysis.core import QuizSet, predicted_cells
from gridlens.models.generate import complete
from gridlens.report.claims import FOLLOWS, SPECIFIC, Claim, grade, not_applicable

MLP_TEXT = (
    "Ablating one MLP layer hurts one task far more than the others (the write-up: layer 8 and "
    f"contact; here: >= {SPECIFIC[0]:g}x the loss increase of the next-most-hurt task), and the "
    "world's checkers say which rule the ablated model's wrong answers follow instead."
)
CELL_TEXT = (
    "For that task, the first cell where the ablated model departs from the truth decides the "
    "rest: the clean model, forced to the ablated model's choice there, continues as the "
    "ablated model does."
)


def mlp_task_matrix(zero_layers) -> tuple[list[str], list[str], np.ndarray]:
    """(MLP names, tasks, [layers, tasks] grid-loss increase under zero ablation)."""
    mlps = [c for c in zero_layers.components if c.endswith(".mlp")]
    tasks = zero_layers.task_names()[:-1]
    delta = zero_layers.effect("loss_delta")
    return mlps, tasks, np.array([[delta[m][t] for t in tasks] for m in mlps])


def most_specific(matrix: np.ndarray, floor: float = 0.25) -> tuple[int, int, float, int]:
    """(layer row, task column, ratio to the next-most-hurt task, that task's column) of the
    most task-specific pair among those hurt at least `floor` x the largest increase."""
    if matrix.shape[1] == 1:  # one task: the layer that hurts it most, no ratio
        return int(matrix[:, 0].argmax()), 0, float("nan"), 0
    best = (0, 0, -np.inf, 0)
    top = matrix.max()
    for i, row in enumerate(matrix):
        for j in np.flatnonzero(row >= floor * top):
            others = np.delete(np.arange(len(row)), j)
            nxt = int(others[np.argmax(row[others])])
            ratio = float(row[j] / max(row[nxt], 1e-9))
            if ratio > best[2]:
                best = (i, int(j), ratio, nxt)
    return best


@dataclass
class MlpStudy:
    """Quizzes of one task with the chosen MLP layer zero-ablated: greedy answers, clean and
    ablated, and the first cell (0..cells-1, -1 if none) where the ablated answer is wrong."""

    layer: int
    task: str
    quizzes: QuizSet
    clean: torch.Tensor  # [n, L] the clean model's greedy completion
    ablated: torch.Tensor  # [n, L] the ablated model's
    first_wrong: torch.Tensor  # [n]

    @property
    def wrong(self) -> torch.Tensor:
        """[n] bool: the ablated answer is wrong."""
        return self.first_wrong >= 0

    @property
    def broken(self) -> torch.Tensor:
        """[n] bool: the clean answer is right and the ablated one wrong."""
        return self.wrong & torch.from_numpy(_right(self.clean, self.quizzes.tokens))

    @property
    def site(self) -> str:
        return f"blocks.{self.layer}.hook_mlp_out"


MAX_COLOUR = 10  # tokens above are grid markers
MIN_INCREASE = 0.01  # nats of grid loss: an MLP whose ablation adds less does not matter


def zero_hook(x, hook):
    return torch.zeros_like(x)


@torch.no_grad()
def study(model, layer: int, quizzes: QuizSet) -> MlpStudy:
    """Generate the quizzes' answers greedily, clean and with MLP `layer` zeroed (the quizzes
    are of one task, the first one's)."""
    tokens = quizzes.tokens.to(model.device)
    clean = complete(model, tokens).cpu()
    with model.hooks([(f"blocks.{layer}.hook_mlp_out", zero_hook)]):
        ablated = complete(model, tokens).cpu()
    cells = predicted_cells(tokens)
    differ = ablated[:, cells] != quizzes.tokens[:, cells]
    first = torch.where(differ.any(1), differ.float().argmax(1), -1)
    return MlpStudy(layer, str(quizzes.tasks[0]), quizzes, clean, ablated, first)


def follows_rules(outs: torch.Tensor, tasks: list[str]) -> dict[str, np.ndarray]:
    """task -> [n] bool: does each answer follow the task's rule (the pair B -> answer, by the
    world's checker)? An answer with a marker token in its grid follows none."""
    from gridlens.sae.steering import rule_validity

    formed = (outs[:, predicted_cells(outs)] <= MAX_COLOUR).all(1).numpy()
    out = {t: np.zeros(len(outs), dtype=bool) for t in tasks}
    if formed.any():
        for t, ok in rule_validity(outs[formed], tasks).items():
            out[t][formed] = ok
    return out


def wrong_rules(found: MlpStudy) -> dict[str, float]:
    """Share of the ablated model's wrong answers that each task's checker accepts (as the pair
    B -> answer), and the share no checker accepts."""
    from gridlens.world import TASKS

    outs = found.ablated[found.wrong]
    if len(outs) == 0:
        return {}
    valid = follows_rules(outs, list(TASKS))
    shares = {t: float(v.mean()) for t, v in valid.items() if v.any()}
    shares["none"] = float((~np.any(list(valid.values()), axis=0)).mean())
    return shares


def task_specific_mlp(zero_layers, found: MlpStudy | None, ratio: float, nxt: str) -> Claim:
    cid = "task_specific_mlp"
    mlps, tasks, matrix = mlp_task_matrix(zero_layers)
    if len(tasks) < 2:
        return not_applicable(cid, MLP_TEXT, "one task selected: nothing to compare")
    evidence = {
        "matrix_loss_increase": {
            m: dict(zip(tasks, map(float, r), strict=True))
            for m, r in zip(mlps, matrix, strict=True)
        },
        "layer": f"L{found.layer}.mlp",
        "task": found.task,
        "ratio_to_next_task": ratio,
        "next_task": nxt,
        "n_quizzes": len(found.quizzes),
        "greedy_clean": float(_right(found.clean, found.quizzes.tokens).mean()),
        "greedy_ablated": float(_right(found.ablated, found.quizzes.tokens).mean()),
        "broken_quizzes": int(found.broken.sum()),
        "wrong_answers_follow": wrong_rules(found),
    }
    verdict = grade(ratio, *SPECIFIC)
    if verdict == "reproduced" and not found.broken.any():
        verdict = "partly"  # specific, but it turns no right answer wrong
    if matrix.max() < MIN_INCREASE:
        verdict = "not reproduced"  # no MLP matters
    reason = (
        f"zero ablation per layer; reproduced also needs a right answer it turns wrong, any "
        f"verdict but 'not reproduced' a loss increase of {MIN_INCREASE:g} nats"
    )
    return Claim(cid, MLP_TEXT, verdict, evidence, reason)


def _right(out: torch.Tensor, tokens: torch.Tensor) -> np.ndarray:
    cells = predicted_cells(tokens)
    return (out[:, cells] == tokens[:, cells]).all(1).numpy()


@torch.no_grad()
def force_first_cell(model, found: MlpStudy) -> torch.Tensor:
    """[m, L] for the m broken quizzes: the truth up to the first wrong cell, the ablated model's
    choice there, then the clean model's greedy continuation."""
    rows = found.broken
    truth = found.quizzes.tokens[rows].clone()
    pos = predicted_cells(truth).start + found.first_wrong[rows]
    index = torch.arange(len(truth))
    truth[index, pos] = found.ablated[rows][index, pos]
    after = torch.arange(truth.shape[1])[None] > pos[:, None]
    return model.generate(truth.to(model.device), after.to(model.device)).cpu()


def transform_cell_decides(model, found: MlpStudy) -> Claim:
    cid = "transform_cell_decides"
    m = int(found.broken.sum())
    if m == 0:
        reason = f"no {found.task} quiz of {len(found.quizzes)} is right clean and wrong ablated"
        return not_applicable(cid, CELL_TEXT, reason)
    forced = force_first_cell(model, found)
    rows = found.broken
    pos = predicted_cells(forced).start + found.first_wrong[rows]
    rest = torch.arange(forced.shape[1])[None] > pos[:, None]
    ablated, truth = found.ablated[rows], found.quizzes.tokens[rows]

    def same(a, b):  # [m] whole rest equal, and the share of rest cells equal
        eq = (a == b) | ~rest
        return eq.all(1).float(), ((a == b) & rest).sum(1) / rest.sum(1).clamp(min=1)

    follows, follows_cells = same(forced, ablated)
    recovers, _ = same(forced, truth)
    _, baseline = same(truth, ablated)
    evidence = {
        "task": found.task,
        "broken_quizzes": m,
        "follows_ablated": float(follows.mean()),
        "back_to_truth": float(recovers.mean()),
        "rest_cells_as_ablated": float(follows_cells.mean()),
        "rest_cells_truth_as_ablated": float(baseline.mean()),
        "first_wrong_cell_mean": float(found.first_wrong[rows].float().mean()),
    }
    return Claim(cid, CELL_TEXT, grade(evidence["follows_ablated"], *FOLLOWS), evidence)
