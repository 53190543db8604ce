"""Making culture quizzes: generate candidates, score them with every model, keep the ones the
population disagrees on in the right way.

Generation follows the original procedure: in the generation structure (f_B, f_A, A, B) a model
samples f_B alone at a hot temperature, then f_A, A and B given it at the cold one; the quiz is
reordered to (A, f_A, B, f_B) and f_B is sampled again, now as an answer to the other three.
Scoring: a model's probability of the correct answer in both time directions (predict f_B in
the forward structure, B in the inverse one: the product of the two), with prompt noise on the
third grid, averaged over several noise draws. A candidate is kept when every model is either
confident or failing and between `min_fail` and `max_fail` models fail.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from gridlens.world import structures as st
from gridlens.world.tokens import MARKER_TOKENS, N_COLORS


def restructure(canonical: torch.Tensor, structure: str, height: int, width: int) -> torch.Tensor:
    """Canonical (A, f_A, B, f_B) tokens to the slot order of `structure` (markers move along)."""
    spec = st.get_structure(structure)
    slots = canonical.reshape(len(canonical), 4, 1 + height * width)
    return slots[:, spec.permutation].reshape(canonical.shape)


def to_canonical(tokens: torch.Tensor, structure: str, height: int, width: int) -> torch.Tensor:
    """Inverse of `restructure`."""
    spec = st.get_structure(structure)
    slots = tokens.reshape(len(tokens), 4, 1 + height * width)
    out = torch.empty_like(slots)
    out[:, spec.permutation] = slots
    return out.reshape(tokens.shape)


def slot_positions(slots: list[int], height: int, width: int) -> torch.Tensor:
    """Token positions of the cells of the given slots."""
    size = 1 + height * width
    return torch.cat([torch.arange(s * size + 1, (s + 1) * size) for s in slots])


def add_prompt_noise(
    tokens: torch.Tensor, structure: str, p: float, rng: np.random.Generator, h: int, w: int
) -> torch.Tensor:
    """Replace each cell of the structure's noise-masked slot by a random colour with prob. p."""
    spec = st.get_structure(structure)
    hit, colours = st.noise_cells(rng, len(tokens), spec, h, w, p)
    slots = tokens.reshape(len(tokens), 4, 1 + h * w).clone()
    cells = slots[:, :, 1:].reshape(len(tokens), 4, h, w)
    hit_t = torch.from_numpy(hit).to(tokens.device)
    cells = torch.where(hit_t, torch.from_numpy(colours).to(tokens.device), cells)
    slots[:, :, 1:] = cells.reshape(len(tokens), 4, h * w)
    return slots.reshape(tokens.shape)


def empty_quizzes(n: int, structure: str, height: int, width: int) -> torch.Tensor:
    """Quizzes of background cells with the structure's markers."""
    spec = st.get_structure(structure)
    slots = torch.zeros(n, 4, 1 + height * width, dtype=torch.long)
    slots[:, :, 0] = torch.tensor([MARKER_TOKENS[g] for g in spec.order])
    return slots.reshape(n, -1)


@torch.no_grad()
def generate_candidates(
    model, n: int, hot: float, cold: float, generator: torch.Generator, height: int, width: int
) -> torch.Tensor:
    """[n, L] canonical candidate quizzes sampled by `model` (cells may hold marker tokens when
    the model emits them: `well_formed` says which do not)."""
    was_training = model.training
    model.eval()
    device = model.device
    quizzes = empty_quizzes(n, "generation", height, width).to(device)
    quizzes = model.generate(quizzes, slot_positions([0], height, width), hot, generator=generator)
    rest = slot_positions([1, 2, 3], height, width)
    quizzes = model.generate(quizzes, rest, cold, generator=generator)
    quizzes = to_canonical(quizzes, "generation", height, width)
    answer = slot_positions([3], height, width)
    quizzes = model.generate(quizzes, answer, cold, generator=generator)
    model.train(was_training)
    return quizzes.cpu()


def well_formed(canonical: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[n] bool: every cell is a colour (a generated marker token inside a grid is malformed)."""
    cells = canonical.reshape(len(canonical), 4, 1 + height * width)[:, :, 1:]
    return (cells < N_COLORS).all(dim=(1, 2))


def trivial(canonical: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[n] bool: A equals f(A) or B equals f(B) (the original drops these)."""
    cells = canonical.reshape(len(canonical), 4, 1 + height * width)[:, :, 1:]
    return (cells[:, 0] == cells[:, 1]).all(1) | (cells[:, 2] == cells[:, 3]).all(1)


@torch.no_grad()
def answer_logprob(model, tokens: torch.Tensor, height: int, width: int, batch: int = 256):
    """[n] log-probability of the last grid's cells given everything before them."""
    was_training = model.training
    model.eval()
    cells = slot_positions([3], height, width).to(model.device)
    out = []
    for lo in range(0, len(tokens), batch):
        chunk = tokens[lo : lo + batch].to(model.device)
        logp = F.log_softmax(model(chunk)[:, cells].float(), -1)
        out.append(logp.gather(-1, chunk[:, cells, None]).squeeze(-1).sum(1).cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


def score(
    models, canonical: torch.Tensor, noise: float, rounds: int, rng: np.random.Generator, h, w
) -> torch.Tensor:
    """[n, K] each model's probability of solving each quiz in both directions (averaged over
    `rounds` prompt-noise draws; the same noisy prompts for every model)."""
    probas = torch.zeros(len(canonical), len(models))
    for _ in range(rounds):
        prompts = [
            add_prompt_noise(restructure(canonical, s, h, w), s, noise, rng, h, w)
            for s in ("forward", "inverse")
        ]
        both = torch.cat(prompts)
        for j, model in enumerate(models):
            logp = answer_logprob(model, both, h, w)
            probas[:, j] += (logp[: len(canonical)] + logp[len(canonical) :]).exp()
    return probas / rounds


@dataclass(frozen=True)
class Verdict:
    keep: torch.Tensor  # [n] bool
    n_fail: torch.Tensor  # [n] models failing each quiz
    n_succeed: torch.Tensor


def validate(probas: torch.Tensor, understands: float, fails: float, lo: int, hi: int) -> Verdict:
    """Keep a quiz when every model is confident (>= understands) or failing (<= fails) and
    the number failing lies in [lo, hi]."""
    succeed = (probas >= understands).sum(1)
    fail = (probas <= fails).sum(1)
    keep = (succeed + fail == probas.shape[1]) & (fail >= lo) & (fail <= hi)
    return Verdict(keep, fail, succeed)
