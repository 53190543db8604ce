"""The published claims' machinery on hand-built models whose answers are known: a layer-0 head
copying the previous grid (claims 1-3), the same head moved to layer 1 (claims 1-2 fail), a
known (MLP x task) matrix (claim 4), and forced continuations of models that copy the previous
grid or repeat the last token (claim 5)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from constructed import BACKGROUND_BIAS, TOKEN_DIMS, D, copy_model, needs_mlp

from gridlens.analysis.ablation import ablate
from gridlens.analysis.attention import classify_heads
from gridlens.analysis.core import QuizSet, quiz_set
from gridlens.report import claims as c
from gridlens.report import mlp_claims as m
from gridlens.report import sae_claims as s
from gridlens.sae.steering import rule_validity
from tests.sae.sae_feature_helpers import identity_sae


@pytest.fixture(scope="module")
def quizzes():
    """Quizzes whose answer f_B is a copy of B: the copy model below gets them right."""
    return with_answer_b(quiz_set(["frame", "contact"], n_per_task=2, seed=0))


def with_answer_b(quizzes: QuizSet) -> QuizSet:
    tokens = quizzes.tokens.clone()
    tokens[:, 304:404] = tokens[:, 203:303]
    return QuizSet(dataclasses.replace(quizzes.batch, tokens=tokens))


@pytest.fixture(scope="module")
def copier():
    return copy_model(offset=100, layer=0, n_layers=3)


def test_the_construction_copies_the_previous_grid(copier, quizzes):
    logits = copier(quizzes.tokens)
    assert (logits[:, 304:404].argmax(-1) == quizzes.tokens[:, 203:303]).all()


def test_claim1_l0_attention_outsized(copier, quizzes):
    claim = c.l0_attention_outsized(ablate(copier, quizzes, "layers", method="zero"))
    assert claim.verdict == "reproduced"
    e = claim.evidence
    assert e["next_layer"] in ("L1.attn", "L2.attn") and e["next_loss_increase"] == 0
    assert e["l0_loss_ratio"] > 10
    later = copy_model(offset=100, layer=1, n_layers=3)  # the copy head in layer 1 instead
    claim = c.l0_attention_outsized(ablate(later, quizzes, "layers", method="zero"))
    assert claim.verdict == "not reproduced" and "L1.attn" in claim.reason
    one = copy_model(offset=100, layer=0, n_layers=1)
    claim = c.l0_attention_outsized(ablate(one, quizzes, "layers", method="zero"))
    assert claim.verdict == "not applicable" and "one attention layer" in claim.reason


def test_claim2_previous_token_head(copier, quizzes):
    claim = c.l0_previous_token_head(classify_heads(copier, quizzes))
    assert claim.verdict == "reproduced"
    assert claim.evidence["head"] == "L0H0"
    assert claim.evidence["category"] == "prev_grid_same_cell"
    assert claim.evidence["attention_share"] > 0.95
    above = copy_model(offset=10, layer=0, n_layers=2)  # the cell above: not a previous token
    claim = c.l0_previous_token_head(classify_heads(above, quizzes))
    assert claim.verdict == "not reproduced" and claim.evidence["attention_share"] < 0.25


def test_claim3_direct_path_ablates_everything_else(copier, quizzes):
    claim = c.l0_direct_path_copies(copier, quizzes)
    assert claim.verdict == "reproduced"
    assert claim.evidence["copies_previous_grid"] == 1.0
    tokens = quizzes.tokens
    background = (tokens[:, 203:303] == 0).float().mean().item()
    assert claim.evidence["background_baseline"] == pytest.approx(background)
    # a later MLP that would swamp every logit with colour 5 must be ablated by the claim
    with torch.no_grad():
        mlp = copier.blocks[2].mlp
        mlp.fc_out.bias.copy_(100.0 * copier.unembed.weight[5])
    try:
        assert (copier(tokens)[:, 304:404].argmax(-1) == 5).all()
        assert c.l0_direct_path_copies(copier, quizzes).evidence["copies_previous_grid"] == 1.0
    finally:
        with torch.no_grad():
            mlp.fc_out.bias.zero_()


def test_claim4_picks_the_most_task_specific_pair():
    matrix = np.array(
        [
            [1.0, 0.9, 0.8],  # hurts everything: not specific
            [0.05, 0.6, 0.1],  # hurts task 1 six times more than the next
            [0.001, 0.0, 0.0],  # specific but negligible: below the floor
        ]
    )
    layer, task, ratio, nxt = m.most_specific(matrix)
    assert (layer, task, nxt) == (1, 1, 2) and ratio == pytest.approx(6.0)
    assert c.grade(ratio, *c.SPECIFIC) == "reproduced"


def _study(model, quizzes, ablated_rest, first: int = 20):
    """A study of the given quizzes, which the copy-previous-grid model gets right; the
    'ablated' answer departs at cell `first` with colour 7 or 8 and continues with
    `ablated_rest` (None: the truth) after it."""
    tokens = quizzes.tokens
    ablated = tokens.clone()
    ablated[:, 304 + first] = torch.where(tokens[:, 304 + first] == 7, 8, 7)
    if ablated_rest is not None:
        ablated[:, 305 + first :] = ablated_rest
    first_wrong = torch.full((len(tokens),), first)
    return m.MlpStudy(1, "frame", quizzes, tokens, ablated, first_wrong)


def test_claim5_forced_continuation(quizzes):
    copier = copy_model(offset=100, layer=0, n_layers=2)
    # the copier goes back to the previous grid after the forced cell: the truth, here
    claim = m.transform_cell_decides(copier, _study(copier, quizzes, ablated_rest=3))
    assert claim.evidence["back_to_truth"] == 1.0 and claim.evidence["follows_ablated"] == 0.0
    assert claim.verdict == "not reproduced"
    # a model repeating the token before the predicted one repeats the forced colour: when the
    # ablated answer does the same, the forced cell decides the rest
    repeater = copy_model(offset=0, layer=0, n_layers=2)
    found = _study(repeater, quizzes, ablated_rest=None)
    found.ablated[:, 305 + 20 :] = found.ablated[:, 304 + 20 : 305 + 20]
    claim = m.transform_cell_decides(repeater, found)
    assert claim.evidence["follows_ablated"] == 1.0 and claim.verdict == "reproduced"
    assert claim.evidence["broken_quizzes"] == len(quizzes)


def test_claims_say_not_applicable_without_broken_quizzes(quizzes):
    copier = copy_model(offset=100, layer=0, n_layers=2)
    found = m.study(copier, 1, quizzes)  # its MLPs write zero: nothing breaks
    assert not found.broken.any()
    claim = m.transform_cell_decides(copier, found)
    assert claim.verdict == "not applicable" and claim.to_json()["reason"]


# ---------------------------------------------------------------- claims 6 and 7: the SAE


@pytest.fixture(scope="module")
def mlp_case(quizzes):
    """The copy model whose MLP 1 writes the background logit back (see needs_mlp), an exact
    SAE on that MLP, and the study: zeroing the MLP breaks every quiz (all have background)."""
    model = needs_mlp(copy_model(offset=100, layer=0, n_layers=2), layer=1)
    sae = identity_sae(D, "blocks.1.hook_mlp_out")
    return model, sae, m.study(model, 1, quizzes)


def test_the_mlp_case_is_broken_by_the_ablation(mlp_case, quizzes):
    found = mlp_case[2]
    assert found.broken.all()
    assert (found.clean == quizzes.tokens).all()
    first_background = (quizzes.tokens[:, 304:404] == 0).float().argmax(1)
    assert (found.first_wrong == first_background).all()


def test_claim6_the_one_latent_carrying_the_mlp_recovers_it(mlp_case):
    model, sae, found = mlp_case
    latents, counts = s.latents_at_cell(model, sae, found)
    bias_latent = int(TOKEN_DIMS[0])  # relu(x) on the only non-zero dimension
    assert counts == [[bias_latent, len(found.quizzes)]]
    assert latents[:, bias_latent] == pytest.approx(BACKGROUND_BIAS / 4)
    multiplier = s.learned_multiplier(model, sae, found)
    assert int(multiplier.argmax()) == bias_latent and multiplier[bias_latent] > 0.1
    assert (multiplier.abs() > 0).sum() == 1  # latents that never fire get no gradient
    claim, top, _ = s.sparse_feature_recovers(model, sae, found)
    assert top == [bias_latent]
    shares = claim.evidence["right_share"]
    assert shares["no latent"] == 0.0 and shares["top 1"] == 1.0 and shares["all latents"] == 1.0
    assert shares["top 1 x5"] == 0.0  # five times the background logit: coloured cells lost
    assert claim.verdict == "reproduced"


def test_claim7_switching_the_latent_on_elsewhere(mlp_case, quizzes):
    model, sae, found = mlp_case
    _, top, latents = s.sparse_feature_recovers(model, sae, found)
    claim = s.feature_induces_behaviour(model, sae, found, top, latents, quizzes)
    e = claim.evidence
    assert e["added_values"] == pytest.approx([BACKGROUND_BIAS / 4])
    assert e["right_answers"]["0.0"] == 1.0  # scale 0 is the clean model
    assert e["right_answers"]["5.0"] == 0.0  # +5 x the latent: all background, as constructed
    with torch.no_grad():
        clean = model.complete(quizzes.tokens)
    expected = rule_validity(clean, ["frame"])["frame"].mean()
    assert e["follow_task_rule"]["0.0"] == pytest.approx(expected)
    assert claim.verdict in c.VERDICTS and e["lift"] == pytest.approx(
        max(e["follow_task_rule"]["1.0"], e["follow_task_rule"]["5.0"]) - expected
    )
    assert s.feature_induces_behaviour(model, sae, found, [], None, quizzes).verdict == (
        "not applicable"
    )


def test_wilson_interval_matches_known_values():
    assert c.wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert c.wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert c.wilson(0, 0) == (0.0, 1.0)


def test_answers_with_a_marker_in_the_grid_follow_no_rule():
    real = quiz_set(["frame", "contact"], n_per_task=2, seed=4)
    outs = real.tokens.clone()
    outs[0, 350] = 14  # a marker token inside the predicted grid
    valid = m.follows_rules(outs, ["frame", "contact"])
    expected = rule_validity(outs[1:], ["frame", "contact"])
    for task in ("frame", "contact"):
        assert not valid[task][0]
        np.testing.assert_array_equal(valid[task][1:], expected[task])
    assert valid["frame"][1] and valid["contact"][2:].all()  # true answers follow their rule


def test_claim4_on_a_model_whose_one_mlp_matters(mlp_case, quizzes):
    model, _, found = mlp_case
    zero = ablate(model, quizzes, "layers", method="zero")
    mlps, tasks, matrix = m.mlp_task_matrix(zero)
    assert matrix[0].max() == 0 and matrix[1].min() > 1  # L0.mlp writes nothing
    i, j, ratio, nxt = m.most_specific(matrix)
    assert mlps[i] == "L1.mlp" and ratio == pytest.approx(matrix[1, j] / matrix[1, nxt])
    claim = m.task_specific_mlp(zero, found, ratio, tasks[nxt])
    e = claim.evidence
    assert (e["greedy_clean"], e["greedy_ablated"]) == (1.0, 0.0)
    assert e["broken_quizzes"] == len(quizzes)
    assert claim.verdict == c.grade(ratio, *c.SPECIFIC)  # both tasks break alike: not specific
    assert claim.verdict != "reproduced"


def test_one_task_picks_the_layer_that_hurts_it_most():
    layer, task, ratio, _ = m.most_specific(np.array([[0.1], [0.5], [0.2]]))
    assert (layer, task) == (1, 0) and np.isnan(ratio)
