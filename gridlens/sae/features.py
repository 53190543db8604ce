"""What an SAE's latents respond to on a quiz set: their activations on every recorded position
(stored sparsely, column by column), top examples drawn as grids with the firing cell outlined,
activation histograms, the logits each latent promotes along the direct path, and per-task
firing rates with the latent x task "expression matrix".

Positions: the activation at position p is computed from tokens < p and predicts token p (the
BOS shift), so "the cell at p" is the cell the model is about to write.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from gridlens.analysis.core import QuizSet
from gridlens.errors import ConfigError
from gridlens.notebook import Tabular, image_html, table_html
from gridlens.plotting import finish, pyplot
from gridlens.sae.activations import check_site, position_mask
from gridlens.world.tokens import COLOR_NAMES, TOKEN_TO_GRID

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from PIL.Image import Image

TOKEN_NAMES: tuple[str, ...] = COLOR_NAMES + tuple(TOKEN_TO_GRID[t] for t in range(11, 15))
"""Names of the 15 tokens: colours 0..10, then the markers A, f_A, B, f_B."""


def recorded_positions(positions: str | np.ndarray | torch.Tensor, length: int) -> np.ndarray:
    """Absolute positions [P] from a mask name (see activations.POSITION_MASKS) or a mask."""
    mask = position_mask(positions, length) if isinstance(positions, str) else positions
    mask = np.asarray(mask.cpu() if torch.is_tensor(mask) else mask)
    if mask.dtype != bool or mask.shape != (length,):
        raise ConfigError(f"positions must be a mask name or a bool mask [{length}]")
    return np.flatnonzero(mask)


@dataclass(frozen=True)
class Example:
    """One activation of one latent: quiz index in the set, absolute position, value."""

    quiz: int
    position: int
    value: float


@dataclass
class FeatureActivations:
    """Latent activations on `positions` of every quiz, stored by latent (CSC): the non-zero
    entries of latent j are `rows[offsets[j]:offsets[j + 1]]` (row = quiz * P + slot, P =
    len(positions)) with `values` alongside."""

    quizzes: QuizSet
    hook_name: str
    positions: np.ndarray  # [P] absolute positions recorded
    d_sae: int
    rows: np.ndarray  # [nnz] int64
    values: np.ndarray  # [nnz] float32
    offsets: np.ndarray  # [d_sae + 1] int64

    @classmethod
    def from_entries(
        cls,
        quizzes: QuizSet,
        hook_name: str,
        positions: np.ndarray,
        d_sae: int,
        rows: np.ndarray,
        latents: np.ndarray,
        values: np.ndarray,
    ) -> FeatureActivations:
        """Build from unordered (row, latent, value) triples of non-zero activations."""
        latents = np.asarray(latents, dtype=np.int64)
        if latents.size and (latents.min() < 0 or latents.max() >= d_sae):
            raise ConfigError(f"latent indices must lie in [0, {d_sae})")
        order = np.lexsort((np.asarray(rows), latents))
        offsets = np.zeros(d_sae + 1, dtype=np.int64)
        np.cumsum(np.bincount(latents, minlength=d_sae), out=offsets[1:])
        return cls(
            quizzes,
            hook_name,
            np.asarray(positions, dtype=np.int64),
            d_sae,
            np.asarray(rows, dtype=np.int64)[order],
            np.asarray(values, np.float32)[order],
            offsets,
        )

    @property
    def n_rows(self) -> int:
        return len(self.quizzes) * len(self.positions)

    def check_latent(self, latent: int) -> int:
        if not 0 <= int(latent) < self.d_sae:
            raise ConfigError(f"latent {latent} outside [0, {self.d_sae})")
        return int(latent)

    def column(self, latent: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, values) where `latent` is non-zero."""
        j = self.check_latent(latent)
        lo, hi = self.offsets[j], self.offsets[j + 1]
        return self.rows[lo:hi], self.values[lo:hi]

    def latent_of_entries(self) -> np.ndarray:
        """[nnz] the latent of each stored entry."""
        return np.repeat(np.arange(self.d_sae), np.diff(self.offsets))

    def row_task(self) -> np.ndarray:
        """[n_rows] task index (into `task_names`) of each row."""
        index = {t: i for i, t in enumerate(self.task_names)}
        per_quiz = np.array([index[t] for t in self.quizzes.tasks.tolist()], dtype=np.int64)
        return np.repeat(per_quiz, len(self.positions))

    @property
    def task_names(self) -> list[str]:
        return self.quizzes.task_names()

    def dense(self, latent: int) -> np.ndarray:
        """[n_quizzes, P] activations of one latent (zeros where it does not fire)."""
        rows, values = self.column(latent)
        out = np.zeros(self.n_rows, dtype=np.float32)
        out[rows] = values
        return out.reshape(len(self.quizzes), len(self.positions))

    def top_examples(self, latent: int, n: int = 8, distinct_quizzes: bool = True) -> list[Example]:
        """The `n` largest activations of `latent`, at most one per quiz when distinct_quizzes."""
        rows, values = self.column(latent)
        order = np.argsort(-values, kind="stable")
        out: list[Example] = []
        seen: set[int] = set()
        width = len(self.positions)
        for r in order:
            quiz, slot = divmod(int(rows[r]), width)
            if distinct_quizzes and quiz in seen:
                continue
            seen.add(quiz)
            out.append(Example(quiz, int(self.positions[slot]), float(values[r])))
            if len(out) == n:
                break
        return out

    def firing_counts(self) -> np.ndarray:
        """[d_sae, n_tasks] rows of each task where each latent is non-zero."""
        tasks = self.row_task()
        n_tasks = len(self.task_names)
        flat = self.latent_of_entries() * n_tasks + tasks[self.rows]
        return np.bincount(flat, minlength=self.d_sae * n_tasks).reshape(self.d_sae, n_tasks)

    def activation_sums(self) -> np.ndarray:
        """[d_sae, n_tasks] summed activation of each latent over each task's rows."""
        tasks = self.row_task()
        n_tasks = len(self.task_names)
        flat = self.latent_of_entries() * n_tasks + tasks[self.rows]
        sums = np.bincount(flat, weights=self.values, minlength=self.d_sae * n_tasks)
        return sums.reshape(self.d_sae, n_tasks)

    def rows_per_task(self) -> np.ndarray:
        """[n_tasks] number of recorded rows of each task."""
        return np.bincount(self.row_task(), minlength=len(self.task_names))

    def latent(self, latent: int) -> Latent:
        """One latent, for a notebook: its top examples drawn inline, histogram, rates."""
        return Latent(self, self.check_latent(latent))


@torch.no_grad()
def latent_activations(
    model, sae, quizzes: QuizSet, positions: str | np.ndarray = "grid", batch_size: int = 32
) -> FeatureActivations:
    """Run the model on the quizzes, encode the SAE's site on `positions` ("grid", "all",
    "no_markers" or a bool mask over the 404 positions) and keep the non-zero latents."""
    tokens = quizzes.tokens
    kept = recorded_positions(positions, tokens.shape[1])
    hook = sae.cfg.hook_name
    stop = check_site(model, hook)
    was_training = sae.training
    sae.eval()
    rows, latents, values = [], [], []
    width = len(kept)
    index = torch.as_tensor(kept, device=model.device)
    try:
        for lo in range(0, len(tokens), batch_size):
            chunk = tokens[lo : lo + batch_size].to(model.device)
            _, cache = model.run_with_cache(chunk, names=hook, stop_at_layer=stop)
            act = cache[hook][:, index]
            f = sae.encode(act.reshape(*act.shape[:2], -1).to(sae.W_enc.dtype)).float()
            q, s, j = torch.nonzero(f, as_tuple=True)
            rows.append(((q + lo) * width + s).cpu().numpy())
            latents.append(j.cpu().numpy())
            values.append(f[q, s, j].cpu().numpy())
    finally:
        sae.train(was_training)
    return FeatureActivations.from_entries(
        quizzes,
        hook,
        kept,
        sae.cfg.d_sae,
        np.concatenate(rows),
        np.concatenate(latents),
        np.concatenate(values),
    )


def _layer_of(hook_name: str) -> int | None:
    match = re.match(r"^blocks\.(\d+)\.", hook_name)
    return int(match.group(1)) if match else None


# ------------------------------------------------------------------------------ pictures


def example_highlight(acts: FeatureActivations, examples: list[Example]) -> np.ndarray:
    """[len(examples), L] bool: the firing position of each example."""
    length = acts.quizzes.tokens.shape[1]
    mask = np.zeros((len(examples), length), dtype=bool)
    for i, e in enumerate(examples):
        mask[i, e.position] = True
    return mask


def position_label(position: int, length: int = 404) -> str:
    """'slot 3 (r2, c7)' for a cell position; 'marker k' for a marker."""
    per_grid = length // 4
    slot, offset = divmod(position, per_grid)
    if offset == 0:
        return f"marker {slot}"
    side = round((per_grid - 1) ** 0.5)
    row, col = divmod(offset - 1, side)
    return f"grid {slot + 1} r{row} c{col}"


def examples_image(acts: FeatureActivations, latent: int, n: int = 6, cell: int = 10) -> Image:
    """The latent's top examples as a Pillow image (one quiz per row), the firing cell outlined
    in magenta, captioned with task, value and position."""
    from gridlens.world.render import render_image

    examples = acts.top_examples(latent, n)
    if not examples:
        raise ConfigError(f"latent {latent} never fires on this quiz set: no examples to render")
    batch = acts.quizzes.batch.subset([e.quiz for e in examples])
    length = batch.tokens.shape[1]
    captions = [
        f"{batch.task[i]} · {e.value:.2f} · {position_label(e.position, length)}"
        for i, e in enumerate(examples)
    ]
    highlight = example_highlight(acts, examples)
    return render_image(batch, highlight=highlight, captions=captions, cell=cell, columns=1)


def render_examples(
    acts: FeatureActivations, latent: int, path: str | Path, n: int = 6, cell: int = 10
) -> Path:
    """`examples_image` written as a PNG (atomically)."""
    from gridlens.io import atomic_write

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ConfigError(f"output {str(path)!r} must end in .png")
    image = examples_image(acts, latent, n, cell)
    return atomic_write(path, lambda handle: image.save(handle, format="PNG"))


def plot_histogram(
    acts: FeatureActivations, latent: int, path: str | Path | None = None, bins: int = 30
) -> Figure:
    """Histogram of the latent's non-zero activations, stacked by task."""
    plt = pyplot()

    rows, values = acts.column(latent)
    tasks = acts.row_task()[rows]
    fig, ax = plt.subplots(figsize=(5, 3))
    if len(values):
        edges = np.linspace(0, float(values.max()) * 1.0001 + 1e-9, bins + 1)
        groups = [values[tasks == t] for t in range(len(acts.task_names))]
        ax.hist(groups, bins=edges, stacked=True, label=acts.task_names)
        ax.legend(fontsize=6, ncol=2)
    rate = len(values) / max(acts.n_rows, 1)
    ax.set_title(f"latent {latent}: fires on {rate:.2%} of positions", fontsize=9)
    ax.set_xlabel("activation (non-zero only)")
    ax.set_ylabel("positions")
    fig.tight_layout()
    return finish(fig, path)


@dataclass
class Latent(Tabular):
    """One SAE latent on a quiz set. A notebook shows its top examples as grids, its histogram
    and its firing rate per task; `to_dataframe()` has the rates."""

    acts: FeatureActivations
    index: int

    def examples(self, n: int = 6, cell: int = 10) -> Image:
        return examples_image(self.acts, self.index, n, cell)

    def histogram(self, path: str | Path | None = None) -> Figure:
        return plot_histogram(self.acts, self.index, path)

    def to_records(self) -> list[dict]:
        """One row per task: the share of its recorded positions where the latent fires and
        its mean activation there."""
        fires = self.acts.firing_counts()[self.index]
        sums = self.acts.activation_sums()[self.index]
        rows = self.acts.rows_per_task()
        return [
            {
                "task": task,
                "firing_rate": float(fires[t] / max(rows[t], 1)),
                "mean_activation": float(sums[t] / fires[t]) if fires[t] else 0.0,
            }
            for t, task in enumerate(self.acts.task_names)
        ]

    def _repr_html_(self) -> str:
        rows, _ = self.acts.column(self.index)
        rate = len(rows) / max(self.acts.n_rows, 1)
        head = f"latent {self.index} at {self.acts.hook_name}: fires on {rate:.2%} of positions"
        pictures = [image_html(self.histogram(), "histogram")]
        if len(rows):
            pictures.insert(0, image_html(self.examples(), "top examples"))
        table = table_html(self.to_records())
        return f"<div><h4>{escape(head)}</h4>{''.join(pictures)}{table}</div>"


# ------------------------------------------------------------------------------ logits


def output_directions(model, sae) -> torch.Tensor:
    """[d_sae, d_model] what each decoder row adds to the residual stream: the row itself for
    residual-sized sites (hook_resid_*, hook_attn_out, hook_mlp_out), mapped through W_out for
    mlp.hook_post and through W_O for a flattened attn.hook_z."""
    hook = sae.cfg.hook_name
    w = sae.W_dec.detach().float()
    layer = _layer_of(hook)
    cfg = model.cfg
    if hook.endswith("mlp.hook_post") and layer is not None:
        return w @ model.blocks[layer].mlp.fc_out.weight.detach().float().t()
    if hook.endswith("attn.hook_z") and layer is not None:
        w_o = model.blocks[layer].attn.w_o.detach().float()
        return w @ w_o.reshape(-1, cfg.d_model)
    if w.shape[1] != cfg.d_model or not (
        hook.startswith("hook_embed")
        or hook.endswith(("hook_attn_out", "hook_mlp_out"))
        or "hook_resid_" in hook
    ):
        raise ConfigError(
            f"promoted logits need a site added to the residual stream (hook_resid_*, "
            f"hook_attn_out, hook_mlp_out, mlp.hook_post, attn.hook_z), not {hook!r}"
        )
    return w


@dataclass
class PromotedLogits:
    """Direct-path logit effect of each latent's decoder direction: W_dec[j] (mapped into the
    residual, see `output_directions`) times the unembedding, centred over the vocabulary. It
    skips the layers after the site (exact only for the last layer's outputs, since GridGPT
    has no final LayerNorm)."""

    hook_name: str
    effects: np.ndarray  # [d_sae, vocab] centred logit change per unit of activation

    def top(self, latent: int, k: int = 5) -> list[tuple[str, float]]:
        row = self.effects[latent]
        return [(TOKEN_NAMES[t], float(row[t])) for t in np.argsort(-row)[:k]]

    def bottom(self, latent: int, k: int = 5) -> list[tuple[str, float]]:
        row = self.effects[latent]
        return [(TOKEN_NAMES[t], float(row[t])) for t in np.argsort(row)[:k]]

    def to_json(self, latents: list[int] | None = None, k: int = 5) -> dict:
        latents = range(len(self.effects)) if latents is None else latents
        return {
            "hook_name": self.hook_name,
            "path": "direct (decoder row x unembedding, centred; later layers skipped)",
            "latents": {
                str(j): {"promoted": self.top(j, k), "suppressed": self.bottom(j, k)}
                for j in latents
            },
        }


@torch.no_grad()
def promoted_logits(model, sae) -> PromotedLogits:
    """The direct-path logits every latent promotes (see PromotedLogits)."""
    directions = output_directions(model, sae)
    effects = directions @ model.unembed.weight.detach().float().t()
    effects = effects - effects.mean(1, keepdim=True)
    return PromotedLogits(sae.cfg.hook_name, effects.cpu().numpy())


# ------------------------------------------------------------------------------ tasks


@dataclass
class ExpressionMatrix:
    """Per latent and task: firing rate, mean activation, and the expression `share` = the
    latent's mean activation on each task divided by the sum over tasks (each row of a latent
    that fires sums to 1; rows of latents that never fire are 0). `order`: the latents shown,
    grouped by preferred task (argmax of share), most task-specific first."""

    tasks: list[str]
    firing: np.ndarray  # [d_sae, n_tasks] share of the task's positions where it fires
    mean: np.ndarray  # [d_sae, n_tasks] mean activation over the task's positions
    share: np.ndarray  # [d_sae, n_tasks]
    order: np.ndarray  # [m] latents shown in the figure

    @property
    def preferred(self) -> np.ndarray:
        return self.share.argmax(1)

    @property
    def specificity(self) -> np.ndarray:
        """[d_sae] the largest share: 1 / n_tasks for a task-blind latent, 1 for one task only."""
        return self.share.max(1)

    def specific_latents(self, task: str, k: int = 5, min_firing: float = 0.01) -> list[int]:
        """Latents preferring `task`, most specific first, firing on >= min_firing of it."""
        t = self.tasks.index(task)
        ok = np.flatnonzero((self.preferred == t) & (self.firing[:, t] >= min_firing))
        return ok[np.argsort(-self.specificity[ok], kind="stable")][:k].tolist()

    def to_json(self) -> dict:
        alive = self.firing.sum(1) > 0
        per_task = {}
        for t, name in enumerate(self.tasks):
            per_task[name] = {
                "latents_preferring": int(((self.preferred == t) & alive).sum()),
                "most_specific": [
                    {
                        "latent": j,
                        "share": float(self.share[j, t]),
                        "firing": float(self.firing[j, t]),
                    }
                    for j in self.specific_latents(name, 5)
                ],
            }
        return {
            "tasks": self.tasks,
            "definition": "share[j, t] = mean activation of j on task t / sum over tasks",
            "alive_latents": int(alive.sum()),
            "mean_specificity": float(self.specificity[alive].mean()) if alive.any() else 0.0,
            "per_task": per_task,
            "shown": self.order.tolist(),
            "share": {str(j): self.share[j].round(4).tolist() for j in self.order},
            "firing": {str(j): self.firing[j].round(4).tolist() for j in self.order},
        }

    def plot(self, path: str | Path | None = None) -> Figure:
        """Heatmap latents (rows, grouped by preferred task) x tasks of the expression share."""
        plt = pyplot()

        m = self.share[self.order]
        fig, ax = plt.subplots(figsize=(1.2 + 0.6 * len(self.tasks), 2 + 0.02 * len(m)))
        image = ax.imshow(m, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks(range(len(self.tasks)), self.tasks, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel(f"{len(m)} latents, grouped by preferred task")
        ax.set_yticks([])
        fig.colorbar(image, ax=ax, label="share of mean activation")
        ax.set_title("feature x task expression", fontsize=10)
        fig.tight_layout()
        return finish(fig, path)

    def findings(self) -> list[str]:
        alive = self.firing.sum(1) > 0
        if not alive.any():
            return ["No latent fires on this quiz set."]
        out = [
            f"{int(alive.sum())} of {len(alive)} latents fire; mean specificity (largest task "
            f"share) {self.specificity[alive].mean():.2f} (1/{len(self.tasks)} = task-blind)."
        ]
        strong = [(name, self.specific_latents(name, 1)) for name in self.tasks]
        best = [(n, js[0]) for n, js in strong if js]
        if best:
            name, j = max(best, key=lambda item: self.specificity[item[1]])
            t = self.tasks.index(name)
            out.append(
                f"Most task-specific: latent {j} puts {self.share[j, t]:.0%} of its activation "
                f"on {name} (fires on {self.firing[j, t]:.1%} of its positions)."
            )
        return out


def expression_matrix(
    acts: FeatureActivations, max_latents: int = 200, min_firing: float = 0.005
) -> ExpressionMatrix:
    """The latent x task expression matrix; the figure shows up to `max_latents` latents firing
    on >= min_firing of some task's positions, the most task-specific of each task first."""
    counts = acts.firing_counts().astype(np.float64)
    sums = acts.activation_sums()
    per_task = np.maximum(acts.rows_per_task(), 1)[None, :]
    firing, mean = counts / per_task, sums / per_task
    total = mean.sum(1, keepdims=True)
    share = np.divide(mean, total, out=np.zeros_like(mean), where=total > 0)
    candidates = np.flatnonzero(firing.max(1) >= min_firing)
    specificity = share.max(1)
    candidates = candidates[np.argsort(-specificity[candidates], kind="stable")][:max_latents]
    preferred = share.argmax(1)
    order = candidates[np.lexsort((-specificity[candidates], preferred[candidates]))]
    names = acts.task_names
    return ExpressionMatrix(names, firing, mean, share, order)
