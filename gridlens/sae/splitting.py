"""Feature splitting (Bricken et al. 2023; the GDM team's 2024 replication): a family
of dictionaries of growing size on one site, each latent of a larger dictionary matched to its
parent in the next smaller one by decoder cosine, and the splitting tree drawn with the
world-derived labels of gridlens.sae.labels.

A parent with several children has split (e.g. "task=contact" into "contact & changes" and
"contact & object=0"); one child with cosine near 1 means the latent persisted. The family is
trained on one set of activation rows (collected once), same recipe and seed at every size, so
only the size differs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gridlens.analysis.core import QuizSet
from gridlens.errors import ConfigError
from gridlens.plotting import finish, pyplot
from gridlens.sae.features import latent_activations
from gridlens.sae.labels import label_latents
from gridlens.sae.model import SAEConfig, SparseAutoencoder

FORMAT = "gridlens.sae_splitting"
VERSION = 1
PERSIST_COSINE = 0.9


class RowStore:
    """Activation rows held in memory, served in shuffled batches epoch after epoch (the store
    interface of gridlens.sae.train.train_sae: next, peek, state_dict, load_state_dict)."""

    def __init__(self, rows: torch.Tensor, batch_size: int, seed: int = 0):
        if len(rows) < batch_size:
            raise ConfigError(f"{len(rows)} activation rows < batch size {batch_size}")
        self.rows, self.batch_size, self.seed = rows, batch_size, seed
        self.served = 0

    def _batch(self, start: int) -> torch.Tensor:
        per_epoch = len(self.rows) // self.batch_size
        epoch, index = divmod(start // self.batch_size, per_epoch)
        order = torch.randperm(
            len(self.rows), generator=torch.Generator().manual_seed(self.seed * 7919 + epoch)
        )
        return self.rows[order[index * self.batch_size : (index + 1) * self.batch_size]]

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        batch = self._batch(self.served)
        self.served += self.batch_size
        return batch

    def peek(self, n: int) -> torch.Tensor:
        return self.rows[:n]

    def state_dict(self) -> dict:
        return {"served": self.served}

    def load_state_dict(self, state: dict) -> None:
        self.served = int(state["served"])


def train_family(
    rows: torch.Tensor,
    base: SAEConfig,
    sizes: Sequence[int],
    train_cfg,
    progress: bool = False,
) -> list[SparseAutoencoder]:
    """One SAE per size in `sizes` (increasing), `base` with d_sae replaced, each trained by
    gridlens.sae.train.train_sae on the same rows in the same order."""
    from dataclasses import replace

    from gridlens.sae.train import train_sae

    sizes = [int(s) for s in sizes]
    if len(sizes) < 2 or sizes != sorted(set(sizes)):
        raise ConfigError(f"sizes must be at least two increasing numbers, got {sizes}")
    family = []
    for size in sizes:
        store = RowStore(rows, train_cfg.batch_size, train_cfg.seed)
        cfg = replace(base, d_sae=size, k=min(base.k, size))
        family.append(train_sae(None, cfg, train_cfg, store=store, progress=progress))
    return family


def decoder_cosines(small: SparseAutoencoder, large: SparseAutoencoder) -> torch.Tensor:
    """[d_large, d_small] cosine between the decoder rows of two dictionaries."""
    a = torch.nn.functional.normalize(large.W_dec.detach().float(), dim=1)
    b = torch.nn.functional.normalize(small.W_dec.detach().float(), dim=1)
    return a @ b.T


@dataclass
class SplitResult:
    """Level i is the i-th dictionary (sizes increasing). `parent[i][j]`: the latent of level
    i - 1 whose decoder row is closest to latent j's (-1 at level 0); `cosine[i][j]` that
    cosine. `label[i][j]` / `f1[i][j]`: latent j's best world-derived label ("" when it never
    fires)."""

    hook_name: str
    sizes: list[int]
    parent: list[np.ndarray]
    cosine: list[np.ndarray]
    label: list[list[str]]
    f1: list[np.ndarray]
    fires: list[np.ndarray]

    def children(self, level: int, latent: int) -> list[int]:
        """Live latents of level + 1 matched to `latent`, closest first."""
        below = np.flatnonzero((self.parent[level + 1] == latent) & (self.fires[level + 1] > 0))
        return below[np.argsort(-self.cosine[level + 1][below], kind="stable")].tolist()

    def level_summary(self, level: int) -> dict:
        """How level's live latents fare one size up: split (>= 2 children), persisted (one
        child with cosine >= PERSIST_COSINE), other single matches, and vanished (none)."""
        counts = {"split": 0, "persisted": 0, "single": 0, "vanished": 0}
        for j in np.flatnonzero(self.fires[level] > 0):
            kids = self.children(level, int(j))
            if len(kids) >= 2:
                counts["split"] += 1
            elif not kids:
                counts["vanished"] += 1
            elif self.cosine[level + 1][kids[0]] >= PERSIST_COSINE:
                counts["persisted"] += 1
            else:
                counts["single"] += 1
        live = self.fires[level + 1] > 0
        counts["mean_child_cosine"] = (
            float(self.cosine[level + 1][live].mean()) if live.any() else 0.0
        )
        return counts

    def roots(self, n: int = 3) -> list[int]:
        """The n live latents of the smallest dictionary with the most descendants."""
        live = np.flatnonzero(self.fires[0] > 0)
        sizes = [self._descendants(0, int(j)) for j in live]
        return [int(live[i]) for i in np.argsort(-np.asarray(sizes), kind="stable")[:n]]

    def _descendants(self, level: int, latent: int) -> int:
        if level + 1 >= len(self.sizes):
            return 0
        kids = self.children(level, latent)
        return len(kids) + sum(self._descendants(level + 1, k) for k in kids)

    def to_json(self) -> dict:
        levels = []
        for i, size in enumerate(self.sizes):
            live = np.flatnonzero(self.fires[i] > 0)
            levels.append(
                {
                    "d_sae": size,
                    "live": len(live),
                    "latents": {
                        str(j): {
                            "parent": int(self.parent[i][j]),
                            "cosine": float(self.cosine[i][j]),
                            "label": self.label[i][j],
                            "f1": float(self.f1[i][j]),
                        }
                        for j in live
                    },
                }
            )
        return {
            "format": FORMAT,
            "version": VERSION,
            "hook_name": self.hook_name,
            "matching": "parent = argmax decoder cosine in the next smaller dictionary",
            "sizes": self.sizes,
            "summary": [self.level_summary(i) for i in range(len(self.sizes) - 1)],
            "levels": levels,
        }

    def findings(self) -> list[str]:
        out = []
        for i in range(len(self.sizes) - 1):
            s = self.level_summary(i)
            out.append(
                f"{self.sizes[i]} -> {self.sizes[i + 1]} latents: {s['split']} split, "
                f"{s['persisted']} persisted (cosine >= {PERSIST_COSINE}), {s['single']} single "
                f"looser matches, {s['vanished']} without a child; mean child cosine "
                f"{s['mean_child_cosine']:.2f}."
            )
        for root in self.roots(1):
            kids = self.children(0, root)
            names = ", ".join(f"{k} '{self.label[1][k]}'" for k in kids[:3])
            out.append(f"Largest tree: latent {root} '{self.label[0][root]}' -> {names}.")
        return out

    def plot(
        self,
        path: str | Path | None = None,
        roots: Sequence[int] | None = None,
        max_children: int = 3,
    ):
        """The splitting tree of `roots` (default: the 3 largest), one row per size, each node
        the latent and its label, edges coloured by decoder cosine."""
        roots = self.roots() if roots is None else [int(r) for r in roots]
        if any(not 0 <= r < self.sizes[0] for r in roots):
            raise ConfigError(f"roots must be latents of the smallest SAE, in [0, {self.sizes[0]})")
        nodes, edges = self._layout(roots, max_children)
        plt = pyplot()
        width = max(6.0, 1.5 * sum(1 for n in nodes if n[0] == len(self.sizes) - 1))
        fig, ax = plt.subplots(figsize=(min(width, 24), 1.6 * len(self.sizes) + 0.6))
        cmap = plt.get_cmap("viridis")
        for (level, j), (child_level, k) in edges:
            (x0, y0), (x1, y1) = nodes[(level, j)], nodes[(child_level, k)]
            ax.plot([x0, x1], [y0, y1], color=cmap(float(self.cosine[child_level][k])), lw=1.5)
        for (level, j), (x, y) in nodes.items():
            text = f"{j}\n{self.label[level][j]}\nF1 {self.f1[level][j]:.2f}"
            ax.text(
                x,
                y,
                text,
                ha="center",
                va="center",
                fontsize=6,
                bbox={"boxstyle": "round", "fc": "white", "ec": "0.6"},
            )
        ax.set_yticks(range(len(self.sizes)), [f"d_sae {s}" for s in self.sizes])
        ax.set_ylim(len(self.sizes) - 0.5, -0.5)
        ax.set_xlim(-0.7, max([x for x, _ in nodes.values()], default=0) + 0.7)
        ax.set_xticks([])
        sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, 1))
        fig.colorbar(sm, ax=ax, label="decoder cosine to parent", fraction=0.03)
        ax.set_title(f"feature splitting at {self.hook_name}", fontsize=9)
        fig.tight_layout()
        return finish(fig, path)

    def _layout(self, roots: list[int], max_children: int):
        """{(level, latent): (x, y)} with leaves spaced 1 apart, parents centred over their
        children; and the edges [(parent node, child node)]."""
        nodes, edges, next_x = {}, [], [0.0]

        def place(level: int, j: int) -> float:
            kids = self.children(level, j)[:max_children] if level + 1 < len(self.sizes) else []
            if not kids:
                x = next_x[0]
                next_x[0] += 1
            else:
                x = float(np.mean([place(level + 1, k) for k in kids]))
                edges.extend(((level, j), (level + 1, k)) for k in kids)
            nodes[(level, j)] = (x, level)
            return x

        for root in roots:
            place(0, root)
        return nodes, edges


def feature_splitting(
    model, family: Sequence[SparseAutoencoder], quizzes: QuizSet, positions: str = "grid"
) -> SplitResult:
    """Match each dictionary's latents to the next smaller one's and label every latent on
    `quizzes` (see the module docstring)."""
    hooks = {sae.cfg.hook_name for sae in family}
    if len(family) < 2 or len(hooks) != 1:
        raise ConfigError(f"need at least two SAEs on one site, got {len(family)} on {hooks}")
    family = sorted(family, key=lambda sae: sae.cfg.d_sae)
    parent, cosine, label, f1, fires = [], [], [], [], []
    for i, sae in enumerate(family):
        if i == 0:
            parent.append(np.full(sae.cfg.d_sae, -1))
            cosine.append(np.ones(sae.cfg.d_sae, dtype=np.float32))
        else:
            best = decoder_cosines(family[i - 1], sae).max(1)
            parent.append(best.indices.cpu().numpy())
            cosine.append(best.values.cpu().numpy())
        labels = label_latents(latent_activations(model, sae, quizzes, positions))
        tops = [labels.best(j) for j in range(sae.cfg.d_sae)]
        label.append([t[0]["label"] if t else "" for t in tops])
        f1.append(labels.best_f1())
        fires.append(labels.fires)
    return SplitResult(
        family[0].cfg.hook_name, [s.cfg.d_sae for s in family], parent, cosine, label, f1, fires
    )
