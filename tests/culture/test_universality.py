"""Universality measures against known answers: numpy's correlations, a model against itself,
and against a copy whose MLP neurons are permuted (the same function, units relabelled)."""

import numpy as np
import pytest
import torch

from gridlens.analysis.universality import (
    Matching,
    correlations,
    neuron_universality,
    pairwise,
    site_activations,
)
from gridlens.models import GridGPT
from gridlens.world import generate


@pytest.fixture(scope="module")
def tokens():
    return generate("frame,replace_color", 6, seed=1).tokens


def test_correlations_match_numpy_and_flag_dead_units():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 5))
    b = np.column_stack([a[:, 0] * 2 + 1, rng.normal(size=200), np.zeros(200)])
    corr, alive_a, alive_b = correlations(torch.tensor(a), torch.tensor(b))
    want = np.corrcoef(a.T, b[:, :2].T)[:5, 5:]
    assert corr[:, :2].numpy() == pytest.approx(want, abs=1e-5)
    assert alive_a.all() and alive_b.tolist() == [True, True, False]
    assert (corr[:, 2] == 0).all()
    assert corr[0, 0].item() == pytest.approx(1.0, abs=1e-6)


def permuted_copy(model: GridGPT, layer: int, perm: torch.Tensor) -> GridGPT:
    """The same function with layer `layer`'s MLP neurons relabelled by `perm`."""
    copy = GridGPT(model.cfg, seed=0)
    copy.load_state_dict(model.state_dict())
    mlp = copy.blocks[layer].mlp
    with torch.no_grad():
        mlp.fc_in.weight.copy_(mlp.fc_in.weight[perm])
        mlp.fc_in.bias.copy_(mlp.fc_in.bias[perm])
        mlp.fc_out.weight.copy_(mlp.fc_out.weight[:, perm])
    return copy.eval()


def test_a_permuted_copy_is_fully_shared_and_the_matching_recovers_the_permutation(tokens):
    model = GridGPT("tiny", seed=3).eval()
    perm = torch.randperm(model.cfg.d_mlp, generator=torch.Generator().manual_seed(0))
    copy = permuted_copy(model, 1, perm)
    assert torch.allclose(model(tokens), copy(tokens), atol=1e-5)  # same function
    site = "blocks.1.mlp.hook_post"
    result = neuron_universality(model, copy, tokens, site)
    assert result.trained.max_match == pytest.approx(1.0, abs=1e-4)
    assert result.trained.shared(0.99) == 1.0
    alive = site_activations(model, tokens, site).std(0) > 0
    for a, b in result.trained.pairs:
        if alive[a]:
            assert perm[b] == a  # copy's neuron b is model's neuron perm[b]
    # an untrained model shares far less
    assert result.baseline.max_match.mean() < 0.9
    data = result.to_json()
    assert data["trained"]["shared"]["0.9"] == 1.0


def test_pairwise_matrix_is_one_on_the_diagonal(tokens):
    models = [GridGPT("tiny", seed=s).eval() for s in (0, 1)]

    def measure(a, b):
        return neuron_universality(a, b, tokens[:2], "blocks.0.mlp.hook_post")

    matrix = pairwise(models, measure)
    assert matrix.shape == (2, 2) and np.allclose(np.diag(matrix), 1.0)
    assert 0 < matrix[0, 1] < 1


def test_matching_of_an_identity_matrix_pairs_each_unit_with_itself():
    corr = torch.eye(4)
    m = Matching.of(corr, torch.ones(4, dtype=torch.bool))
    assert sorted(m.pairs) == [(i, i) for i in range(4)]
    assert m.matched.tolist() == [1.0] * 4
