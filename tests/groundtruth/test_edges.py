"""True edge sets from the correspondence, ROC helpers, and edge methods on a shipped model."""

import numpy as np
import pytest
import torch

from gridlens.groundtruth.edges import (
    METHODS,
    ranking_roc,
    reads_tokens,
    score_edges,
    sweep_auc,
    true_pairs,
    unscored_node,
)
from gridlens.groundtruth.iit import load_run
from gridlens.groundtruth.scoring import roc_auc
from gridlens.groundtruth.shipped import resolve_run
from gridlens.groundtruth.spec import get_benchmark


def test_reads_tokens_is_found_by_holding_the_parents():
    bench = get_benchmark("duplicate_remover")
    assert reads_tokens(bench, "duplicate_remover.prev")
    assert reads_tokens(bench, "duplicate_remover.out")  # the token passes through unless dup
    paren = get_benchmark("parenthesis")
    assert reads_tokens(paren, "parenthesis.elevation")
    assert not reads_tokens(paren, "parenthesis.below")
    assert not reads_tokens(paren, "parenthesis.balanced")


def test_true_edges_of_parenthesis_follow_its_high_level_graph():
    # elevation (L0H0) -> below (MLP0) -> dipped (L1H0) -> balanced (MLP1, also reads elevation)
    assert true_pairs(get_benchmark("parenthesis")) == {
        ("input", "L0H0"),
        ("L0H0", "MLP0"),
        ("MLP0", "L1H0"),
        ("L0H0", "MLP1"),
        ("L1H0", "MLP1"),
        ("MLP1", "logits"),
    }


def test_multi_task_truth_adds_the_task_head_which_one_task_pairs_cannot_see():
    bench = get_benchmark("all4")
    head = unscored_node(bench, 1)
    pairs = true_pairs(bench, 1)  # left_greater: elevation L0H1 -> greater MLP0 -> logits
    assert {("input", head), (head, "logits")} <= pairs
    assert pairs - {("input", head), (head, "logits")} == {
        ("input", "L0H1"),
        ("L0H1", "MLP0"),
        ("MLP0", "logits"),
    }
    assert unscored_node(bench, None) is None
    assert unscored_node(get_benchmark("parenthesis"), 0) is None


def test_roc_of_a_ranking_integrates_to_the_mann_whitney_auc():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, 40).astype(float)  # many ties
    truth = rng.random(40) < 0.3
    xy = np.asarray(ranking_roc(scores, truth))
    assert np.trapezoid(xy[:, 1], xy[:, 0]) == pytest.approx(roc_auc(scores, truth))


def test_sweep_auc_through_the_kept_sets():
    truth = np.array([True, True, False, False])
    perfect = [np.array([True, True, False, False]), np.array([True, False, False, False])]
    assert sweep_auc(perfect, truth)[0] == 1.0
    # one set: everything but a true edge -> (FPR 1, TPR 0.5): the curve (0,0)-(1,0.5)-(1,1)
    assert sweep_auc([np.array([False, True, True, True])], truth)[0] == pytest.approx(0.25)


def test_every_method_finds_the_shipped_left_greater_circuit():
    model, bench, _ = load_run(resolve_run("left_greater")[0])
    tokens, _ = bench.generate(48, np.random.default_rng(0))
    torch.manual_seed(0)
    r = score_edges(model, bench, tokens, n_thresholds=4, examples=48, acdc_examples=24)
    assert set(r["methods"]) == set(METHODS)
    for name, m in r["methods"].items():
        assert m["auc"] >= 0.95, name
        kf = np.asarray(m["faithfulness"])
        assert kf[:, 1].max() == pytest.approx(1.0, abs=0.02), name  # big circuits keep it all
    assert r["true_pairs"] == ["L0H0->MLP0", "MLP0->logits", "input->L0H0"]
