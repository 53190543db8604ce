"""Activation collection and the streaming store, checked against hand-made positions and the
model's own cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gridlens.errors import ConfigError, UnknownNameError
from gridlens.models.checkpoints import load
from gridlens.sae.activations import (
    _STORE_TAG,
    ActivationError,
    ActivationStore,
    collect,
    position_mask,
)
from gridlens.world import generate


@pytest.fixture(scope="module")
def model():
    return load("default")


def test_position_masks_by_hand():
    assert position_mask("all").sum() == 404
    grid = position_mask("grid")
    assert grid.nonzero().flatten().tolist() == list(range(304, 404))
    no_markers = position_mask("no_markers")
    # tokens 0, 101, 202, 303 are the grid markers (position 0 is also where BOS is read)
    assert (~no_markers).nonzero().flatten().tolist() == [0, 101, 202, 303]
    small = position_mask("grid", length=4 * (1 + 9))  # 3x3 grids
    assert small.nonzero().flatten().tolist() == list(range(31, 40))


def test_position_mask_errors():
    with pytest.raises(UnknownNameError, match="did you mean 'grid'"):
        position_mask("gird")
    with pytest.raises(ConfigError):
        position_mask("grid", length=403)


def test_collect_equals_run_with_cache(model):
    tokens = generate("default", 5, seed=3, structure="mix").tokens
    site = "blocks.2.hook_resid_post"
    _, cache = model.run_with_cache(tokens, names=site)
    full = cache[site]
    acts, quiz, pos = collect(model, tokens, site, "no_markers", batch_size=2, with_index=True)
    assert acts.shape == (5 * 400, 128)
    torch.testing.assert_close(acts, full[quiz, pos], rtol=1e-5, atol=1e-5)
    grid = collect(model, tokens, site, "grid", batch_size=3)
    torch.testing.assert_close(grid, full[:, 304:].reshape(-1, 128), rtol=1e-5, atol=1e-5)
    heads = collect(model, tokens[:2], "blocks.0.attn.hook_z", "all")
    assert heads.shape == (2 * 404, 4 * 32)  # per-head sites are flattened over heads


def test_collect_errors(model):
    tokens = generate("default", 2, seed=0).tokens
    with pytest.raises(UnknownNameError, match="did you mean"):
        collect(model, tokens, "blocks.3.hook_mlp_outt")
    with pytest.raises(ConfigError, match="pattern"):
        collect(model, tokens, "blocks.0.attn.hook_pattern")
    broken = load("default")
    with torch.no_grad():
        broken.blocks[1].mlp.fc_out.bias[0] = float("nan")
    with pytest.raises(ActivationError, match="NaN"):
        collect(broken, tokens, "blocks.1.hook_mlp_out")


def _rows(store: ActivationStore, batches: int):
    acts, quiz, pos, task = zip(*(next(store) for _ in range(batches)), strict=True)
    return torch.cat(acts), torch.cat(quiz), torch.cat(pos), torch.cat(task)


def test_store_yields_each_row_once_and_matches_collect(model):
    site = "blocks.1.hook_mlp_out"
    store = ActivationStore(
        model, site, positions="grid", batch_size=150, buffer_quizzes=6, seed=5, with_index=True
    )
    # 2 fills: 6 quizzes, then +3 after the first 150 rows... 7 batches = 1050 rows
    acts, quiz, pos, task = _rows(store, 7)
    keys = quiz * 1000 + pos
    assert len(keys.unique()) == len(keys)  # no row twice
    generated = store.quizzes_generated
    assert quiz.max() < generated and set(pos.tolist()) <= set(range(304, 404))
    # what was yielded plus what is still buffered is every row of every generated quiz
    left = store.state_dict()["index"]
    all_keys = torch.cat([keys, left[:, 0] * 1000 + left[:, 1]])
    assert sorted(all_keys.tolist()) == sorted(
        q * 1000 + p for q in range(generated) for p in range(304, 404)
    )
    # the rows are the model's activations for those quizzes (regenerated independently)
    n = store.buffer_quizzes // 2
    batch = generate(
        store.tasks,
        n,
        seed=np.random.default_rng(np.random.SeedSequence([_STORE_TAG, 5, 0])),
        structure="mix",
    )
    first = quiz < n
    expected = collect(model, batch.tokens, site, "grid")
    torch.testing.assert_close(acts[first], expected[quiz[first] * 100 + pos[first] - 304])
    tasks = [store.tasks.index(t) for t in batch.task.tolist()]
    assert task[first].tolist() == [tasks[q] for q in quiz[first].tolist()]


def test_store_is_deterministic_and_resumable(model):
    def make(seed):
        return ActivationStore(
            model, "blocks.0.hook_resid_post", batch_size=100, buffer_quizzes=4, seed=seed
        )

    a, b, c = make(1), make(1), make(2)
    first = [next(a) for _ in range(3)]
    for x in first:
        torch.testing.assert_close(next(b), x, rtol=0, atol=0)
    assert not torch.equal(next(c), first[0])
    state = a.state_dict()
    resumed = make(1)
    resumed.load_state_dict(state)
    for _ in range(4):
        assert torch.equal(next(resumed), next(a))


def test_store_rejects_tiny_buffer(model):
    with pytest.raises(ConfigError, match="buffer_quizzes"):
        ActivationStore(model, "blocks.0.hook_mlp_out", batch_size=4096, buffer_quizzes=8)
