"""What every analysis shares: balanced per-task quiz sets, components and their hook sites, and
metrics scored on the predicted grid (the last grid of the quiz, the only one the model is asked
to produce), both teacher-forced and autoregressive.

Component names are short and stable, so tables, JSON and the CLI agree:
`L{l}.attn` (a whole attention layer's output), `L{l}.mlp` (an MLP layer's output),
`L{l}H{h}` (one head: its slice of `hook_z`), `L{l}N{n}` (one MLP neuron: `mlp.hook_post`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from gridlens.errors import ConfigError, GridlensError, unknown_name
from gridlens.models.generate import complete, last_grid_positions
from gridlens.world import QuizBatch, generate
from gridlens.world.tasks import resolve_tasks

COMPONENT_KINDS = ("attn", "mlp", "head", "neuron")
_PATTERN = re.compile(r"^L(\d+)(?:\.(attn|mlp)|H(\d+)|N(\d+))$")


class ComponentError(GridlensError):
    """A component name that does not exist in the model."""


@dataclass(frozen=True)
class Component:
    """One model component and where it lives: a hook site and an index along its last axes."""

    name: str
    kind: str  # "attn" | "mlp" | "head" | "neuron"
    layer: int
    index: int | None = None  # head or neuron index

    @property
    def hook_name(self) -> str:
        return {
            "attn": f"blocks.{self.layer}.hook_attn_out",
            "mlp": f"blocks.{self.layer}.hook_mlp_out",
            "head": f"blocks.{self.layer}.attn.hook_z",
            "neuron": f"blocks.{self.layer}.mlp.hook_post",
        }[self.kind]

    def select(self, activation: torch.Tensor) -> torch.Tensor:
        """This component's part of its hook site's activation ([batch, pos, ...])."""
        if self.kind == "head":
            return activation[:, :, self.index]
        if self.kind == "neuron":
            return activation[:, :, self.index]
        return activation

    def assign(self, activation: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """A copy of `activation` with this component's part replaced by `value`."""
        out = activation.clone()
        if self.kind in ("head", "neuron"):
            out[:, :, self.index] = value
        else:
            out[...] = value
        return out


def component_names(cfg, kinds: Sequence[str] = ("attn", "mlp", "head")) -> list[str]:
    """Every component of the given kinds, layer by layer."""
    for kind in kinds:
        if kind not in COMPONENT_KINDS:
            raise unknown_name("component kind", kind, COMPONENT_KINDS)
    names: list[str] = []
    for layer in range(cfg.n_layers):
        if "attn" in kinds:
            names.append(f"L{layer}.attn")
        if "head" in kinds:
            names.extend(f"L{layer}H{h}" for h in range(cfg.n_heads))
        if "mlp" in kinds:
            names.append(f"L{layer}.mlp")
        if "neuron" in kinds:
            names.extend(f"L{layer}N{n}" for n in range(cfg.d_mlp))
    return names


def parse_component(name: str, cfg) -> Component:
    """`L2H1` -> Component('L2H1', 'head', 2, 1); unknown names suggest the closest."""
    match = _PATTERN.match(name.strip())
    if match is None:
        raise unknown_name("component", name, component_names(cfg))
    layer = int(match.group(1))
    if layer >= cfg.n_layers:
        raise ComponentError(f"component {name!r}: layer {layer} >= n_layers {cfg.n_layers}")
    if match.group(2):
        return Component(name, match.group(2), layer)
    if match.group(3) is not None:
        head = int(match.group(3))
        if head >= cfg.n_heads:
            raise ComponentError(f"component {name!r}: head {head} >= n_heads {cfg.n_heads}")
        return Component(name, "head", layer, head)
    neuron = int(match.group(4))
    if neuron >= cfg.d_mlp:
        raise ComponentError(f"component {name!r}: neuron {neuron} >= d_mlp {cfg.d_mlp}")
    return Component(name, "neuron", layer, neuron)


@dataclass
class QuizSet:
    """Quizzes balanced over tasks, with the world's annotations (`batch`) kept alongside."""

    batch: QuizBatch

    def _repr_html_(self) -> str:
        return self.batch._repr_html_()

    @property
    def tokens(self) -> torch.Tensor:
        return self.batch.tokens

    @property
    def tasks(self) -> np.ndarray:
        return self.batch.task

    def __len__(self) -> int:
        return len(self.batch)

    def task_names(self) -> list[str]:
        """Tasks present, in first-appearance order."""
        return list(dict.fromkeys(self.batch.task.tolist()))

    def subset(self, index) -> QuizSet:
        return QuizSet(self.batch.subset(index))


def quiz_set(
    tasks: str | Sequence[str] | None = "default",
    n_per_task: int = 32,
    seed: int = 0,
    structure: str | Sequence[str] | None = None,
    noise: float = 0.0,
) -> QuizSet:
    """`n_per_task` quizzes of each task (grouped by task), deterministic in `seed`."""
    names = resolve_tasks(tasks)
    if n_per_task < 1:
        raise ConfigError(f"n_per_task must be >= 1, got {n_per_task}")
    n = n_per_task * len(names)
    total = 2 * n + 16
    while True:
        batch = generate(names, total, seed=seed, structure=structure, noise=noise)
        rows = [np.flatnonzero(batch.task == t)[:n_per_task] for t in names]
        if all(len(r) == n_per_task for r in rows):
            return QuizSet(batch.subset(np.concatenate(rows)))
        total *= 2


def predicted_cells(tokens: torch.Tensor) -> slice:
    """Positions of the predicted grid's cells (the last grid)."""
    return last_grid_positions(tokens.shape[1])


def per_task(values: torch.Tensor | np.ndarray, tasks: np.ndarray) -> dict[str, float]:
    """Mean of a per-quiz value for each task, plus 'all'."""
    values = np.asarray(values.detach().cpu() if torch.is_tensor(values) else values, float)
    if len(values) != len(tasks):
        raise ConfigError(f"{len(values)} values for {len(tasks)} quizzes")
    out = {str(t): float(values[tasks == t].mean()) for t in dict.fromkeys(tasks.tolist())}
    out["all"] = float(values.mean())
    return out


def grid_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """[n] mean cross-entropy over the predicted grid's cells (logits at p predict token p)."""
    cells = predicted_cells(tokens)
    return F.cross_entropy(
        logits[:, cells].float().transpose(1, 2), tokens[:, cells], reduction="none"
    ).mean(1)


@dataclass
class GridMetrics:
    """Per-quiz metrics on the predicted grid. `greedy_correct` is None unless asked for."""

    loss: torch.Tensor  # [n] teacher-forced mean CE over the grid's cells
    cell_accuracy: torch.Tensor  # [n] teacher-forced share of cells whose argmax is right
    greedy_correct: torch.Tensor | None = None  # [n] bool, the whole grid generated right
    first_error: torch.Tensor | None = None  # [n] first wrong cell in generation order, -1 none

    def summary(self, tasks: np.ndarray) -> dict[str, dict[str, float]]:
        out = {
            "loss": per_task(self.loss, tasks),
            "cell_accuracy": per_task(self.cell_accuracy, tasks),
        }
        if self.greedy_correct is not None:
            out["greedy_accuracy"] = per_task(self.greedy_correct.float(), tasks)
        return out


@torch.no_grad()
def grid_metrics(
    model,
    tokens: torch.Tensor,
    fwd_hooks: Sequence = (),
    greedy: bool = False,
    batch_size: int = 128,
) -> GridMetrics:
    """Metrics of `model` on the predicted grid with `fwd_hooks` applied throughout, including
    during autoregressive generation when `greedy` (the hooks then see one position at a time
    through the KV cache, so they must index positions relatively or not at all)."""
    tokens = model.check_tokens(tokens)
    cells = predicted_cells(tokens)
    losses, accs, oks, firsts = [], [], [], []
    with model.hooks(fwd_hooks):
        for lo in range(0, len(tokens), batch_size):
            chunk = tokens[lo : lo + batch_size].to(model.device)
            logits = model(chunk)
            losses.append(grid_loss(logits, chunk).cpu())
            accs.append((logits[:, cells].argmax(-1) == chunk[:, cells]).float().mean(1).cpu())
            if greedy:
                out = complete(model, chunk)
                wrong = out[:, cells] != chunk[:, cells]
                oks.append(~wrong.any(1).cpu())
                first = torch.where(wrong.any(1), wrong.float().argmax(1), -1)
                firsts.append(first.cpu())
    return GridMetrics(
        torch.cat(losses),
        torch.cat(accs),
        torch.cat(oks) if greedy else None,
        torch.cat(firsts) if greedy else None,
    )
