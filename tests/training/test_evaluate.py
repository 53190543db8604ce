"""`evaluate` against a direct computation: a plain full-forward decoding loop written here
(no KV cache), the world's checker called on each wrong answer, and the loss from logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from gridlens.models import load
from gridlens.training.data import TestSet
from gridlens.training.evaluate import PREDICTED_STRUCTURES, evaluate
from gridlens.world import check
from gridlens.world import structures as st
from gridlens.world.tokens import grids_to_tokens

TASKS = ("frame", "translate")
N = 3  # quizzes per (task, structure)


@pytest.fixture(scope="module")
def model():
    return load("default")


@pytest.fixture(scope="module")
def test_set():
    return TestSet.build(TASKS, 64, seed=5)


def decode(model, tokens: torch.Tensor, sample: torch.Generator | None) -> torch.Tensor:
    """Fill the last grid cell by cell, each from a full forward pass over the prefix."""
    out = tokens.clone()
    cells = tokens.shape[1] // 4 - 1
    for p in range(tokens.shape[1] - cells, tokens.shape[1]):
        logits = model(out[:, : p + 1])[:, p].float()
        if sample is None:
            out[:, p] = logits.argmax(-1)
        else:
            out[:, p] = torch.multinomial(logits.softmax(-1), 1, generator=sample).squeeze(1)
    return out


def still_valid(task: str, structure: str, grids: np.ndarray, predicted: torch.Tensor) -> bool:
    """The checker's verdict on the quiz with the predicted grid in its place (canonical)."""
    spec = st.get_structure(structure)
    slots = st.reorder(grids[None], spec).copy()
    h, w = grids.shape[-2:]
    last = predicted[-h * w :].numpy().reshape(h, w)
    if (last > 10).any():
        return False
    slots[0, 3] = last
    canonical = st.to_canonical(slots, spec)
    return bool(check(task, grids_to_tokens(canonical, st.STRUCTURES["forward"].order))[0])


@torch.no_grad()
def reference(model, test_set) -> dict[str, dict[str, float]]:
    """Per task, the metrics of `evaluate` recomputed; all groups decoded as one batch in the
    task-major order `evaluate` uses, so sampling draws the same numbers from the generator."""
    groups = [(t, s) for t in TASKS for s in PREDICTED_STRUCTURES]
    parts = [test_set.quizzes(t, s, N) for t, s in groups]
    tokens = torch.cat([p[0] for p in parts])
    last = slice(tokens.shape[1] - 100, tokens.shape[1])
    logits = model(tokens)[:, last].float()
    loss = F.cross_entropy(logits.transpose(1, 2), tokens[:, last], reduction="none").mean(1)
    greedy = decode(model, tokens, None)
    sampled = decode(model, tokens, torch.Generator().manual_seed(0))
    right = greedy[:, last] == tokens[:, last]
    sampled_right = (sampled[:, last] == tokens[:, last]).all(1)
    out = {
        t: {"greedy": 0, "sampled": 0, "cells": 0, "loss": 0.0, "wrong": 0, "valid": 0}
        for t in TASKS
    }
    for g, (task, structure) in enumerate(groups):
        rows = range(g * N, (g + 1) * N)
        m = out[task]
        for i in rows:
            m["greedy"] += bool(right[i].all())
            m["sampled"] += bool(sampled_right[i])
            m["cells"] += int(right[i].sum())
            m["loss"] += float(loss[i])
            if not right[i].all():
                m["wrong"] += 1
                m["valid"] += still_valid(task, structure, parts[g][1][i - g * N], greedy[i])
    n = N * len(PREDICTED_STRUCTURES)
    return {
        t: {
            "accuracy_greedy": m["greedy"] / n,
            "accuracy_sampled": m["sampled"] / n,
            "cell_accuracy": m["cells"] / (n * 100),
            "loss": m["loss"] / n,
            "wrong_valid": m["valid"] / m["wrong"] if m["wrong"] else None,
        }
        for t, m in out.items()
    }


@pytest.mark.slow
def test_evaluate_matches_a_direct_decoding_loop(model, test_set):
    result = evaluate(model, test_set, TASKS, n=N)
    expected = reference(model, test_set)
    n = N * len(PREDICTED_STRUCTURES)
    for task in TASKS:
        got = result.tasks[task]
        assert got["n"] == n
        for key in ("accuracy_greedy", "cell_accuracy", "wrong_valid"):
            assert got[key] == expected[task][key], (task, key)
        assert got["loss"] == pytest.approx(expected[task]["loss"], rel=1e-4)
        # the same draws from the same generator; a draw within rounding of a boundary between
        # two colours (KV cache against full forward) may flip one quiz at most
        assert abs(got["accuracy_sampled"] - expected[task]["accuracy_sampled"]) <= 1 / n
    assert 0 < result.overall["accuracy_greedy"] < 1  # some quizzes right, some wrong


def test_structure_and_overall_rows_are_the_weighted_means(model, test_set):
    result = evaluate(model, test_set, TASKS, n=N, sampled=False)
    for key in ("accuracy_greedy", "cell_accuracy", "loss"):
        by_task = np.mean([result.tasks[t][key] for t in TASKS])
        by_structure = np.mean([result.structures[s][key] for s in PREDICTED_STRUCTURES])
        assert result.overall[key] == pytest.approx(by_task)
        assert result.overall[key] == pytest.approx(by_structure)
        for t in TASKS:
            cells = [result.by_task_structure[t][s][key] for s in PREDICTED_STRUCTURES]
            assert result.tasks[t][key] == pytest.approx(np.mean(cells))
    assert result.overall["accuracy_sampled"] is None
