"""Interventions on graph features agree with the graph: exactly for direct effects with the
features frozen, and to first order with every feature re-encoded."""

from __future__ import annotations

import numpy as np
import pytest
from graph_helpers import exact_transcoders, one_quiz, random_transcoders, tiny_model

from gridlens.graphs.attribution import attribute
from gridlens.graphs.interventions import agreement, check_interventions, unit_effects
from gridlens.graphs.replacement import build_replacement

POSITION = 150


@pytest.fixture(scope="module")
def exact_case():
    model = tiny_model(seed=2, sparse_bias=-0.6)
    rm = build_replacement(model, exact_transcoders(model), one_quiz(seed=7))
    return rm, attribute(rm, POSITION, max_features=10_000)


def test_frozen_features_change_the_logit_by_the_direct_edge(exact_case):
    rm, graph = exact_case
    base = float(rm.forward()[POSITION, graph.token])
    for i in np.argsort(-np.abs(graph.adjacency[-1, : graph.n_features]))[:5]:
        layer, pos, feat = graph.features[i].tolist()
        logits = rm.forward(set_features={(layer, pos, feat): 0.0})
        measured = float(logits[POSITION, graph.token]) - base
        assert measured == pytest.approx(-graph.adjacency[-1, i], abs=1e-9)


def test_small_changes_follow_every_path_of_the_graph(exact_case):
    """With every feature in the graph and relu features re-encoded, a small change moves the
    logit by the graph's total (all-path) effect: nothing else is nonlinear."""
    rm, graph = exact_case
    check = check_interventions(rm, graph, n=8, factor=0.999)
    for record in check["features"]:
        assert record["measured"] == pytest.approx(record["predicted"], rel=1e-3, abs=1e-9)
    assert check["pearson_r"] > 0.999
    direct = graph.adjacency[-1, : graph.n_features] / graph.activations
    assert not np.allclose(unit_effects(graph), direct)  # indirect paths matter here


def test_ablations_of_an_imperfect_replacement_are_reported():
    model = tiny_model(seed=1)
    rm = build_replacement(model, random_transcoders(seed=3, arch="jumprelu"), one_quiz(seed=5))
    graph = attribute(rm, POSITION, max_features=30)
    check = check_interventions(rm, graph, n=6)
    assert len(check["features"]) == 6
    assert -1 <= check["pearson_r"] <= 1 and 0 <= check["sign_agreement"] <= 1
    assert agreement([{"predicted": 1.0, "measured": -2.0}])["sign_agreement"] == 0
