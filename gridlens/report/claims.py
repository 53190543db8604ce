"""The claims of the published investigation of Fleuret's culture models
(github.com/tom-pollak/interpretability-culture), each an
automated test on the model in hand: a `Claim` with a verdict and the numbers behind it.

Verdicts say whether the claim, as worded in `Claim.claim`, holds for this model:
`reproduced`, `partly`, `not reproduced`, or `not applicable` (with the reason) when the model
or the options leave nothing to test (one layer, one task, no wrong answer to study). The
thresholds are fixed here, before any model is seen; each claim's evidence says which applied.

Conventions (MyGPT's BOS shift): the logits at position p predict token p; the predicted grid
is the last one, and in the canonical structure (A, f_A, B, f_B) its previous grid is B.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from gridlens.analysis.core import QuizSet, predicted_cells

VERDICTS = ("reproduced", "partly", "not reproduced", "not applicable")
FAR_MORE = 10.0  # claim 1: L0's loss increase over the next attention layer's
HEAD_SHARE = (0.5, 0.25)  # claim 2: attention share for reproduced / partly
COPY_SHARE = (0.9, 0.5, 0.2)  # claim 3: all cells, coloured cells (reproduced), coloured (partly)
SPECIFIC = (3.0, 1.5)  # claim 4: hurt on the task / on the next-most-hurt task
FOLLOWS = (0.5, 0.2)  # claim 5: share of forced continuations that follow the ablated model
RECOVERS = (0.5, 0.3, 0.1)  # claim 6: best share right, gain over no latent; partly: gain
INDUCES = (0.25, 0.05)  # claim 7: rise in the share of outputs that follow the task's rule
#: layer-0 attention categories that count as "the previous token or the previous grid's cell"
PREVIOUS = ("prev_token", "prev_grid_same_cell", "prev_grid_query_cell")


@dataclass
class Claim:
    id: str
    claim: str
    verdict: str
    evidence: dict[str, Any] = field(default_factory=dict)
    reason: str = ""  # why not applicable, or what the verdict rests on

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict {self.verdict!r} not in {VERDICTS}")

    def to_json(self) -> dict[str, Any]:
        out = {"id": self.id, "claim": self.claim, "verdict": self.verdict}
        return {**out, "evidence": self.evidence, "reason": self.reason}


def grade(value: float, reproduced: float, partly: float) -> str:
    """The verdict of a number against its two thresholds (higher is stronger)."""
    if value >= reproduced:
        return "reproduced"
    return "partly" if value >= partly else "not reproduced"


def not_applicable(claim_id: str, text: str, reason: str) -> Claim:
    return Claim(claim_id, text, "not applicable", {}, reason)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a share k / n (95% by default); (0, 1) when n is 0."""
    if n == 0:
        return 0.0, 1.0
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


# ------------------------------------------------------------------- 1. layer-0 attention

L0_TEXT = (
    "Ablating layer 0's attention raises the loss far more than ablating any other attention "
    f"layer (the write-up: about 1000x the clean loss; here: at least {FAR_MORE:g}x the "
    "increase of the next layer)."
)


def l0_attention_outsized(zero_layers) -> Claim:
    """Claim 1 from the zero ablation of every layer (an AblationResult)."""
    cid = "l0_attention_outsized"
    attn = [c for c in zero_layers.components if c.endswith(".attn")]
    if len(attn) < 2:
        return not_applicable(cid, L0_TEXT, "the model has one attention layer: nothing to compare")
    ratio = zero_layers.effect("loss_ratio")
    delta = zero_layers.effect("loss_delta")
    ranked = sorted(attn, key=lambda c: -delta[c]["all"])
    nxt = ranked[1] if ranked[0] == "L0.attn" else ranked[0]
    l0, other = delta["L0.attn"]["all"], delta[nxt]["all"]
    rise = l0 / other if other > 0 else (float("inf") if l0 > 0 else float("nan"))
    evidence = {
        "clean_loss": zero_layers.clean_summary()["loss"]["all"],
        "l0_loss_ratio": ratio["L0.attn"]["all"],
        "l0_loss_increase": delta["L0.attn"]["all"],
        "next_layer": nxt,
        "next_loss_ratio": ratio[nxt]["all"],
        "next_loss_increase": delta[nxt]["all"],
        "increase_ratio_to_next": rise if np.isfinite(rise) else None,
        "method": "zero ablation, teacher-forced loss on the predicted grid",
    }
    hurts = ranked[0] == "L0.attn" and l0 > 0
    verdict = grade(rise, FAR_MORE, 1.0) if hurts else "not reproduced"
    return Claim(cid, L0_TEXT, verdict, evidence, f"largest attention-layer damage: {ranked[0]}")


# ------------------------------------------------------------- 2. previous-token head

HEAD_TEXT = (
    "A layer-0 head attends to the previous token, or to the same cell of the previous grid "
    f"(reproduced at >= {HEAD_SHARE[0]:g} of its attention from the predicted grid's cells)."
)


def l0_previous_token_head(heads) -> Claim:
    """Claim 2 from the head classification (a HeadClassification)."""
    from gridlens.analysis.attention import CATEGORIES

    columns = [CATEGORIES.index(c) for c in PREVIOUS]
    layer0 = [i for i, h in enumerate(heads.heads) if h.startswith("L0H")]
    mass = heads.mass_predicted[np.ix_(layer0, columns)]
    i, j = np.unravel_index(int(mass.argmax()), mass.shape)
    share = float(mass[i, j])
    evidence = {
        "head": heads.heads[layer0[i]],
        "category": PREVIOUS[j],
        "attention_share": share,
        "per_head": {
            heads.heads[h]: dict(zip(PREVIOUS, map(float, mass[r]), strict=True))
            for r, h in enumerate(layer0)
        },
    }
    return Claim("l0_previous_token_head", HEAD_TEXT, grade(share, *HEAD_SHARE), evidence)


# ------------------------------------------------------------------ 3. direct copy path

COPY_TEXT = (
    "The direct path embedding -> layer-0 attention (OV) -> unembedding, everything else "
    "ablated, reproduces the previous grid (the write-up: close but imperfect)."
)


def direct_path_hooks(n_layers: int) -> list:
    """fwd_hooks zeroing every MLP and every attention layer but layer 0's."""

    def zero(x, hook):
        return torch.zeros_like(x)

    sites = [f"blocks.{lay}.hook_mlp_out" for lay in range(n_layers)]
    return [
        (s, zero) for s in sites + [f"blocks.{lay}.hook_attn_out" for lay in range(1, n_layers)]
    ]


@torch.no_grad()
def direct_path_copy(model, quizzes: QuizSet) -> dict[str, float]:
    """Shares of the predicted grid's cells where the direct path's argmax equals the previous
    grid's cell: all cells, coloured ones (not background), and the always-background baseline."""
    tokens = quizzes.tokens.to(model.device)
    cells = predicted_cells(tokens)
    grid = tokens.shape[1] // 4
    prev = tokens[:, cells.start - grid : cells.stop - grid]
    logits = model.run_with_hooks(tokens, fwd_hooks=direct_path_hooks(model.cfg.n_layers))
    pred = logits[:, cells].argmax(-1)
    coloured = prev != 0
    return {
        "copies_previous_grid": float((pred == prev).float().mean()),
        "copies_coloured_cells": float((pred == prev)[coloured].float().mean()),
        "matches_answer": float((pred == tokens[:, cells]).float().mean()),
        "background_baseline": float((~coloured).float().mean()),
        "cells": int(prev.numel()),
    }


def l0_direct_path_copies(model, quizzes: QuizSet) -> Claim:
    shares = direct_path_copy(model, quizzes)
    all_cells, coloured = shares["copies_previous_grid"], shares["copies_coloured_cells"]
    if all_cells >= COPY_SHARE[0] and coloured >= COPY_SHARE[1]:
        verdict = "reproduced"
    else:
        verdict = "partly" if coloured >= COPY_SHARE[2] else "not reproduced"
    reason = (
        f"reproduced: >= {COPY_SHARE[0]:g} of all cells and >= {COPY_SHARE[1]:g} of coloured "
        f"cells; partly: >= {COPY_SHARE[2]:g} of coloured cells (chance about 0.1)"
    )
    return Claim("l0_direct_path_copies", COPY_TEXT, verdict, shares, reason)


# ----------------------------------------------------------------------- in one sentence


def evidence_text(claim: Claim) -> str:
    """The claim's evidence as one line of numbers (the reason when not applicable)."""
    if claim.verdict == "not applicable":
        return claim.reason
    return _TEXT[claim.id](claim.evidence)


def _times(ratio: float | None) -> str:
    if ratio is None:
        return "no ratio (the next layer's ablation does not raise the loss)."
    return f"{ratio:.3g}x its increase."


def _shares(values: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.0%}" for k, v in values.items())


_TEXT = {
    "l0_attention_outsized": lambda e: (
        f"L0.attn: loss x{e['l0_loss_ratio']:.3g} ({e['l0_loss_increase']:+.3g}); next "
        f"{e['next_layer']}: x{e['next_loss_ratio']:.3g} ({e['next_loss_increase']:+.3g}); "
        + _times(e["increase_ratio_to_next"])
    ),
    "l0_previous_token_head": lambda e: (
        f"{e['head']} puts {e['attention_share']:.2f} of its attention on {e['category']}."
    ),
    "l0_direct_path_copies": lambda e: (
        f"{e['copies_previous_grid']:.1%} of cells copy the previous grid "
        f"({e['copies_coloured_cells']:.1%} of its coloured cells; predicting background "
        f"everywhere: {e['background_baseline']:.1%}); {e['matches_answer']:.1%} match the answer."
    ),
    "task_specific_mlp": lambda e: (
        f"{e['layer']} on {e['task']}: {e['ratio_to_next_task']:.3g}x the loss increase on "
        f"{e['next_task']}; greedy {e['greedy_clean']:.0%} -> {e['greedy_ablated']:.0%} on "
        f"{e['n_quizzes']} quizzes; wrong answers valid for: "
        f"{_shares(e['wrong_answers_follow']) or 'none wrong'}."
    ),
    "transform_cell_decides": lambda e: (
        f"Of {e['broken_quizzes']} broken quizzes, the forced clean model follows the ablated "
        f"answer in {e['follows_ablated']:.0%} and returns to the truth in "
        f"{e['back_to_truth']:.0%}; later cells as ablated {e['rest_cells_as_ablated']:.1%} "
        f"(truth vs ablated: {e['rest_cells_truth_as_ablated']:.1%})."
    ),
    "sparse_feature_recovers": lambda e: (
        f"Right on the {e['broken_quizzes']} broken quizzes: {_shares(e['right_share'])}; "
        f"top latents {e['top_latents']}."
    ),
    "feature_induces_behaviour": lambda e: (
        f"Other tasks' answers following the rule at scale {_shares(e['follow_task_rule'])}; "
        f"right at scale {_shares(e['right_answers'])} ({e['n_quizzes']} quizzes)."
    ),
}
