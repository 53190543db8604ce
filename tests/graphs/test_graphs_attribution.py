"""The replacement model and attribution graphs against independent computations: the real
model's float64 forward, and direct effects measured through the real model's hooks."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from graph_helpers import exact_transcoders, one_quiz, random_transcoders, tiny_model

from gridlens.errors import ConfigError
from gridlens.graphs.attribution import attribute, graph_scores, prune, rows_check
from gridlens.graphs.replacement import build_replacement

POSITION = 404 - 45  # a cell of the predicted grid
EARLY = 140  # a cell of the second grid: a full graph there is cheaper


@pytest.fixture(scope="module")
def exact_case():
    """An exactly sparse MLP and transcoders equal to it."""
    model = tiny_model(seed=2, sparse_bias=-0.6)
    tokens = one_quiz(seed=7)
    rm = build_replacement(model, exact_transcoders(model), tokens)
    return model, tokens, rm, attribute(rm, EARLY, max_features=10_000)


@pytest.fixture(scope="module")
def random_case():
    model = tiny_model(seed=1)
    tcs = random_transcoders(seed=3)
    tokens = one_quiz(seed=5)
    rm = build_replacement(model, tcs, tokens)
    return model, tcs, tokens, rm


def test_replacement_reproduces_the_clean_logits(random_case):
    model, _, tokens, rm = random_case
    m = copy.deepcopy(model).double()
    want = m(tokens[None])[0]
    assert torch.allclose(rm.forward(), want, atol=1e-10, rtol=0)
    assert torch.allclose(rm.forward(recompute=True), want, atol=1e-10, rtol=0)
    assert rm.errors.abs().max() > 0.1  # untrained transcoders: the errors carry the rest


def test_rows_sum_exactly_to_preactivations_and_logit(random_case):
    model, tcs, tokens, rm = random_case
    graph = attribute(rm, EARLY, max_features=10_000)
    assert np.all(graph.unselected == 0)  # every active feature is in the graph
    assert rows_check(graph) < 1e-9
    # the values themselves against the real model's float64 run
    m = copy.deepcopy(model).double()
    names = [f"blocks.{lay}.ln2.hook_normalized" for lay in range(2)]
    logits, cache = m.run_with_cache(tokens[None], names=names)
    want = float(logits[0, EARLY, tokens[EARLY]].detach())
    assert graph.value[-1] == pytest.approx(want, abs=1e-10)
    for i, (layer, pos, feat) in enumerate(graph.features.tolist()):
        tc = tcs[layer].double()
        pre = tc.pre_activation(cache[names[layer]][0, pos])[feat]
        assert graph.value[i] == pytest.approx(float(pre.detach()), abs=1e-9)
        tcs[layer].float()


def test_a_limited_graph_keeps_the_rest_in_unselected(random_case):
    _, _, _, rm = random_case
    graph = attribute(rm, POSITION, max_features=12, batch=5)
    assert graph.n_features == 12
    assert rows_check(graph) < 1e-9
    assert np.abs(graph.unselected).max() > 0


def test_edges_equal_direct_effects_measured_in_the_model(exact_case):
    """The edge from a feature to the logit is the logit change when that feature's decoder
    output is removed from the model's MLP output, with patterns, LayerNorm scales and later
    MLP outputs frozen through hooks."""
    model, tokens, rm, graph = exact_case
    m = copy.deepcopy(model).double()
    assert rm.errors.abs().max() < 1e-6  # float32 weights folded into the encoder
    density = float((rm.activations > 0).double().mean())
    assert 0 < density < 0.3
    sites = ["ln1.hook_scale", "ln2.hook_scale", "attn.hook_pattern", "hook_mlp_out"]
    names = [f"blocks.{lay}.{s}" for lay in range(2) for s in sites]
    _, clean = m.run_with_cache(tokens[None], names=names)
    target = lambda logits: float(logits[0, EARLY, tokens[EARLY]])  # noqa: E731
    strongest = np.argsort(-np.abs(graph.adjacency[-1, : graph.n_features]))[:6]
    for i in strongest:
        layer, pos, feat = graph.features[i].tolist()
        removed = float(rm.activations[layer, pos, feat]) * rm.transcoders[layer].W_dec[feat]

        def frozen(x, hook, layer=layer, pos=pos, removed=removed):
            out = clean[hook.name].clone()
            if hook.name == f"blocks.{layer}.hook_mlp_out":
                out[0, pos] -= removed
            return out

        with torch.no_grad():
            changed = target(m.run_with_hooks(tokens[None], [(n, frozen) for n in names]))
            base = target(m.run_with_hooks(tokens[None], [(n, lambda x, h: clean[h.name])
                                                          for n in names]))  # fmt: skip
        assert graph.adjacency[-1, i] == pytest.approx(base - changed, abs=1e-9)


def test_scores_and_pruning(random_case):
    _, _, _, rm = random_case
    graph = attribute(rm, POSITION, max_features=40)
    scores = graph_scores(graph)
    assert 0 < scores["replacement"] < 1 and 0 < scores["completeness"] < 1
    nodes, edges = prune(graph, 0.5, 0.9)
    assert nodes[graph.target_index] and nodes[graph.token_index(0)]
    assert nodes[: graph.n_features].sum() < graph.n_features
    kept = np.flatnonzero(nodes[: graph.n_features])
    assert all(edges[:, k].any() and edges[k].any() for k in kept)
    assert not edges[~nodes].any() and not edges[:, ~nodes].any()
    with pytest.raises(ConfigError):
        prune(graph, 1.5)


def test_exact_transcoders_score_one(exact_case):
    graph = copy.deepcopy(exact_case[3])
    errors = slice(graph.n_features, graph.token_index(0))
    graph.adjacency[:, errors] = 0  # the float32 rounding left in the errors
    scores = graph_scores(graph)
    assert scores["replacement"] == pytest.approx(1.0)
    assert scores["completeness"] == pytest.approx(1.0)
