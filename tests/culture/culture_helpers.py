"""Stand-ins for the culture tests: world quizzes as candidates and fixed scores, so culture
rounds happen without trained models."""

import torch

from gridlens.training.culture.config import CultureConfig
from gridlens.world import generate

CFG = CultureConfig(
    k=3,
    model="tiny",
    tasks="frame",
    train_quizzes=40,
    test_quizzes=8,
    batch_size=20,
    accuracy_threshold=0.0,  # every round is a culture round
    culture_train=6,
    culture_test=2,
    candidates_per_model=4,
    max_attempts=3,
    rounds=3,
)


def world_candidates(model, n, hot, cold, generator, h, w):
    seed = int(torch.randint(0, 2**31, (1,), generator=generator))
    return generate("replace_color,frame", n, seed=seed, height=h, width=w).tokens


def fixed_scores(models, canonical, noise, rounds, rng, h, w):
    probas = torch.full((len(canonical), len(models)), 0.99)
    probas[:, 0] = 0.1  # model 0 fails every candidate: one failing model -> kept
    probas[::4, 1] = 0.7  # model 1 unsure on every fourth candidate -> dropped
    return probas
