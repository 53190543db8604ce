"""Candidate generation, scoring and the keep rule, against independent computations."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gridlens.models import GridGPT
from gridlens.training.culture import candidates as cd
from gridlens.world import generate
from gridlens.world.tokens import MARKER_TOKENS


@pytest.fixture(scope="module")
def quizzes():
    return generate("frame,replace_color", 6, seed=3).tokens  # canonical order


def test_restructure_round_trips_and_matches_the_world_generator(quizzes):
    batch = generate("frame", 4, seed=5, structure="inverse")
    canonical = generate("frame", 4, seed=5).tokens
    assert torch.equal(cd.restructure(canonical, "inverse", 10, 10), batch.tokens)
    for name in ("forward", "inverse", "backward", "backward_inverse", "generation"):
        moved = cd.restructure(quizzes, name, 10, 10)
        assert torch.equal(cd.to_canonical(moved, name, 10, 10), quizzes)


def test_prompt_noise_touches_only_the_third_grid(quizzes):
    rng = np.random.default_rng(0)
    tokens = cd.restructure(quizzes, "forward", 10, 10)
    noisy = cd.add_prompt_noise(tokens, "forward", 0.5, rng, 10, 10)
    changed = (noisy != tokens).reshape(len(tokens), 4, 101)
    assert changed[:, 2].any() and not changed[:, [0, 1, 3]].any()
    assert not changed[:, :, 0].any()  # markers never change
    assert torch.equal(cd.add_prompt_noise(tokens, "backward", 1.0, rng, 10, 10), tokens)


def test_trivial_and_well_formed(quizzes):
    q = quizzes.clone().reshape(len(quizzes), 4, 101)
    q[0, 1, 1:] = q[0, 0, 1:]  # f(A) = A
    q[1, 3, 1:] = q[1, 2, 1:]  # f(B) = B
    q[2, 1, 5] = MARKER_TOKENS["B"]  # a marker inside a grid
    q = q.reshape(len(quizzes), -1)
    assert cd.trivial(q, 10, 10).tolist()[:2] == [True, True]
    assert not cd.trivial(q, 10, 10)[3:].any()
    assert cd.well_formed(q, 10, 10).tolist() == [True, True, False, True, True, True]


def test_answer_logprob_matches_a_cell_by_cell_loop(quizzes):
    model = GridGPT("tiny", seed=0).eval()
    tokens = cd.restructure(quizzes, "inverse", 10, 10)
    got = cd.answer_logprob(model, tokens, 10, 10, batch=4)
    with torch.no_grad():
        for i in range(len(tokens)):
            logp = F.log_softmax(model(tokens[i : i + 1])[0].double(), -1)
            want = sum(float(logp[p, tokens[i, p]]) for p in range(304, 404))
            assert got[i].item() == pytest.approx(want, rel=1e-4)


def test_score_multiplies_both_directions_probabilities(quizzes):
    # a model that ignores its input: P(colour 0) = e^10 / (e^10 + 14) in every cell
    model = GridGPT("tiny", seed=0).eval()
    with torch.no_grad():
        model.unembed.weight.zero_()
        model.unembed.bias.zero_()
        model.unembed.bias[0] = 10.0
    q = quizzes.clone().reshape(len(quizzes), 4, 101)
    q[:2, 2:, 1:] = 0  # B and f(B) blank: 200 cells of colour 0 to predict in both directions
    q = q.reshape(len(quizzes), -1)
    probas = cd.score([model, model], q, 0.05, 3, np.random.default_rng(0), 10, 10)
    cell = np.exp(10) / (np.exp(10) + 14)
    assert probas[:2].numpy() == pytest.approx(np.full((2, 2), cell**200), rel=1e-4)
    assert (probas[2:] < 1e-20).all()  # coloured B / f(B) cells are improbable


def test_validate_keeps_confident_or_failing_with_the_right_number_failing():
    probas = torch.tensor(
        [
            [0.99, 0.98, 0.10],  # one fails, others confident -> keep
            [0.99, 0.70, 0.10],  # a model in between -> drop
            [0.99, 0.10, 0.10],  # two fail -> keep when max_fail = 2
            [0.10, 0.10, 0.10],  # all fail -> drop
            [0.99, 0.99, 0.99],  # nobody fails -> drop
        ]
    )
    verdict = cd.validate(probas, 0.95, 0.5, 1, 2)
    assert verdict.keep.tolist() == [True, False, True, False, False]
    assert cd.validate(probas, 0.95, 0.5, 1, 1).keep.tolist() == [True, False, False, False, False]


def test_generated_candidates_are_canonical_and_the_answer_is_resampled_given_the_rest():
    model = GridGPT("tiny", seed=0).eval()
    generator = torch.Generator().manual_seed(0)
    out = cd.generate_candidates(model, 5, 1.5, 1.0, generator, 10, 10)
    markers = out.reshape(5, 4, 101)[:, :, 0]
    assert (markers == torch.tensor([MARKER_TOKENS[g] for g in ("A", "f_A", "B", "f_B")])).all()
    # with a cold temperature near zero the last step is greedy: each answer cell is the argmax
    # given everything before it (checked by one teacher-forced pass)
    greedy = cd.generate_candidates(model, 3, 1.5, 1e-6, generator, 10, 10)
    logits = model(greedy)
    assert torch.equal(logits[:, 304:404].argmax(-1), greedy[:, 304:404])
