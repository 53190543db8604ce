"""Ablation against hand-written hooks and independently computed replacement values."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gridlens.analysis.ablation import (
    FORWARD_BYTES,
    AblationResult,
    ablate,
    ablation_hooks,
    donor_index,
    rows_that_fit,
)
from gridlens.analysis.core import grid_loss, predicted_cells, quiz_set
from gridlens.errors import GridlensError
from gridlens.models import GridGPT
from gridlens.models.checkpoints import load


@pytest.fixture(scope="module")
def model():
    return load("default")


@pytest.fixture(scope="module")
def quizzes():
    return quiz_set(n_per_task=1, seed=3)


def hooked_metrics(model, tokens, hooks):
    with torch.no_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
    cells = predicted_cells(tokens)
    accuracy = (logits[:, cells].argmax(-1) == tokens[:, cells]).float().mean(1)
    return grid_loss(logits, tokens).numpy(), accuracy.numpy()


def busiest_neuron(model, tokens, layer):
    _, cache = model.run_with_cache(tokens, names=f"blocks.{layer}.mlp.hook_post")
    return int(cache[f"blocks.{layer}.mlp.hook_post"].mean((0, 1)).argmax())


def position_means(model, tokens, site):
    """Per-position mean of a site over the quizzes: [pos, ...]."""
    _, cache = model.run_with_cache(tokens, names=site)
    return cache[site].mean(0)


def test_zero_ablation_equals_hand_written_hooks(model, quizzes):
    tokens = quizzes.tokens
    neuron = busiest_neuron(model, tokens, 2)

    def zero_all(x, hook):
        return torch.zeros_like(x)

    def zero_head(x, hook):
        x = x.clone()
        x[:, :, 2] = 0
        return x

    def zero_neuron(x, hook):
        x = x.clone()
        x[..., neuron] = 0
        return x

    cases = {
        "L0.attn": [("blocks.0.hook_attn_out", zero_all)],
        "L1H2": [("blocks.1.attn.hook_z", zero_head)],
        "L2.mlp": [("blocks.2.hook_mlp_out", zero_all)],
        f"L2N{neuron}": [("blocks.2.mlp.hook_post", zero_neuron)],
    }
    result = ablate(model, quizzes, list(cases), method="zero")
    for i, hooks in enumerate(cases.values()):
        loss, accuracy = hooked_metrics(model, tokens, hooks)
        np.testing.assert_allclose(result.loss[i], loss, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(result.cell_accuracy[i], accuracy, atol=1e-6)
        assert not np.allclose(result.loss[i], result.clean_loss)  # the ablation did something
    clean, _ = hooked_metrics(model, tokens, [])
    np.testing.assert_allclose(result.clean_loss, clean, rtol=1e-5)


def test_mean_ablation_uses_the_per_position_mean(model, quizzes):
    tokens = quizzes.tokens
    z_mean = position_means(model, tokens, "blocks.1.attn.hook_z")
    neuron = busiest_neuron(model, tokens, 0)
    post_mean = position_means(model, tokens, "blocks.0.mlp.hook_post")

    def whole_site(x, hook):
        return z_mean.expand_as(x).clone()

    def one_neuron(x, hook):
        x = x.clone()
        x[..., neuron] = post_mean[:, neuron]
        return x

    heads = [f"L1H{h}" for h in range(model.cfg.n_heads)]  # every part of the site at once
    with torch.no_grad():
        together = model.run_with_hooks(tokens, ablation_hooks(model, quizzes, heads, "mean"))
        expected = model.run_with_hooks(tokens, [("blocks.1.attn.hook_z", whole_site)])
    torch.testing.assert_close(together, expected, rtol=1e-4, atol=1e-4)
    result = ablate(model, quizzes, [f"L0N{neuron}"], method="mean")
    loss, _ = hooked_metrics(model, tokens, [("blocks.0.mlp.hook_post", one_neuron)])
    np.testing.assert_allclose(result.loss[0], loss, rtol=1e-4, atol=1e-6)


def test_resample_takes_the_donor_quiz_activation(model, quizzes):
    tokens = quizzes.tokens
    donors = donor_index(len(tokens), seed=5)
    site = "blocks.2.hook_attn_out"
    donor_acts = torch.stack(
        [model.run_with_cache(tokens[d][None], names=site)[1][site][0] for d in donors]
    )
    result = ablate(model, quizzes, ["L2.attn"], method="resample", seed=5)
    loss, _ = hooked_metrics(model, tokens, [(site, lambda x, hook: donor_acts)])
    np.testing.assert_allclose(result.loss[0], loss, rtol=1e-4, atol=1e-6)


def test_donor_index_is_another_quiz_and_seeded():
    donors = donor_index(50, seed=1)
    assert (donors != np.arange(50)).all() and donors.min() >= 0 and donors.max() < 50
    np.testing.assert_array_equal(donors, donor_index(50, seed=1))
    assert not np.array_equal(donors, donor_index(50, seed=2))
    assert donor_index(1, seed=0).tolist() == [0]


def test_resample_with_one_quiz_is_clean(model, quizzes):
    one = quizzes.subset([0])
    result = ablate(model, one, "layers", method="resample")
    np.testing.assert_allclose(result.loss, np.repeat(result.clean_loss[None], 8, 0), rtol=1e-4)


def test_stacked_components_equal_one_at_a_time(model, quizzes):
    names = ["L0H1", "L1.attn", "L3H3", "L1.mlp", "L0N3", "L1N20", "L3N11", "L3.mlp"]
    few = quizzes.subset([0, 3, 5])
    stacked = ablate(model, few, names, method="mean", rows_per_forward=64)
    single = ablate(model, few, names, method="mean", rows_per_forward=1)
    np.testing.assert_allclose(stacked.loss, single.loss, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stacked.cell_accuracy, single.cell_accuracy, atol=1e-6)


def test_greedy_ablation_hooks_honour_hook_start(model, quizzes):
    """The hooks see one position at a time in cached generation; generating without the cache
    (every prefix from position 0) with a hand-written hook must give the same tokens."""
    tokens = quizzes.tokens
    z_mean = position_means(model, tokens, "blocks.1.attn.hook_z")

    def head_mean(x, hook):
        x = x.clone()
        x[:, :, 0] = z_mean[: x.shape[1], 0]
        return x

    few = tokens[[4]]
    with model.hooks(ablation_hooks(model, quizzes, ["L1H0"], "mean")):
        cached = model.complete(few)
    with model.hooks([("blocks.1.attn.hook_z", head_mean)]):
        uncached = model.complete(few, use_cache=False)
    torch.testing.assert_close(cached, uncached)
    assert not torch.equal(cached, model.complete(few))  # the ablation changes the output

    result = ablate(model, quizzes, ["L1H0"], method="mean", greedy=True)
    cells = predicted_cells(tokens)
    for i, name in enumerate(result.components):
        with model.hooks(ablation_hooks(model, quizzes, [name], "mean")):
            out = model.complete(tokens)
        np.testing.assert_array_equal(result.greedy[i], (out == tokens)[:, cells].all(1).numpy())
    clean = (model.complete(tokens)[:, cells] == tokens[:, cells]).all(1).numpy()
    np.testing.assert_array_equal(result.clean_greedy, clean)


def test_zero_ablating_attention_layer_0_dominates_on_the_default_model(model, quizzes):
    """The finding the culture write-up reported for the 37M models holds on ours too."""
    result = ablate(model, quiz_set(n_per_task=2, seed=4), "layers", method="zero")
    (first, ratio), (_, second) = result.top(2, "loss_ratio")
    assert first == "L0.attn" and ratio > 50 and ratio > 3 * second


def test_result_json_findings_and_plots(tmp_path):
    tasks = np.array(["a", "a", "b", "b"])
    names = [f"L{lay}H{h}" for lay in range(2) for h in range(2)]
    loss = np.array([[1.0, 1, 1, 1], [2, 2, 4, 4], [1, 1, 1, 1], [0.5, 0.5, 0.5, 0.5]])
    result = AblationResult(
        method="zero",
        components=names,
        tasks=tasks,
        clean_loss=np.ones(4),
        clean_cell_accuracy=np.ones(4),
        loss=loss,
        cell_accuracy=np.array([[1.0, 1, 1, 1], [1, 1, 0.5, 0.7], [1, 1, 1, 1], [1, 1, 1, 1]]),
    )
    data = json.loads(json.dumps(result.to_json()))
    assert data["effects"]["L0H1"]["loss_ratio"] == {"a": 2.0, "b": 4.0, "all": 3.0}
    assert data["effects"]["L0H1"]["cell_accuracy_delta"]["b"] == pytest.approx(-0.4)
    assert result.top(2, "loss_delta") == [("L0H1", 2.0), ("L0H0", 0.0)]
    assert result.top(1, "cell_accuracy_delta", task="b")[0][0] == "L0H1"
    assert any("L0H1" in line and "3" in line for line in result.findings())
    result.plot(tmp_path / "heads.png")
    assert (tmp_path / "heads.png").read_bytes()[:4] == b"\x89PNG"
    result.components = ["L0N1", "L0N2", "L1N0", "L1N5"]
    result.plot(tmp_path / "neurons.png")
    assert (tmp_path / "neurons.png").stat().st_size > 0


def test_bad_names_raise_with_suggestions(model, quizzes):
    with pytest.raises(GridlensError, match="did you mean"):
        ablate(model, quizzes, ["L0.atn"])
    with pytest.raises(GridlensError, match="did you mean 'mean'"):
        ablate(model, quizzes, ["L0.attn"], method="meen")
    hooks = ablation_hooks(model, quizzes, ["L0.attn"], "resample")
    with pytest.raises(GridlensError, match="resample"), torch.no_grad():
        model.run_with_hooks(quizzes.tokens[:3], fwd_hooks=hooks)


def reference_values(model, tokens, site, method, seed):
    """What each quiz's activation at `site` becomes, computed one quiz at a time."""
    acts = torch.stack([model.run_with_cache(t[None], names=site)[1][site][0] for t in tokens])
    if method == "zero":
        return torch.zeros_like(acts)
    if method == "mean":
        return acts.mean(0, keepdim=True).expand_as(acts)
    return acts[torch.as_tensor(donor_index(len(tokens), seed))]


def one_at_a_time(model, tokens, name, method, seed):
    """Grid loss and cell accuracy with `name` ablated by a hand-written hook on a full forward."""
    kind_site = {
        "attn": ("hook_attn_out", None),
        "mlp": ("hook_mlp_out", None),
        "H": ("attn.hook_z", 2),
        "N": ("mlp.hook_post", 2),
    }
    layer, rest = int(name[1]), name[2:]
    key = rest[1:] if rest.startswith(".") else rest[0]
    suffix, axis = kind_site[key]
    site = f"blocks.{layer}.{suffix}"
    new = reference_values(model, tokens, site, method, seed)
    index = int(rest[1:]) if axis else None

    def hook(x, hook):
        if index is None:
            return new.clone()
        x = x.clone()
        x[:, :, index] = new[:, :, index]
        return x

    return hooked_metrics(model, tokens, [(site, hook)])


@pytest.mark.parametrize("method", ["zero", "mean", "resample"])
def test_batched_sweep_equals_one_at_a_time_on_a_tiny_model(method):
    """Every kind of component in every layer of a random 3-layer model, chunked unevenly and
    stacked, against full forwards with one hand-written hook each; a dead neuron (its ReLU never
    opens) is left exactly clean under zero and mean ablation."""
    tiny = GridGPT("tiny", seed=7, n_layers=3).eval()
    dead = 5
    with torch.no_grad():
        for name, p in tiny.named_parameters():  # sharper than at init: larger effects
            if p.dim() > 1 and "embed" not in name:
                p.mul_(3)
        tiny.blocks[1].mlp.fc_in.bias[dead] = -1e3
    six = quiz_set(n_per_task=1, seed=2).subset(range(6))
    names = ["L0.attn", "L1H3", "L2.mlp", "L0N1", "L0N70", "L1N40", f"L1N{dead}", "L2N9", "L2H0"]
    expected = [one_at_a_time(tiny, six.tokens, name, method, 4) for name in names]
    clean, _ = hooked_metrics(tiny, six.tokens, [])
    for rows in (4, 12):  # chunks of 4 and 2 quizzes, one copy each; 6 quizzes, 2 copies each
        result = ablate(tiny, six, names, method=method, seed=4, rows_per_forward=rows)
        np.testing.assert_allclose(result.clean_loss, clean, rtol=1e-5)
        for i, (loss, accuracy) in enumerate(expected):
            np.testing.assert_allclose(result.loss[i] - clean, loss - clean, atol=2e-4)
            np.testing.assert_allclose(result.cell_accuracy[i], accuracy, atol=1e-6)
    live = [i for i, name in enumerate(names) if name != f"L1N{dead}"]
    assert all(np.abs(result.loss[i] - clean).max() > 2e-3 for i in live)
    if method != "resample":
        np.testing.assert_array_equal(result.loss[names.index(f"L1N{dead}")], result.clean_loss)


def test_rows_that_fit_bounds_the_widest_activation():
    cfg = GridGPT("tiny").cfg
    rows = rows_that_fit(cfg, 404)
    assert rows * 404 * cfg.d_mlp * 4 <= FORWARD_BYTES < (rows + 1) * 404 * cfg.d_mlp * 4
    assert rows_that_fit(cfg.replace(d_mlp=10**8), 404) == 1
