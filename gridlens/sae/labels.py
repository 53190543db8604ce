"""Automatic latent labels from the world's ground truth: for every latent, the per-position
annotation that "latent > 0" detects best (precision, recall and F1 over the recorded positions).

Candidate annotations of a position p (the cell at p, the one the model is about to write;
markers have no cell annotations): task, canonical grid (A, f_A, B, f_B), predicted grid or not,
target colour (the token at p), input colour (the token at p - 1, the last one the model read),
colour role (the task's role names), object index, row, column, changing cell, noise cell, and
the conjunctions task x changing, task x grid, task x object and grid x changing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gridlens.errors import ConfigError
from gridlens.io import atomic_write
from gridlens.plotting import finish, pyplot
from gridlens.sae.features import TOKEN_NAMES, FeatureActivations
from gridlens.world import structures as st
from gridlens.world.tokens import COLOR_NAMES, GRID_NAMES, TOKEN_TO_GRID

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class Family:
    """One kind of annotation: `codes` [n_rows] index `names` (-1: no candidate there)."""

    name: str
    codes: np.ndarray
    names: tuple[str, ...]


def _binary(name: str, mask: np.ndarray) -> Family:
    return Family(name, np.where(mask, 0, -1), (name,))


def _conjunction(a: Family, b: Family) -> Family:
    ok = (a.codes >= 0) & (b.codes >= 0)
    codes = np.where(ok, a.codes * len(b.names) + b.codes, -1)
    names = tuple(f"{x} & {y}" for x in a.names for y in b.names)
    return Family(f"{a.name} & {b.name}", codes, names)


def annotation_families(acts: FeatureActivations) -> list[Family]:
    """Every candidate family, evaluated on the recorded rows of `acts`."""
    batch = acts.quizzes.batch
    tokens = batch.tokens.cpu().numpy()
    n, length = tokens.shape
    per_grid = length // 4
    side = batch.width
    pos = acts.positions
    offset = pos % per_grid
    slot = pos // per_grid
    is_cell = offset > 0

    def rows(values: np.ndarray) -> np.ndarray:  # [n, L] or [n, P] -> [n_rows]
        values = values[:, pos] if values.shape[1] == length else values
        return np.asarray(values, dtype=np.int64).reshape(-1)

    def cell_only(values: np.ndarray) -> np.ndarray:
        return np.where(is_cell[None, :], values, -1)

    task_names = acts.task_names
    task_index = {t: i for i, t in enumerate(task_names)}
    per_quiz = np.array([task_index[t] for t in batch.task.tolist()], dtype=np.int64)
    task = Family("task", rows(np.repeat(per_quiz[:, None], len(pos), 1)), tuple(task_names))

    markers = tokens.reshape(n, 4, per_grid)[:, :, 0]
    grid_code = np.vectorize(lambda m: GRID_NAMES.index(TOKEN_TO_GRID[int(m)]))(markers)
    grid = Family("grid", rows(grid_code[:, slot]), GRID_NAMES)
    predicted = np.array([st.get_structure(str(s)).predicted for s in batch.structure], dtype=bool)[
        :, slot
    ]
    target = cell_only(tokens[:, pos])
    previous = np.concatenate([np.full((n, 1), -1), tokens[:, :-1]], axis=1)[:, pos]
    roles = cell_only(batch.token_annotations("roles")[:, pos])
    objects = cell_only(batch.token_annotations("objects")[:, pos])
    changes = rows(cell_only(batch.token_annotations("changes")[:, pos])) > 0
    noise = rows(cell_only(batch.token_annotations("noise")[:, pos])) > 0
    n_objects = int(max(objects.max() + 1, 1))
    row_code = np.where(is_cell, (offset - 1) // side, -1)
    col_code = np.where(is_cell, (offset - 1) % side, -1)
    families = [
        task,
        grid,
        _binary("predicted grid", rows(predicted).astype(bool)),
        Family("colour", rows(target), tuple(f"colour={c}" for c in COLOR_NAMES)),
        Family("input", rows(previous), tuple(f"input={t}" for t in TOKEN_NAMES)),
        Family("role", rows(roles), tuple(f"role={r}" for r in batch.role_names)),
        Family("object", rows(objects), tuple(f"object={k}" for k in range(n_objects))),
        Family(
            "row",
            rows(np.broadcast_to(row_code, (n, len(pos)))),
            tuple(f"row={r}" for r in range(batch.height)),
        ),
        Family(
            "col",
            rows(np.broadcast_to(col_code, (n, len(pos)))),
            tuple(f"col={c}" for c in range(side)),
        ),
        _binary("changes", changes),
        _binary("noise", noise),
    ]
    by_name = {f.name: f for f in families}
    families += [
        _conjunction(task, by_name["changes"]),
        _conjunction(task, grid),
        _conjunction(task, by_name["object"]),
        _conjunction(grid, by_name["changes"]),
    ]
    return families


@dataclass
class LabelResult:
    """Per latent, F1 of every candidate; the best candidate with its precision and recall."""

    candidates: list[str]
    f1: np.ndarray  # [d_sae, n_candidates] float32
    precision: np.ndarray  # [d_sae, n_candidates] float32
    recall: np.ndarray  # [d_sae, n_candidates] float32
    fires: np.ndarray  # [d_sae] positions where the latent is non-zero
    n_rows: int

    @property
    def alive(self) -> np.ndarray:
        return np.flatnonzero(self.fires > 0)

    def best(self, latent: int, k: int = 1) -> list[dict]:
        """The k candidates with the highest F1 for `latent` (empty when it never fires)."""
        if self.fires[latent] == 0:
            return []
        order = np.argsort(-self.f1[latent], kind="stable")[:k]
        return [
            {
                "label": self.candidates[c],
                "f1": float(self.f1[latent, c]),
                "precision": float(self.precision[latent, c]),
                "recall": float(self.recall[latent, c]),
            }
            for c in order
        ]

    def detectors_of(self, label: str, k: int = 5) -> list[dict]:
        """The k latents detecting candidate `label` best (by F1)."""
        if label not in self.candidates:
            from gridlens.errors import unknown_name

            raise unknown_name("annotation", label, self.candidates)
        c = self.candidates.index(label)
        order = np.argsort(-self.f1[:, c], kind="stable")[:k]
        return [
            {
                "latent": int(j),
                "f1": float(self.f1[j, c]),
                "precision": float(self.precision[j, c]),
                "recall": float(self.recall[j, c]),
            }
            for j in order
        ]

    def best_f1(self) -> np.ndarray:
        """[d_sae] the best F1 of each latent (0 for latents that never fire)."""
        return self.f1.max(1) if self.f1.size else np.zeros(len(self.fires))

    def to_json(self) -> dict:
        return {
            "definition": "detector 'latent > 0' against each per-position annotation",
            "positions": self.n_rows,
            "candidates": len(self.candidates),
            "alive_latents": len(self.alive),
            "latents": {
                str(j): {"fires": int(self.fires[j]), "best": self.best(int(j), 3)}
                for j in self.alive
            },
        }

    def table(self, latents: list[int] | None = None) -> str:
        """A Markdown table of the best label per latent: the given latents in the order given
        (a ranking such as `ExpressionMatrix.specific_latents` stays a ranking), or every live
        latent, best F1 first."""
        if latents is None:
            latents = sorted(self.alive.tolist(), key=lambda j: -self.best_f1()[j])
        lines = [
            "| latent | label | F1 | precision | recall | fires |",
            "|---|---|---|---|---|---|",
        ]
        for j in latents:
            for b in self.best(j, 1):
                lines.append(
                    f"| {j} | {b['label']} | {b['f1']:.3f} | {b['precision']:.3f} | "
                    f"{b['recall']:.3f} | {int(self.fires[j])} |"
                )
        return "\n".join(lines) + "\n"

    def write(self, directory: str | Path) -> tuple[Path, Path]:
        """labels.json and labels.md in `directory`, written atomically."""
        directory = Path(directory)
        text = json.dumps(self.to_json(), indent=1).encode()
        js = atomic_write(directory / "labels.json", lambda h: h.write(text))
        md = atomic_write(directory / "labels.md", lambda h: h.write(self.table().encode()))
        return js, md

    def plot(self, path: str | Path | None = None) -> Figure:
        """Histogram of the best F1 per live latent."""
        plt = pyplot()

        fig, ax = plt.subplots(figsize=(5, 3))
        ax.hist(self.best_f1()[self.alive], bins=np.linspace(0, 1, 21))
        ax.set_xlabel("best F1 of 'latent > 0' against a ground-truth annotation")
        ax.set_ylabel("latents")
        ax.set_title(f"{len(self.alive)} live latents, {len(self.candidates)} candidates")
        fig.tight_layout()
        return finish(fig, path)

    def findings(self) -> list[str]:
        if not len(self.alive):
            return ["No latent fires on this quiz set."]
        best = self.best_f1()
        top = int(self.alive[np.argmax(best[self.alive])])
        b = self.best(top)[0]
        good = int((best[self.alive] >= 0.8).sum())
        return [
            f"{good} of {len(self.alive)} live latents detect a ground-truth annotation with "
            f"F1 >= 0.8 (median best F1 {np.median(best[self.alive]):.2f}).",
            f"Best: latent {top} = '{b['label']}' (F1 {b['f1']:.3f}, precision "
            f"{b['precision']:.3f}, recall {b['recall']:.3f}).",
        ]


def label_latents(acts: FeatureActivations) -> LabelResult:
    """Score every latent as a detector of every candidate annotation (see module docstring)."""
    if acts.n_rows == 0:
        raise ConfigError("no recorded positions to label")
    latent_of = acts.latent_of_entries()
    fires = np.diff(acts.offsets).astype(np.float64)
    names: list[str] = []
    tps, counts = [], []
    for family in annotation_families(acts):
        v = len(family.names)
        code = family.codes[acts.rows]
        ok = code >= 0
        tp = np.bincount(latent_of[ok] * v + code[ok], minlength=acts.d_sae * v)
        tps.append(tp.reshape(acts.d_sae, v))
        counts.append(np.bincount(family.codes[family.codes >= 0], minlength=v))
        names.extend(family.names)
    tp = np.concatenate(tps, axis=1).astype(np.float64)
    count = np.concatenate(counts).astype(np.float64)
    present = count > 0
    tp, count = tp[:, present], count[present]
    names = [n for n, p in zip(names, present, strict=True) if p]
    precision = np.divide(tp, fires[:, None], out=np.zeros_like(tp), where=fires[:, None] > 0)
    recall = tp / count[None, :]
    denominator = precision + recall
    f1 = np.divide(
        2 * precision * recall, denominator, out=np.zeros_like(tp), where=denominator > 0
    )
    return LabelResult(
        names,
        f1.astype(np.float32),
        precision.astype(np.float32),
        recall.astype(np.float32),
        fires.astype(np.int64),
        acts.n_rows,
    )
