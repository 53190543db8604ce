"""Do models of one population learn the same units? Activation correlations on shared inputs.

For two models A and B run on the same quizzes, the Pearson correlation of every unit of A with
every unit of B over (quiz, position) rows; a unit's *max-match* is its best correlation with
any unit of B, and a Hungarian one-to-one matching pairs units so no unit of B is used twice.
The baseline is the same measurement against an untrained model of B's configuration (a new
random seed): how much correlation chance and shared inputs give by themselves. Units can be
MLP neurons (`blocks.L.mlp.hook_post`), any hook site's dimensions, or SAE latents.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from gridlens.errors import ConfigError
from gridlens.models.generate import last_grid_positions
from gridlens.plotting import finish, pyplot

if TYPE_CHECKING:
    from matplotlib.figure import Figure

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


@torch.no_grad()
def site_activations(
    model, tokens: torch.Tensor, site: str, positions: str = "grid", batch_size: int = 64
) -> torch.Tensor:
    """[rows, d] activations at `site` over the quizzes' predicted grid ("grid") or every
    position ("all"), rows ordered quiz by quiz."""
    if positions not in ("grid", "all"):
        raise ConfigError(f"positions must be 'grid' or 'all', got {positions!r}")
    tokens = model.check_tokens(tokens)
    span = last_grid_positions(tokens.shape[1]) if positions == "grid" else slice(None)
    rows = []
    for lo in range(0, len(tokens), batch_size):
        chunk = tokens[lo : lo + batch_size].to(model.device)
        _, cache = model.run_with_cache(chunk, names_filter=site)
        act = cache[site][:, span].float()
        rows.append(act.reshape(-1, act.shape[-1]).cpu())
    return torch.cat(rows)


def correlations(
    a: torch.Tensor, b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pearson correlation [n_a, n_b] of the columns of a [rows, n_a] and b [rows, n_b], and
    which columns are alive (not constant); dead columns correlate 0 with everything."""
    if a.shape[0] != b.shape[0]:
        raise ConfigError(f"activations must share their rows, got {a.shape[0]} and {b.shape[0]}")
    a, b = a.double(), b.double()
    a, b = a - a.mean(0), b - b.mean(0)
    na, nb = a.norm(dim=0), b.norm(dim=0)
    alive_a, alive_b = na > 1e-9, nb > 1e-9
    corr = (a.T @ b) / (na[:, None] * nb[None, :]).clamp_min(1e-12)
    corr[~alive_a] = 0
    corr[:, ~alive_b] = 0
    return corr.float(), alive_a, alive_b


@dataclass
class Matching:
    """Max-match and one-to-one matching of A's units to B's."""

    max_match: np.ndarray  # [n_a] best |correlation| of each alive unit of A
    matched: np.ndarray  # [min(n_a, n_b)] correlations of the Hungarian pairs, sorted down
    pairs: list[tuple[int, int]]

    @classmethod
    def of(cls, corr: torch.Tensor, alive: torch.Tensor) -> Matching:
        c = corr.numpy()
        best = np.abs(c).max(axis=1)[alive.numpy()] if c.size else np.zeros(0)
        rows, cols = linear_sum_assignment(-c)  # signed: a matched pair should co-activate
        order = np.argsort(-c[rows, cols])
        return cls(
            best,
            c[rows, cols][order],
            list(zip(rows[order].tolist(), cols[order].tolist(), strict=True)),
        )

    def shared(self, threshold: float) -> float:
        """Fraction of A's alive units with a partner in B correlated above `threshold`."""
        return float((self.max_match >= threshold).mean()) if len(self.max_match) else 0.0


@dataclass
class UniversalityResult:
    """A vs B and A vs an untrained baseline, at one site."""

    site: str
    units: str  # "neurons" / "dimensions" / "SAE latents"
    trained: Matching
    baseline: Matching
    n_alive: tuple[int, int]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        def block(m: Matching) -> dict[str, Any]:
            return {
                "mean_max_match": float(m.max_match.mean()) if len(m.max_match) else None,
                "median_max_match": float(np.median(m.max_match)) if len(m.max_match) else None,
                "mean_hungarian": float(m.matched.mean()) if len(m.matched) else None,
                "shared": {str(t): m.shared(t) for t in THRESHOLDS},
                "top_pairs": [
                    [a, b, float(c)] for (a, b), c in zip(m.pairs[:10], m.matched[:10], strict=True)
                ],
            }

        return {
            "site": self.site,
            "units": self.units,
            "n_alive": list(self.n_alive),
            "trained": block(self.trained),
            "baseline_untrained": block(self.baseline),
            **self.meta,
        }

    def findings(self) -> list[str]:
        t, b = self.trained, self.baseline
        return [
            f"{self.site}: {100 * t.shared(0.8):.0f}% of {self.units} of model A have a partner "
            f"in model B with correlation >= 0.8 (untrained baseline "
            f"{100 * b.shared(0.8):.0f}%); mean max-match {t.max_match.mean():.2f} vs "
            f"{b.max_match.mean():.2f}.",
        ]

    def plot(self, path: str | Path | None = None) -> Figure:
        plt = pyplot()
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
        bins = np.linspace(0, 1, 41)
        left.hist(self.trained.max_match, bins, alpha=0.7, label="trained B")
        left.hist(self.baseline.max_match, bins, alpha=0.7, label="untrained B")
        left.set_xlabel(f"max |correlation| of each {self.units[:-1]} of A")
        left.set_ylabel("count")
        left.legend(fontsize=8)
        grid = np.linspace(0, 1, 101)
        right.plot(grid, [self.trained.shared(x) for x in grid], label="trained B")
        right.plot(grid, [self.baseline.shared(x) for x in grid], label="untrained B", ls="--")
        right.set_xlabel("correlation threshold")
        right.set_ylabel(f"share of A's {self.units} shared")
        right.legend(fontsize=8)
        fig.suptitle(f"universality at {self.site}")
        fig.tight_layout()
        return finish(fig, path)


def compare_units(
    acts_a: torch.Tensor,
    acts_b: torch.Tensor,
    acts_baseline: torch.Tensor,
    site: str,
    units: str,
) -> UniversalityResult:
    corr, alive_a, alive_b = correlations(acts_a, acts_b)
    base, _, alive_c = correlations(acts_a, acts_baseline)
    return UniversalityResult(
        site,
        units,
        Matching.of(corr, alive_a),
        Matching.of(base, alive_a),
        (int(alive_a.sum()), int(alive_b.sum())),
        {"rows": int(acts_a.shape[0]), "baseline_alive": int(alive_c.sum())},
    )


def neuron_universality(
    model_a, model_b, tokens: torch.Tensor, site: str, baseline_seed: int = 12345
) -> UniversalityResult:
    """Units of `site` in A against B, and against an untrained model of B's configuration."""
    from gridlens.models import GridGPT

    baseline = GridGPT(model_b.cfg, seed=baseline_seed).to(model_b.device).eval()
    acts = [site_activations(m, tokens, site) for m in (model_a, model_b, baseline)]
    units = "neurons" if site.endswith("mlp.hook_post") else "dimensions"
    return compare_units(*acts, site=site, units=units)


def latent_universality(
    model_a, sae_a, model_b, sae_b, tokens: torch.Tensor, baseline_sae_seed: int = 12345
) -> UniversalityResult:
    """SAE latents of A (at sae_a's site) against B's latents; baseline: an untrained SAE of
    B's shape on B's activations (random directions)."""
    from gridlens.sae.model import SparseAutoencoder

    site_a, site_b = sae_a.cfg.hook_name, sae_b.cfg.hook_name
    with torch.no_grad():
        la = sae_a.encode(site_activations(model_a, tokens, site_a))
        xb = site_activations(model_b, tokens, site_b)
        lb = sae_b.encode(xb)
        lc = SparseAutoencoder(sae_b.cfg, seed=baseline_sae_seed).eval().encode(xb)
    return compare_units(la, lb, lc, site=f"{site_a} / {site_b}", units="SAE latents")


def pairwise(models: Sequence, measure: Callable[[Any, Any], UniversalityResult]) -> np.ndarray:
    """[K, K] mean max-match of every ordered pair (diagonal 1)."""
    k = len(models)
    out = np.eye(k)
    for i in range(k):
        for j in range(k):
            if i != j:
                out[i, j] = float(measure(models[i], models[j]).trained.max_match.mean())
    return out


def plot_pairwise(matrix: np.ndarray, path: str | Path | None = None, title: str = "") -> Figure:
    """Heat map of a [K, K] pairwise universality matrix."""
    plt = pyplot()
    k = len(matrix)
    fig, ax = plt.subplots(figsize=(1.2 * k + 2, 1.2 * k + 1.5))
    image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", color="w", fontsize=8)
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xlabel("model B")
    ax.set_ylabel("model A")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="mean max-match")
    fig.tight_layout()
    return finish(fig, path)
