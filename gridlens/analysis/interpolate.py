"""Interpolated patching: run the CORRUPTED prompt with one component's activation set to
(1 - alpha) * corrupted + alpha * clean, for a range of coefficients alpha, and record the
restored share of the clean answer's log-prob (activation patching's metric and normalisation:
alpha = 0 scores 0, alpha = 1 is activation patching's score).

Activation patching gives one number per component; the response curve says how it gets
there. A component whose effect grows linearly with alpha feeds a linear readout; one that does
nothing until alpha ~ 0.7 and then restores everything feeds a threshold (a later nonlinearity
or a competing signal that must be outvoted); coefficients beyond [0, 1] extrapolate the
clean-minus-corrupted difference like a steering vector. Per component and task the result
keeps the curve, its midpoint (the alpha at which it first reaches half of its alpha = 1
value: 0.5 for a linear response, larger for a threshold) and its nonlinearity (the largest gap
to the straight line alpha * score(1), as a share of |score(1)|).

The sweep is patching.py's: the residual stream where the component's output enters is linear
in the patched activation, so every patched copy is that stream plus alpha times the component's
(rank-one for heads and neurons) delta, and only the rest of the network runs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gridlens.analysis.pairs import PairSet
from gridlens.analysis.patching import (
    _sweep,
    check_pairs,
    expand_components,
    normalised_scores,
    parse_site,
    per_task_mean,
    task_counts,
)
from gridlens.errors import ConfigError
from gridlens.io import atomic_write
from gridlens.plotting import finish, pyplot

__all__ = ["DEFAULT_ALPHAS", "InterpolationResult", "interpolated_patching", "parse_alphas"]

DEFAULT_ALPHAS = tuple(np.round(np.linspace(0.0, 1.0, 11), 6).tolist())
FORMAT = "gridlens-interpolated-patching"


def parse_alphas(text: str) -> tuple[float, ...]:
    """Coefficients from "0,0.25,0.5,1" or "START:STOP:COUNT" (evenly spaced, both ends)."""
    try:
        if ":" in text:
            start, stop, count = text.split(":")
            values = np.linspace(float(start), float(stop), int(count)).tolist()
        else:
            values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(
            f"alphas {text!r}: expected comma-separated numbers or START:STOP:COUNT"
        ) from None
    return check_alphas(values)


def check_alphas(alphas: Sequence[float]) -> tuple[float, ...]:
    """Increasing, finite, and containing 0 and 1 (the curve's two anchors)."""
    a = np.asarray(list(alphas), dtype=float)
    if a.ndim != 1 or not np.isfinite(a).all() or (np.diff(a) <= 0).any():
        raise ConfigError(f"alphas must be finite and strictly increasing, got {list(alphas)}")
    if not (np.isclose(a, 0.0).any() and np.isclose(a, 1.0).any()):
        raise ConfigError(f"alphas must include 0 and 1 (the curve's anchors), got {a.tolist()}")
    return tuple(float(0.0 if np.isclose(v, 0) else 1.0 if np.isclose(v, 1) else v) for v in a)


@dataclass
class InterpolationResult:
    """Per task ("all" pools every pair), the response curve of every component: scores[task]
    is [n_components, n_alphas], the restored share at each coefficient."""

    pair_kind: str
    components: list[str]
    alphas: np.ndarray
    scores: dict[str, np.ndarray]
    clean_logprob: dict[str, float]
    corrupted_logprob: dict[str, float]
    n_pairs: dict[str, int]
    seconds: float
    skipped: dict[str, str] = field(default_factory=dict)

    def curve(self, name: str, task: str = "all") -> np.ndarray:
        return self.scores[task][self.components.index(name)]

    def at(self, alpha: float, task: str = "all") -> np.ndarray:
        """[n_components] scores at one of the coefficients."""
        hit = np.flatnonzero(np.isclose(self.alphas, alpha))
        if not len(hit):
            raise ConfigError(f"alpha {alpha} not among {self.alphas.tolist()}")
        return self.scores[task][:, hit[0]]

    def effect(self, task: str = "all") -> np.ndarray:
        """[n_components] the largest |score| over alpha in [0, 1]."""
        inside = (self.alphas >= 0) & (self.alphas <= 1)
        return np.nan_to_num(np.abs(self.scores[task][:, inside])).max(1)

    def top(self, n: int = 8, task: str = "all") -> list[str]:
        """The n components of largest effect."""
        order = np.argsort(-self.effect(task), kind="stable")[:n]
        return [self.components[i] for i in order]

    def midpoints(self, task: str = "all") -> np.ndarray:
        """[n_components] the smallest alpha in [0, 1] where the curve reaches half of its
        alpha = 1 value (linear interpolation between coefficients); nan if score(1) ~ 0."""
        inside = (self.alphas >= 0) & (self.alphas <= 1)
        a, s = self.alphas[inside], self.scores[task][:, inside]
        out = np.full(len(s), np.nan)
        for i, row in enumerate(s):
            end = row[-1]
            if not np.isfinite(end) or abs(end) < 1e-3:
                continue
            reached = np.flatnonzero(row * np.sign(end) >= abs(end) / 2)[0]
            if reached == 0:
                out[i] = a[0]
                continue
            lo, hi = row[reached - 1], row[reached]
            frac = (end / 2 - lo) / (hi - lo)
            out[i] = a[reached - 1] + frac * (a[reached] - a[reached - 1])
        return out

    def nonlinearity(self, task: str = "all") -> np.ndarray:
        """[n_components] max over alpha in [0, 1] of |score(alpha) - alpha * score(1)| /
        |score(1)|: 0 for a straight line; nan if score(1) ~ 0."""
        inside = (self.alphas >= 0) & (self.alphas <= 1)
        a, s = self.alphas[inside], self.scores[task][:, inside]
        end = s[:, -1:]
        gap = np.abs(s - a[None] * end).max(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(np.abs(end[:, 0]) >= 1e-3, gap / np.abs(end[:, 0]), np.nan)

    def to_json(self) -> dict:
        def listed(values):
            return [[None if not np.isfinite(v) else float(v) for v in row] for row in values]

        def flat(values):
            return [None if not np.isfinite(v) else float(v) for v in values]

        return {
            "format": FORMAT,
            "version": 1,
            "pair_kind": self.pair_kind,
            "components": list(self.components),
            "alphas": self.alphas.tolist(),
            "scores": {t: listed(v) for t, v in self.scores.items()},
            "midpoint": {t: flat(self.midpoints(t)) for t in self.scores},
            "nonlinearity": {t: flat(self.nonlinearity(t)) for t in self.scores},
            "clean_logprob": dict(self.clean_logprob),
            "corrupted_logprob": dict(self.corrupted_logprob),
            "n_pairs": dict(self.n_pairs),
            "seconds": self.seconds,
            "skipped": dict(self.skipped),
            "top": self.top(10),
        }

    def save_json(self, path) -> Path:
        data = json.dumps(self.to_json(), indent=1).encode()
        return atomic_write(path, lambda handle: handle.write(data))

    def findings(self) -> list[str]:
        top = self.top(3)
        mid, nonlin = self.midpoints(), self.nonlinearity()
        at_one = self.at(1.0)
        index = {c: i for i, c in enumerate(self.components)}
        parts = [
            f"{c} {at_one[index[c]]:+.2f} (midpoint alpha {mid[index[c]]:.2f}, "
            f"nonlinearity {nonlin[index[c]]:.2f})"
            for c in top
        ]
        out = [
            f"Interpolated patching on {self.n_pairs['all']} {self.pair_kind} pairs at "
            f"{len(self.alphas)} coefficients from {self.alphas[0]:g} to {self.alphas[-1]:g}.",
            f"Largest effects (score at alpha = 1): {', '.join(parts)}.",
        ]
        strong = self.effect() >= 0.1
        if strong.any():
            late = int((mid[strong] > 0.65).sum())
            early = int((mid[strong] < 0.35).sum())
            out.append(
                f"Of {int(strong.sum())} components restoring >= 0.1: {late} threshold-like "
                f"(midpoint > 0.65), {early} saturating (midpoint < 0.35), the rest near linear."
            )
        return out

    def plot(self, path=None, task: str = "all", top: int = 8):
        """Response curves of the `top` components of largest effect, one line each."""
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name in self.top(top, task):
            ax.plot(self.alphas, self.curve(name, task), marker=".", label=name)
        for x in (0.0, 1.0):
            ax.axvline(x, color="0.6", lw=0.6, ls="--")
            ax.axhline(x, color="0.6", lw=0.6, ls="--")
        ax.plot([0, 1], [0, 1], color="0.3", lw=0.8, ls=":", label="linear, full restoration")
        ax.set_xlabel("alpha (0 = corrupted activation, 1 = clean)")
        ax.set_ylabel("restored fraction of the clean log-prob")
        ax.set_title(f"interpolated patching ({self.pair_kind} pairs), task {task}", fontsize=9)
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        return finish(fig, path)


def interpolated_patching(
    model,
    pairs: PairSet,
    components: str | Sequence[str] = "heads",
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    resid_block: str = "row",
    batch_size: int = 256,
    chunk: int = 16,
    progress: bool = False,
) -> InterpolationResult:
    """Each component alone set to (1 - alpha) corrupted + alpha clean in the corrupted run,
    for every alpha: the restored share of the clean answer's log-prob, per task.

    Components as in activation patching ("layers", "heads", "neurons", "resid" or names);
    batch_size: sequences per forward (alphas x components x quizzes); chunk: quizzes whose
    caches are held at once.
    """
    from tqdm.auto import tqdm

    if batch_size < 1 or chunk < 1:
        raise ConfigError(f"batch_size and chunk must be >= 1, got {batch_size}, {chunk}")
    alphas = check_alphas(alphas)
    clean, corrupted = check_pairs(model, pairs)
    names = expand_components(model.cfg, components, resid_block)
    sites = [parse_site(n, model.cfg) for n in names]
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    total = len(sites) * -(-len(clean) // chunk)
    try:
        with tqdm(
            total=total, desc="interpolate", unit="site", disable=not progress, leave=False
        ) as bar:
            patched, m_c, m_x = _sweep(
                model, sites, clean, corrupted, batch_size, chunk, alphas, bar
            )
    finally:
        model.train(was_training)
    tasks = pairs.tasks
    per_alpha = [normalised_scores(p, m_c, m_x, tasks) for p in patched]
    return InterpolationResult(
        pair_kind=pairs.kind,
        components=names,
        alphas=np.asarray(alphas),
        scores={t: np.stack([s[t] for s in per_alpha], 1) for t in per_alpha[0]},
        clean_logprob=per_task_mean(m_c, tasks),
        corrupted_logprob=per_task_mean(m_x, tasks),
        n_pairs=task_counts(tasks),
        seconds=time.perf_counter() - t0,
        skipped=dict(pairs.skipped),
    )
