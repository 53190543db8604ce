"""Linear probes: what world annotations can be read linearly from each hook site, per token.

Labels come from the world's ground truth (`QuizBatch.token_annotations`: objects, roles,
changes, noise) or are derived: 'colour' (the token itself, a sanity check) and 'grid' (which of
the quiz's four grids, in sequence order, the token belongs to). Marker positions are left out.

A probe is a multinomial logistic regression on standardised activations, trained full-batch
with L-BFGS and weight decay on 75% of the quizzes and scored on the others (split by quiz, per
task). Two references come with each accuracy: the majority class, and a control task (Hewitt &
Liang 2019) scored with the same probe: 'type' gives each token type (the colour read at that
quiz position) a random label drawn from the label distribution, so a probe that reaches it is
memorising types rather than reading the annotation; 'permute' shuffles labels across tokens.
Selectivity = accuracy - control accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from gridlens.analysis.core import QuizSet
from gridlens.errors import ConfigError, unknown_name
from gridlens.models.hooks import PATTERN_SITES, resolve_names
from gridlens.notebook import Tabular, result_html
from gridlens.plotting import finish, pyplot

if TYPE_CHECKING:
    from matplotlib.figure import Figure

WORLD_ANNOTATIONS = ("objects", "roles", "changes", "noise")
ANNOTATIONS = (*WORLD_ANNOTATIONS, "colour", "grid")
CONTROLS = ("type", "permute")
TARGETS = ("input", "next")
SELECTIVE = 0.02  # a probe under 2 points above its control (or the majority) is at chance


def default_sites(cfg) -> list[str]:
    """Token embedding, the residual stream entering block 0 (embedding + positions), and the
    residual stream after every block."""
    return [
        "hook_embed",
        "blocks.0.hook_resid_pre",
        *(f"blocks.{layer}.hook_resid_post" for layer in range(cfg.n_layers)),
    ]


def token_labels(quizzes: QuizSet, annotation: str) -> np.ndarray:
    """[n, L] label of every token (marker positions hold -1 or a meaningless value: mask them
    with `marker_mask`). 'objects' uses -1 for background cells, a class of its own."""
    if annotation not in ANNOTATIONS:
        raise unknown_name("probe annotation", annotation, ANNOTATIONS)
    if annotation == "colour":
        return quizzes.tokens.cpu().numpy().astype(np.int64)
    n, length = quizzes.tokens.shape
    if annotation == "grid":
        return np.broadcast_to(np.arange(length) // (length // 4), (n, length)).copy()
    return quizzes.batch.token_annotations(annotation)


def marker_mask(length: int) -> np.ndarray:
    """[L] True at the four grid markers (the first token of each quarter)."""
    return np.arange(length) % (length // 4) == 0


def probe_positions(length: int, target: str, shift_input: bool) -> tuple[np.ndarray, np.ndarray]:
    """(positions read, tokens labelled), markers excluded. target 'input': the token the
    position reads (token p - 1 with MyGPT's BOS shift); 'next': the token it predicts (p)."""
    if target not in TARGETS:
        raise unknown_name("probe target", target, TARGETS)
    positions = np.arange(length)
    tokens = positions - 1 if target == "input" and shift_input else positions
    keep = tokens >= 0
    keep[keep] &= ~marker_mask(length)[tokens[keep]]
    return positions[keep], tokens[keep]


def split_quizzes(tasks: np.ndarray, test_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Bool [n], True for held-out quizzes: a share of each task's quizzes (at least one when
    the task has two or more)."""
    test = np.zeros(len(tasks), dtype=bool)
    for task in dict.fromkeys(tasks.tolist()):
        rows = rng.permutation(np.flatnonzero(tasks == task))
        if len(rows) >= 2:
            test[rows[: max(1, round(test_fraction * len(rows)))]] = True
    if not test.any() or test.all():
        raise ConfigError("probes need at least two quizzes of some task to hold one out")
    return test


def control_labels(
    labels: np.ndarray,
    types: np.ndarray,
    train: np.ndarray,
    kind: str,
    rng: np.random.Generator,
) -> np.ndarray:
    """Control-task labels for the samples: per type a label drawn from the training labels'
    distribution ('type'), or the labels shuffled within train and within test ('permute')."""
    if kind not in CONTROLS:
        raise unknown_name("probe control", kind, CONTROLS)
    if kind == "permute":
        out = labels.copy()
        for part in (train, ~train):
            out[part] = rng.permutation(labels[part])
        return out
    unique, inverse = np.unique(types, return_inverse=True)
    drawn = rng.choice(labels[train], size=len(unique))
    return drawn[inverse]


def fit_probe(
    x: torch.Tensor, y: torch.Tensor, n_classes: int, weight_decay: float, max_iter: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression (weights [F, K], bias [K]) by full-batch L-BFGS from zero;
    deterministic, so no seed is needed."""
    w = torch.zeros(x.shape[1], n_classes, requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + weight_decay * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


@dataclass
class ProbeResult(Tabular):
    """Held-out accuracy of a linear probe per site, with the references to read it against."""

    annotation: str
    target: str
    control: str
    sites: list[str]
    accuracy: dict[str, float]
    control_accuracy: dict[str, float]
    task_accuracy: dict[str, dict[str, float]]  # site -> task -> held-out accuracy
    baseline: float  # majority class of the training labels, scored on the held-out tokens
    n_classes: int
    n_train: int
    n_test: int

    def selectivity(self) -> dict[str, float]:
        return {s: self.accuracy[s] - self.control_accuracy[s] for s in self.sites}

    def to_json(self) -> dict:
        return {
            "annotation": self.annotation,
            "target": self.target,
            "control": self.control,
            "sites": list(self.sites),
            "accuracy": dict(self.accuracy),
            "control_accuracy": dict(self.control_accuracy),
            "selectivity": self.selectivity(),
            "task_accuracy": {s: dict(v) for s, v in self.task_accuracy.items()},
            "baseline": self.baseline,
            "n_classes": self.n_classes,
            "n_train": self.n_train,
            "n_test": self.n_test,
        }

    def to_records(self) -> list[dict]:
        """One row per site: held-out accuracy, the control's, selectivity, majority class."""
        selectivity = self.selectivity()
        return [
            {"site": s, "accuracy": self.accuracy[s], "control_accuracy": self.control_accuracy[s],
             "selectivity": selectivity[s], "majority": self.baseline}
            for s in self.sites
        ]  # fmt: skip

    def _repr_html_(self) -> str:
        title = f"linear probes for '{self.annotation}' (control: {self.control})"
        return result_html(title, self.findings(), self.plot(), self.to_records())

    def findings(self) -> list[str]:
        """The most selective site, stated against its control; at chance (selectivity under
        SELECTIVE, or no better than the majority class) it is said to be no finding."""
        sel = self.selectivity()
        site = max(self.sites, key=lambda s: sel[s])
        acc, control = self.accuracy[site], self.control_accuracy[site]
        numbers = (
            f"{100 * acc:.1f}% held-out vs {100 * control:.1f}% on the '{self.control}' "
            f"control, selectivity {100 * sel[site]:.1f} points; majority class "
            f"{100 * self.baseline:.1f}%, {self.n_classes} classes"
        )
        if sel[site] < SELECTIVE or acc <= self.baseline + SELECTIVE:
            first = (
                f"No site reads '{self.annotation}' beyond chance: the most selective, {site}, "
                f"gets {numbers}."
            )
        else:
            first = f"A linear probe reads '{self.annotation}' at {site}: {numbers}."
        best = max(self.sites, key=lambda s: self.accuracy[s])
        return [
            first,
            f"Highest raw accuracy at {best}: {100 * self.accuracy[best]:.1f}% (control "
            f"{100 * self.control_accuracy[best]:.1f}%).",
        ]

    def plot(self, path: str | Path | None = None) -> Figure:
        """Accuracy per site, with the majority baseline and the control task."""
        plt = pyplot()

        xs = range(len(self.sites))
        fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(self.sites) + 2), 3.6), dpi=110)
        ax.plot(xs, [self.accuracy[s] for s in self.sites], "o-", label="probe")
        ax.plot(
            xs,
            [self.control_accuracy[s] for s in self.sites],
            "s--",
            color="tab:orange",
            label=f"control ({self.control})",
        )
        ax.axhline(self.baseline, color="gray", ls=":", label="majority class")
        ax.set_xticks(list(xs), [_short(s) for s in self.sites], rotation=30, fontsize=7)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("held-out accuracy")
        ax.set_title(f"linear probes for '{self.annotation}' ({self.target} token)", fontsize=10)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        return finish(fig, path)


def _short(site: str) -> str:
    return site.replace("blocks.", "L").replace(".hook_", " ").replace("hook_", "")


def _check_sites(model, sites: Sequence[str] | None) -> list[str]:
    if sites is None:
        sites = default_sites(model.cfg)
    chosen = resolve_names([sites] if isinstance(sites, str) else list(sites), model.hook_names)
    for site in chosen:
        if site.endswith(PATTERN_SITES) or site.endswith("attn.hook_result"):
            raise ConfigError(
                f"hook site {site!r} is not one vector per position; probe a per-position site "
                f"(e.g. blocks.0.hook_resid_post, blocks.0.attn.hook_z, blocks.0.mlp.hook_post)"
            )
    return chosen


@torch.no_grad()
def _features(model, tokens: torch.Tensor, sites: list[str], positions: np.ndarray, batch=64):
    """site -> [n * len(positions), F] float32 activations at `positions`, quiz-major."""
    out: dict[str, list[torch.Tensor]] = {s: [] for s in sites}
    index = torch.as_tensor(positions, device=model.device)
    for lo in range(0, len(tokens), batch):
        _, cache = model.run_with_cache(tokens[lo : lo + batch], names=sites)
        for s in sites:
            act = cache[s][:, index]
            out[s].append(act.reshape(-1, act[0, 0].numel()).float().cpu())
    return {s: torch.cat(v) for s, v in out.items()}


def train_probes(
    model,
    quizzes: QuizSet,
    annotation: str,
    sites: Sequence[str] | None = None,
    seed: int = 0,
    target: str = "input",
    control: str = "type",
    test_fraction: float = 0.25,
    weight_decay: float = 1e-4,
    max_iter: int = 100,
) -> ProbeResult:
    """Train a linear probe for `annotation` at each site (default: `default_sites`) and score
    it on held-out quizzes, with the majority baseline and the control task (module docstring).
    target 'input' labels the token each position reads, 'next' the token it predicts."""
    if annotation not in ANNOTATIONS:
        raise unknown_name("probe annotation", annotation, ANNOTATIONS)
    chosen = _check_sites(model, sites)
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    tokens = model.check_tokens(quizzes.tokens.to(model.device))
    n, length = tokens.shape
    positions, labelled = probe_positions(length, target, model.cfg.shift_input)
    labels = token_labels(quizzes, annotation)[:, labelled].reshape(-1)
    classes, y_all = np.unique(labels, return_inverse=True)
    quiz_of = np.repeat(np.arange(n), len(positions))
    test = split_quizzes(np.asarray(quizzes.tasks), test_fraction, rng)[quiz_of]
    train = ~test
    read = model.model_input(tokens).cpu().numpy()[:, positions].reshape(-1)
    types = read * length + np.tile(positions, n)
    y_control = control_labels(y_all, types, train, control, rng)
    majority = np.bincount(y_all[train], minlength=len(classes)).argmax()
    tasks = np.asarray(quizzes.tasks)[quiz_of][test]
    feats = _features(model, tokens, chosen, positions)
    accuracy, control_accuracy, task_accuracy = {}, {}, {}
    for site in chosen:
        x = feats[site]
        mean, std = x[train].mean(0), x[train].std(0).clamp_min(1e-6)
        x = (x - mean) / std
        for y_np, store in ((y_all, accuracy), (y_control, control_accuracy)):
            y = torch.as_tensor(y_np)
            w, b = fit_probe(x[train], y[train], len(classes), weight_decay, max_iter)
            right = ((x[test] @ w + b).argmax(1) == y[test]).numpy()
            store[site] = float(right.mean())
            if store is accuracy:
                task_accuracy[site] = {
                    **{str(t): float(right[tasks == t].mean()) for t in dict.fromkeys(tasks)},
                    "all": float(right.mean()),
                }
    return ProbeResult(
        annotation=annotation,
        target=target,
        control=control,
        sites=chosen,
        accuracy=accuracy,
        control_accuracy=control_accuracy,
        task_accuracy=task_accuracy,
        baseline=float((y_all[test] == majority).mean()),
        n_classes=len(classes),
        n_train=int(train.sum()),
        n_test=int(test.sum()),
    )
