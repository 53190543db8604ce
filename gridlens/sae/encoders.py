"""One dictionary, several encoders, equal L0: the learned encoder against pursuit
(inference-time optimisation, after the Google DeepMind mech interp team's 2024 update).

For each encoder (`learned`, `mp`, `gp`; see gridlens.sae.pursuit) the SAE's decoder is kept and
only the codes change: `evaluate_sae` gives explained variance, loss recovered and greedy
accuracy on the predicted grid with that encoder spliced in, and the world-derived labels
(gridlens.sae.labels) give each latent's best detection F1 under that encoder. The pursuit
encoders' L0 is the learned encoder's mean L0 on the same rows (rounded) unless given.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from gridlens.analysis.core import QuizSet
from gridlens.sae.activations import collect
from gridlens.sae.features import latent_activations
from gridlens.sae.gated import build_sae
from gridlens.sae.labels import label_latents
from gridlens.sae.metrics import SAEMetrics, evaluate_sae
from gridlens.sae.model import SparseAutoencoder
from gridlens.sae.pursuit import ENCODERS, with_encoder
from gridlens.sae.splice import encode_inference

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FORMAT = "gridlens.sae_encoders"
VERSION = 1
GOOD_F1 = 0.8


@dataclass
class EncoderComparison:
    """evaluate_sae's metrics and label F1 per encoder, all at the pursuit L0 `l0`."""

    l0: int
    metrics: dict[str, SAEMetrics]
    best_f1: dict[str, np.ndarray]  # encoder -> [d_sae] best label F1 (0 when never firing)

    def summary(self, encoder: str) -> dict[str, float]:
        names = ("l0", "explained_variance", "loss_recovered", "accuracy_spliced")
        values = {n: self.metrics[encoder][n]["all"] for n in names}
        f1 = self.best_f1[encoder]
        alive = f1[f1 > 0]
        values["label_f1_mean"] = float(alive.mean()) if alive.size else 0.0
        values["latents_f1_above_0.8"] = int((f1 >= GOOD_F1).sum())
        return values

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "pursuit_l0": self.l0,
            "summary": {e: self.summary(e) for e in self.metrics},
            "encoders": {e: m.to_json() for e, m in self.metrics.items()},
        }

    def findings(self) -> list[str]:
        lines = [
            f"Encoders on one dictionary, pursuit at L0 <= {self.l0}: explained variance, loss "
            f"recovered and greedy accuracy on the predicted grid, mean best label F1 of firing "
            f"latents, latents with F1 >= {GOOD_F1}."
        ]
        for encoder in self.metrics:
            s = self.summary(encoder)
            lines.append(
                f"  {encoder:8s} L0 {s['l0']:5.1f}  EV {s['explained_variance']:.3f}  loss "
                f"recovered {s['loss_recovered']:.3f}  accuracy {s['accuracy_spliced']:.3f}  "
                f"F1 {s['label_f1_mean']:.3f}  ({s['latents_f1_above_0.8']} >= {GOOD_F1})"
            )
        return lines

    def plot(self, directory: str | Path | None = None) -> list[Figure]:
        """One figure per encoder, written as DIRECTORY/sae_eval_ENCODER.png when given one."""
        return [
            m.plot(None if directory is None else Path(directory) / f"sae_eval_{e}.png")
            for e, m in self.metrics.items()
        ]


@torch.no_grad()
def learned_l0(model, sae: SparseAutoencoder, quizzes: QuizSet, positions: str = "grid") -> int:
    """The learned encoder's mean L0 on the quizzes' rows, rounded (at least 1)."""
    x = collect(model, quizzes.tokens, sae.cfg.hook_name, positions, 64)
    x = x.to(sae.W_enc.device, sae.W_enc.dtype)
    l0 = torch.cat([(encode_inference(sae, c) != 0).sum(1) for c in x.split(8192)])
    return max(1, round(float(l0.float().mean())))


def compare_encoders(
    model,
    sae: SparseAutoencoder,
    quizzes: QuizSet,
    encoders: tuple[str, ...] = ENCODERS,
    l0: int | None = None,
    positions: str = "grid",
    greedy: bool = True,
) -> EncoderComparison:
    """Every metric of evaluate_sae and the label F1 of `sae`'s dictionary for each encoder."""
    if l0 is None:
        l0 = learned_l0(model, sae, quizzes, positions)
    metrics, best_f1 = {}, {}
    for name in encoders:
        variant = with_encoder(sae, name, l0)
        metrics[name] = evaluate_sae(model, variant, quizzes, positions, greedy=greedy)
        labels = label_latents(latent_activations(model, variant, quizzes, positions))
        best_f1[name] = labels.best_f1()
    return EncoderComparison(l0, metrics, best_f1)


def topk_sweep(
    model, sae: SparseAutoencoder, quizzes: QuizSet, ks: tuple[int, ...], positions: str = "grid"
) -> dict[int, dict[str, float]]:
    """A TopK SAE's test-time max-k sweep: L0 against fidelity (explained variance, loss
    recovered) with the same weights keeping k latents per row at inference."""
    out = {}
    for k in ks:
        variant = build_sae(dataclasses.replace(sae.cfg, k=k))
        variant.load_state_dict(sae.state_dict())
        variant.to(sae.W_dec.device, sae.W_dec.dtype).eval()
        metrics = evaluate_sae(model, variant, quizzes, positions, greedy=False)
        out[k] = {n: metrics[n]["all"] for n in ("l0", "explained_variance", "loss_recovered")}
    return out
