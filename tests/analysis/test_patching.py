"""Pairs and activation patching: pairs are valid quizzes differing only where they should; the
batched sweep equals plain hook-based patching; patching a whole residual stream restores the
clean run exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gridlens.analysis.core import quiz_set
from gridlens.analysis.pairs import PairError, PairSet, as_tokens, make_pairs
from gridlens.analysis.patching import (
    activation_patching,
    expand_components,
    normalised_scores,
    patched_logprob,
    resid_names,
)
from gridlens.errors import GridlensError
from gridlens.models.checkpoints import load
from gridlens.world.tasks import get_task


@pytest.fixture(scope="module")
def model():
    return load("default").eval()


@pytest.fixture(scope="module")
def pairs():
    return make_pairs("parameter", tasks="translate,contact", n_per_task=1, seed=3)


def _grids(quizzes):
    return quizzes.batch.grids.astype(np.int64)


def _valid(quizzes) -> bool:
    grids, tasks = _grids(quizzes), quizzes.batch.task
    return all(get_task(t).check(grids[tasks == t]).all() for t in set(tasks.tolist()))


@pytest.mark.parametrize("kind", ["parameter", "colour", "task"])
def test_pairs_are_valid_matched_quizzes(kind):
    p = make_pairs(kind, n_per_task=3, seed=1)
    assert p.clean.tokens.shape == p.corrupted.tokens.shape
    assert p.clean.tokens.shape[1] == 404
    assert _valid(p.clean) and _valid(p.corrupted)
    # the answer always changes; tokens agree with the grids
    c, x = _grids(p.clean), _grids(p.corrupted)
    assert (c[:, 3] != x[:, 3]).any(axis=(1, 2)).all()
    assert torch.equal(
        p.corrupted.tokens.view(-1, 4, 101)[:, :, 1:].reshape(-1, 4, 10, 10), torch.from_numpy(x)
    )
    counts = {t: int((p.tasks == t).sum()) for t in set(p.tasks.tolist())}
    assert set(counts.values()) == {3}
    if kind == "parameter":
        assert "corners" in p.skipped and "corners" not in counts
        same_inputs = p.tasks != "grow"
        assert (c[same_inputs][:, 0::2] == x[same_inputs][:, 0::2]).all()
        assert (p.corrupted.batch.task == p.clean.batch.task).all()
        # grow: X and f(X) exchanged (shrink <-> grow)
        g = p.tasks == "grow"
        assert (x[g] == c[g][:, [1, 0, 3, 2]]).all()
    elif kind == "colour":
        for a, b in zip(c, x, strict=True):  # one consistent colour bijection, two colours moved
            mapping = {}
            for u, v in zip(a.ravel(), b.ravel(), strict=True):
                assert mapping.setdefault(u, v) == v
            assert len(set(mapping.values())) == len(mapping)
            assert sum(u != v for u, v in mapping.items()) == 2
    else:
        assert (p.corrupted.batch.task != p.clean.batch.task).all()
        solid = ~np.isin(p.tasks, ["half_fill", "corners"])
        assert (c[solid][:, 0::2] == x[solid][:, 0::2]).all()


def test_parameter_pairs_change_the_parameter():
    p = make_pairs("parameter", tasks="translate,half_fill,replace_color", n_per_task=4, seed=0)
    for t, key in (("translate", "direction"), ("half_fill", "direction")):
        _, pc = p.clean.batch.params[t]
        _, px = p.corrupted.batch.params[t]
        assert (pc[key] != px[key]).all()
    _, pc = p.clean.batch.params["replace_color"]
    _, px = p.corrupted.batch.params["replace_color"]
    assert (pc["colors"][:, 3] != px["colors"][:, 3]).all()
    assert (pc["colors"][:, :3] == px["colors"][:, :3]).all()


def test_pairs_are_deterministic_and_validated():
    a = make_pairs("colour", tasks="frame,contact", n_per_task=2, seed=5)
    b = make_pairs("colour", tasks="frame,contact", n_per_task=2, seed=5)
    assert torch.equal(a.corrupted.tokens, b.corrupted.tokens)
    with pytest.raises(GridlensError, match="pair kind"):
        make_pairs("colours")
    with pytest.raises(PairError, match="corners"):
        make_pairs("parameter", tasks="corners")
    with pytest.raises(GridlensError, match="n_per_task"):
        make_pairs("task", n_per_task=0)
    q4, q2 = quiz_set("frame", n_per_task=4), quiz_set("frame", n_per_task=2)
    with pytest.raises(PairError, match="shape"):
        PairSet(q4, q2, "colour")
    with pytest.raises(PairError, match="empty"):
        PairSet(q4.subset(np.array([], int)), q4.subset(np.array([], int)), "colour")


def test_corrupted_run_scores_the_clean_answer(pairs):
    clean, corrupted = as_tokens(pairs)
    assert torch.equal(corrupted[:, 304:], clean[:, 304:])
    assert torch.equal(corrupted[:, :304], pairs.corrupted.tokens[:, :304])


def _reference_scores(model, pairs, names):
    """Hook-based patching, one component at a time, normalised independently."""
    m_x = patched_logprob(model, pairs).numpy()
    m_c = patched_logprob(model, PairSet(pairs.clean, pairs.clean, "same")).numpy()
    patched = np.stack([patched_logprob(model, pairs, [n]).numpy() for n in names])
    return normalised_scores(patched, m_c, m_x, pairs.tasks)


def test_sweep_equals_hook_patching(model, pairs):
    names = ["L0.attn", "L3.mlp", "L0H1", "L2H2", "L3H0", "L1N5", "L3N7"]
    names += ["L0.resid[f_A]", "L2.resid[f_A.r4]", "L4.resid[f_B.c3]"]
    got = activation_patching(model, pairs, names, batch_size=16, chunk=3)
    want = _reference_scores(model, pairs, names)
    for task in want:
        np.testing.assert_allclose(got.scores[task], want[task], atol=2e-4)
    assert got.components == names


def test_whole_residual_stream_restores_clean_exactly(model, pairs):
    clean = PairSet(pairs.clean, pairs.clean, "same")
    m_c = patched_logprob(model, clean)
    m_x = patched_logprob(model, pairs)
    assert (m_c - m_x).abs().min() > 0.01
    for layer in (0, 2, model.cfg.n_layers):
        names = [n for n in resid_names(model.cfg, "grid") if n.startswith(f"L{layer}.")]
        m = patched_logprob(model, pairs, names)
        torch.testing.assert_close(m, m_c, atol=1e-4, rtol=1e-5)
        scores = normalised_scores(m.numpy()[None], m_c.numpy(), m_x.numpy(), pairs.tasks)
        np.testing.assert_allclose(scores["all"], [1.0], atol=1e-5)
    # the row blocks tile the grid blocks: all rows of a layer restore the clean run too
    rows = [n for n in resid_names(model.cfg, "row") if n.startswith("L2.")]
    torch.testing.assert_close(patched_logprob(model, pairs, rows), m_c, atol=1e-4, rtol=1e-5)


def test_result_outputs(model, pairs, tmp_path):
    r = activation_patching(model, pairs, "heads")
    assert len(r.components) == model.cfg.n_layers * model.cfg.n_heads
    data = json.loads(json.dumps(r.to_json()))
    assert set(data["scores"]) == set(pairs.tasks.tolist()) | {"all"}
    assert data["method"] == "activation" and data["pair_kind"] == "parameter"
    top = r.top(3)
    assert len(top) == 3 and abs(top[0][1]) >= abs(top[2][1])
    assert 1 <= len(r.findings()) <= 4
    r.plot(tmp_path / "heads.png")
    r.select(["L0H1", "L3.mlp"][:1]).plot(tmp_path / "bars.png")
    for name in ("heads.png", "bars.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    resid = activation_patching(model, pairs, "resid", resid_block="grid")
    resid.plot(tmp_path / "resid.png")
    assert (tmp_path / "resid.png").exists()


def test_component_errors(model, pairs):
    with pytest.raises(GridlensError, match="did you mean"):
        activation_patching(model, pairs, ["L0H9x"])
    with pytest.raises(GridlensError, match="resid"):
        activation_patching(model, pairs, ["L0.resid[C]"])
    with pytest.raises(GridlensError, match="layer 7"):
        expand_components(model.cfg, "L7.resid[A]")
    names = expand_components(model.cfg, "heads,layers")
    assert len(names) == 16 + 8
