"""Machinery of gridlens.groundtruth on tiny configurations (full training runs live in
benchmarks/groundtruth_speed.py)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from gridlens.errors import CheckpointError, ConfigError, GridlensError, UnknownNameError
from gridlens.groundtruth import iit
from gridlens.groundtruth.scoring import (
    circuit_discovery,
    class_mean_subspace,
    f1_matrix,
    linear_assignment,
    patched_iia,
    roc_auc,
    score_mlp,
    task_purity,
)
from gridlens.groundtruth.spec import (
    Benchmark,
    Site,
    combined_benchmark,
    get_benchmark,
    head_site,
    mlp_site,
    single_benchmark,
)
from gridlens.groundtruth.tasks import HighLevelModel, Variable, get_task

TINY = {"d_model": 16, "n_layers": 2, "n_heads": 4, "d_head": 4, "d_mlp": 16}


def tok(task, text: str) -> torch.Tensor:
    ids = {name: i for i, name in enumerate(task.vocab)}
    return torch.tensor([[0] + [ids[c] for c in text]])


# ----------------------------------------------------------------------------- tasks


def test_parenthesis_labels_by_hand():
    t = get_task("parenthesis", n_ctx=7)
    x = tok(t, "(())()")
    assert t.labels(x).tolist() == [[-1, 0, 0, 0, 1, 0, 1]]
    x = tok(t, "())(()")  # dips below zero at position 3: never balanced afterwards
    assert t.labels(x).tolist() == [[-1, 0, 1, 0, 0, 0, 0]]


def test_other_task_labels_by_hand():
    lg = get_task("left_greater", n_ctx=5)
    assert lg.labels(tok(lg, "()((")).tolist() == [[-1, 1, 0, 1, 1]]
    dup = get_task("duplicate_remover", n_ctx=7)
    assert dup.labels(tok(dup, "aabbca")).tolist() == [[-1, 1, 0, 2, 0, 3, 1]]
    uq = get_task("unique_extractor", n_ctx=7)
    assert uq.labels(tok(uq, "aabcab")).tolist() == [[-1, 1, 0, 2, 3, 0, 0]]


def test_parenthesis_dataset_mix_and_seeding():
    t = get_task("parenthesis")
    x = t.generate(2000, np.random.default_rng(0))
    assert torch.equal(x, t.generate(2000, np.random.default_rng(0)))
    elev = torch.where(x[:, 1:] == 2, 1, -1).cumsum(1)
    dips, ends0 = elev.min(1).values < 0, elev[:, -1] == 0
    for cat in ((~dips & ends0), (dips & ends0), (~dips & ~ends0), (dips & ~ends0)):
        assert int(cat.sum()) == 500


def test_to_vocab_is_deterministic():
    t = get_task("parenthesis")
    x = torch.tensor([[0, 1, 2, 3, 4, 5]])
    assert t.to_vocab(x).tolist() == [[0, 1, 2, 3, 2, 3]]


def test_high_level_model_errors():
    ok = Variable("a", (), lambda d: d["tokens"], 5)
    dead = Variable("dead", (), lambda d: d["tokens"], 5)
    out = Variable("out", ("a",), lambda d: d["a"], 5)
    HighLevelModel("fine", [ok, out], "out", 5)
    with pytest.raises(ConfigError, match="never feed the output"):
        HighLevelModel("bad", [ok, dead, out], "out", 5)
    with pytest.raises(ConfigError, match="not the input"):
        HighLevelModel("bad", [out, ok], "out", 5)
    with pytest.raises(UnknownNameError):
        HighLevelModel("bad", [ok], "nope", 5)


def test_high_level_interchange_recomputes_downstream():
    t = get_task("left_greater", n_ctx=4)
    base, src = tok(t, "((("), tok(t, ")))")
    vals = t.high_level.run(src)
    patched = t.high_level.run(base, {"elevation": (torch.tensor([True]), vals["elevation"])})
    assert patched["greater"].tolist() == [[0, 0, 0, 0]]


# ----------------------------------------------------------------------------- correspondences


def _bench(corr, **model):
    return Benchmark("t", [get_task("left_greater")], corr, {**TINY, **model})


@pytest.mark.parametrize(
    "site, message",
    [
        (Site("blocks.5.attn.hook_z", 0), "layer 5 does not exist"),
        (Site("blocks.0.attn.hook_z", 9), "head 9 does not exist"),
        (Site("blocks.0.attn.hook_z"), "needs a head"),
        (Site("blocks.0.hook_mlp_out", 1), "has no heads"),
        (Site("blocks.0.mlp.hook_post", None, (0, 99)), "outside the hook's width 16"),
        (Site("blocks.0.attn.hook_nope", 0), "unknown correspondence hook"),
        (Site("embed"), "expected 'blocks"),
    ],
)
def test_correspondence_bad_sites(site, message):
    with pytest.raises(GridlensError, match=message):
        _bench({"left_greater.elevation": site, "left_greater.greater": mlp_site(0)})


def test_correspondence_unmapped_unknown_and_overlap():
    with pytest.raises(ConfigError, match="not mapped"):
        _bench({"left_greater.elevation": head_site(0, 0)})
    with pytest.raises(UnknownNameError):
        _bench(
            {
                "left_greater.elevation": head_site(0, 0),
                "left_greater.greater": mlp_site(0),
                "left_greater.nope": mlp_site(1),
            }
        )
    with pytest.raises(ConfigError, match="overlap"):
        _bench(
            {
                "left_greater.elevation": mlp_site(0, (0, 8)),
                "left_greater.greater": mlp_site(0, (4, 12)),
            }
        )
    with pytest.raises(ConfigError, match="overlap"):
        _bench(
            {"left_greater.elevation": mlp_site(0), "left_greater.greater": mlp_site(0, (4, 12))}
        )


def test_unused_nodes_include_free_subspace():
    b = _bench(
        {"left_greater.elevation": head_site(0, 0), "left_greater.greater": mlp_site(0, (0, 8))}
    )
    labels = [s.label for s in b.unused]
    assert "MLP0[8:16]" in labels and "MLP1" in labels and "L0H0" not in labels
    assert len(labels) == 7 + 1 + 1


def test_combined_benchmark_layout_and_task_interchange():
    b = combined_benchmark(["left_greater", "duplicate_remover"], **TINY)
    assert b.n_classes == 6 and b.n_ctx == 16
    nodes = {n.label: n.variables for n in b.nodes}
    assert nodes["L1H0"] == ["task"] and nodes["L0H1"] == ["duplicate_remover.prev"]
    x, ids = b.generate(8, np.random.default_rng(0))
    lab = b.labels(x)
    assert (lab[:, :2] == -1).all() and (lab[:, 2:] >= 0).all()
    lg = ids == 0
    assert (lab[lg, 2:] < 2).all() and (lab[~lg, 2:] >= 2).all()
    # interchanging the task variable makes the output the other task's, computed on the base
    src = b.run_high_level(x.flip(0))
    out = b.run_high_level(x, {"task": (torch.ones(16, dtype=torch.bool), src["task"])})
    swapped = ids != ids.flip(0)
    assert ((out["output"][swapped, 2:] >= 2) == lg[swapped, None]).all()
    sub = combined_benchmark(["left_greater", "duplicate_remover"], subspaces=True, **TINY)
    assert {n.label for n in sub.nodes} >= {"MLP0[0:8]", "MLP0[8:16]", "MLP1[8:16]"}
    assert "MLP1[0:8]" in [s.label for s in sub.unused]


def test_unknown_benchmark():
    with pytest.raises(UnknownNameError):
        get_benchmark("parenthesiss")


# ----------------------------------------------------------------------------- interventions


def hooks_needed(bench) -> list[str]:
    return sorted({n.site.hook for n in bench.nodes} | {s.hook for s in bench.unused})


def run_patched(model, base, cache, site_masks):
    """Reference: a full forward pass of ``base`` with the masked sites taking the cached
    source activations."""
    if not site_masks:
        return model(base)
    return model.run_with_hooks(base, fwd_hooks=iit.patch_hooks(site_masks, cache))


def full_forward_total(model, bench, x, vals, perm, iit_m, strict_m, weights, cache):
    """Reference for siit_losses: the weighted sum of the three losses, each from its own full
    forward pass, the sources' activations taken from ``cache``."""
    target = iit.hl_interchange(bench, x, {k: v[perm] for k, v in vals.items()}, iit_m)
    node_masks = {n.site: m for n, m in zip(bench.nodes, iit_m, strict=True)}
    iit_logits = run_patched(model, x, cache, node_masks)
    strict = run_patched(model, x, cache, dict(zip(bench.unused, strict_m, strict=True)))
    return (
        weights[0] * iit.masked_ce(model(x), vals["output"])
        + weights[1] * iit.masked_ce(iit_logits, target)
        + weights[2] * iit.masked_ce(strict, vals["output"])
    )


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    b = single_benchmark("parenthesis", n_ctx=9, **TINY)
    model = iit.make_model(b, seed=0)
    x, _ = b.generate(16, np.random.default_rng(0))
    return b, model, x


def test_intervention_swaps_exactly_the_masked_site(tiny):
    _b, model, x = tiny
    src = x.flip(0)
    hook = "blocks.0.attn.hook_z"
    cache_src = iit.source_cache(model, src, [hook])
    mask = torch.arange(16) % 2 == 0
    seen = {}

    def spy(a, p):
        seen["z"] = a.detach().clone()

    fwd = [*iit.patch_hooks({head_site(0, 1): mask}, cache_src), (hook, spy)]
    model.run_with_hooks(x, fwd_hooks=fwd)
    base_z = iit.source_cache(model, x, [hook])[hook]
    z = seen["z"]
    assert torch.equal(z[mask][:, :, 1], cache_src[hook][mask][:, :, 1])
    assert torch.equal(z[mask][:, :, [0, 2, 3]], base_z[mask][:, :, [0, 2, 3]])
    assert torch.equal(z[~mask], base_z[~mask])


def test_losses_weights_applied_once(tiny):
    b, model, x = tiny
    gen = torch.Generator().manual_seed(0)
    iit_m, strict_m = iit.sample_masks(b, 16, "half", gen)
    vals = b.run_high_level(x)
    labels = vals["output"]
    perm = torch.arange(15, -1, -1)  # sources: the batch reversed
    losses = iit.siit_losses(model, b, x, vals, perm, iit_m, strict_m, (0.3, 1.7, 0.5))
    expect = 0.3 * losses.behaviour + 1.7 * losses.iit + 0.5 * losses.strict
    assert torch.allclose(losses.total, expect)
    assert torch.allclose(losses.behaviour, iit.masked_ce(model(x), labels), atol=1e-6)
    # the IIT and strict losses equal separate runs with the sources' activations cached by
    # their own forward pass, against the high-level counterfactual and the base labels
    src_vals = {k: v[perm] for k, v in vals.items()}
    cache = iit.source_cache(model, x[perm], hooks_needed(b))
    masks = {n.site: m for n, m in zip(b.nodes, iit_m, strict=True)}
    logits = run_patched(model, x, cache, masks)
    target = iit.hl_interchange(b, x, src_vals, iit_m)
    assert torch.allclose(losses.iit, iit.masked_ce(logits, target), atol=1e-5)
    strict = run_patched(model, x, cache, dict(zip(b.unused, strict_m, strict=True)))
    assert torch.allclose(losses.strict, iit.masked_ce(strict, labels), atol=1e-5)
    only_b = iit.siit_losses(model, b, x, vals, perm, iit_m, strict_m, (2.0, 0, 0))
    assert torch.allclose(only_b.total, 2.0 * only_b.behaviour)


def test_detached_sources_give_the_gradient_of_a_cache(tiny):
    # source_grad=False: reading sources from the clean rows must give the gradient of a
    # separate no-grad cache
    b, model, x = tiny
    gen = torch.Generator().manual_seed(1)
    iit_m, _ = iit.sample_masks(b, 16, "half", gen)
    no_strict = [torch.zeros(16, dtype=torch.bool) for _ in b.unused]
    vals = b.run_high_level(x)
    perm = torch.arange(15, -1, -1)
    model.zero_grad(set_to_none=True)
    losses = iit.siit_losses(
        model, b, x, vals, perm, iit_m, no_strict, (0, 1, 0), source_grad=False
    )
    losses.total.backward()
    with_self = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    cache = iit.source_cache(model, x[perm], hooks_needed(b))
    masks = {n.site: m for n, m in zip(b.nodes, iit_m, strict=True)}
    target = iit.hl_interchange(b, x, {k: v[perm] for k, v in vals.items()}, iit_m)
    iit.masked_ce(run_patched(model, x, cache, masks), target).backward()
    for g, p in zip(with_self, model.parameters(), strict=True):
        assert torch.allclose(g, p.grad, atol=1e-6)
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("subspaces", [False, True])
def test_shared_prefix_gives_the_gradient_of_full_forward_passes(subspaces):
    # patched rows continue from the clean pass (head outputs, MLP activations, block inputs);
    # reference: a full forward per loss, sources from their own no-grad pass. The second case
    # has MLP-neuron subspace sites (mlp.hook_post) and every strict site patched.
    bench = combined_benchmark(["left_greater", "duplicate_remover"], subspaces=subspaces, **TINY)
    model = iit.make_model(bench, seed=3)
    x, _ = bench.generate(8, np.random.default_rng(3))
    vals = bench.run_high_level(x)
    gen = torch.Generator().manual_seed(3)
    iit_m, strict_m = iit.sample_masks(bench, len(x), "all" if subspaces else "half", gen)
    perm = torch.roll(torch.arange(len(x)), 3)
    weights = (0.3, 1.7, 0.5)
    model.zero_grad(set_to_none=True)
    losses = iit.siit_losses(
        model, bench, x, vals, perm, iit_m, strict_m, weights, source_grad=False
    )
    losses.total.backward()
    shared = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    cache = iit.source_cache(model, x[perm], hooks_needed(bench))
    full_forward_total(model, bench, x, vals, perm, iit_m, strict_m, weights, cache).backward()
    for g, p in zip(shared, model.parameters(), strict=True):
        assert torch.allclose(g, p.grad, atol=1e-5)
    model.zero_grad(set_to_none=True)


def test_source_gradient_is_that_of_sources_run_with_gradient():
    # source_grad: the IIT objective differentiated through the source activations too.
    # Reference: the sources' own forward pass with gradient, spliced into full forward passes.
    bench = combined_benchmark(["left_greater", "duplicate_remover"], **TINY)
    model = iit.make_model(bench, seed=4)
    x, _ = bench.generate(8, np.random.default_rng(4))
    vals = bench.run_high_level(x)
    gen = torch.Generator().manual_seed(4)
    iit_m, strict_m = iit.sample_masks(bench, len(x), "half", gen)
    perm = torch.roll(torch.arange(len(x)), 3)
    weights = (0.3, 1.7, 0.5)

    def grads(loss: torch.Tensor) -> list[torch.Tensor]:
        model.zero_grad(set_to_none=True)
        loss.backward()
        out = [p.grad.clone() for p in model.parameters()]
        model.zero_grad(set_to_none=True)
        return out

    def losses(source_grad: bool) -> torch.Tensor:
        return iit.siit_losses(
            model, bench, x, vals, perm, iit_m, strict_m, weights, source_grad=source_grad
        ).total

    with_source, detached = grads(losses(True)), grads(losses(False))
    cache: dict[str, torch.Tensor] = {}

    def keep(a: torch.Tensor, point) -> None:
        cache[point.name] = a

    model.run_with_hooks(x[perm], fwd_hooks=[(h, keep) for h in hooks_needed(bench)])
    total = full_forward_total(model, bench, x, vals, perm, iit_m, strict_m, weights, cache)
    reference = grads(total)
    for g, want in zip(with_source, reference, strict=True):
        assert torch.allclose(g, want, atol=1e-5)
    pairs = zip(with_source, detached, strict=True)
    assert any(not torch.allclose(g, d, atol=1e-4) for g, d in pairs)


def test_patched_rows_entering_at_a_block_input():
    # a residual-stream site: rows enter at block 1's input; without any patch, a row is clean
    bench = single_benchmark("parenthesis", n_ctx=9, **TINY)
    model = iit.make_model(bench, seed=4)
    x, _ = bench.generate(6, np.random.default_rng(4))
    site = Site("blocks.1.hook_resid_pre", dims=(0, 5))
    mask = torch.tensor([True, False, True, False, False, True] * 2)
    perm = torch.roll(torch.arange(6), 1)
    with torch.no_grad():
        clean, patched = iit.patched_logits(model, x, {site: mask}, perm)
        cache = iit.source_cache(model, x[perm], [site.hook])
        twice = {h: v.repeat(2, 1, 1) for h, v in cache.items()}
        want = run_patched(model, x.repeat(2, 1), twice, {site: mask})
    assert torch.allclose(clean, model(x), atol=1e-5)
    assert torch.allclose(patched, want, atol=1e-5)
    assert not torch.allclose(patched[0], clean[0], atol=1e-4)
    assert torch.equal(patched[1], clean[1])


def test_informative_sources_change_the_output_more_often():
    # left_greater: interchanging `elevation` makes the output the source's label, so an
    # interchange is informative exactly where the two labels differ
    b = single_benchmark("left_greater", n_ctx=8, **TINY)
    x, _ = b.generate(256, np.random.default_rng(0))
    vals = b.run_high_level(x)
    labels = vals["output"]
    iit_m = [torch.ones(256, dtype=torch.bool), torch.zeros(256, dtype=torch.bool)]
    gen = torch.Generator().manual_seed(0)
    first = torch.randperm(256, generator=gen)
    uniform = iit.choose_sources(b, x, vals, iit_m, first, 0.0, 4, gen)
    assert torch.equal(uniform, first)
    picked = iit.choose_sources(b, x, vals, iit_m, first, 1.0, 8, gen)

    def changed(src):  # mean number of positions whose label the interchange changes
        return float((labels[src] != labels).sum(1).float().mean())

    # the chosen source maximises the count among 8 draws: far above a uniform draw
    assert changed(picked) > changed(uniform) + 1.0
    half = iit.choose_sources(b, x, vals, iit_m, first, 0.5, 8, gen)
    changed_u, changed_h, changed_p = changed(uniform), changed(half), changed(picked)
    assert changed_u < changed_h < changed_p


def test_strict_sampling_modes(tiny):
    b = tiny[0]
    gen = torch.Generator().manual_seed(0)
    iit_m, one = iit.sample_masks(b, 1000, "one", gen)
    assert torch.stack(iit_m).sum(0).eq(1).all() and torch.stack(one).sum(0).eq(1).all()
    _, half = iit.sample_masks(b, 1000, "half", gen)
    assert 0.45 < float(torch.stack(half).float().mean()) < 0.55
    _, every = iit.sample_masks(b, 10, "all", gen)
    assert torch.stack(every).all()
    with pytest.raises(ConfigError):
        iit.TrainConfig(strict_mode="some")
    with pytest.raises(ConfigError, match="informative"):
        iit.TrainConfig(informative=1.5)
    with pytest.raises(ConfigError, match="candidates"):
        iit.TrainConfig(candidates=0)


@pytest.mark.parametrize("subspaces", [False, True])
def test_evaluate_equals_one_full_forward_per_intervention(subspaces):
    # evaluate shares one clean pass between all interventions and chunks the inputs; the
    # reference runs each intervention as its own full forward with a separate source cache.
    # With subspaces the MLP nodes are neuron ranges (rows enter at the MLP activations).
    bench = combined_benchmark(["parenthesis", "unique_extractor"], subspaces=subspaces, **TINY)
    model = iit.make_model(bench, seed=6)
    x, _ = bench.generate(9, np.random.default_rng(6))
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(6))
    got = iit.evaluate(model, bench, x, perm, chunk=7)
    vals = bench.run_high_level(x)
    cache = iit.source_cache(model, x[perm], hooks_needed(bench))
    everyone = torch.ones(len(x), dtype=torch.bool)

    def accuracy(site_masks, target) -> float:
        with torch.no_grad():
            pred = run_patched(model, x, cache, site_masks).argmax(-1)
        valid = target >= 0
        return float((pred == target)[valid].float().mean())

    assert got["accuracy"] == pytest.approx(accuracy({}, vals["output"]))
    src_vals = {k: v[perm] for k, v in vals.items()}
    for i, node in enumerate(bench.nodes):
        masks = [everyone if j == i else ~everyone for j in range(len(bench.nodes))]
        target = iit.hl_interchange(bench, x, src_vals, masks)
        want = accuracy({node.site: everyone}, target)
        assert got["iia_per_node"][node.label] == pytest.approx(want)
    for site in bench.unused:
        want = accuracy({site: everyone}, vals["output"])
        assert got["siia_per_node"][site.label] == pytest.approx(want)
    all_unused = accuracy(dict.fromkeys(bench.unused, everyone), vals["output"])
    assert got["siia_all_unused"] == pytest.approx(all_unused)
    assert 0.0 < got["iia"] < 1.0


def test_iia_and_siia_of_a_model_that_ignores_the_site(tiny):
    b, _model, x = tiny
    m = iit.make_model(b, seed=1)
    dv = b.config.d_model // b.config.n_heads
    with torch.no_grad():
        m.blocks[0].attn.w_o[0:dv] = 0  # L0H0 (the elevation node) is ignored downstream
        m.blocks[1].attn.w_o[3 * dv : 4 * dv] = 0  # L1H3 (unused) is ignored too
    res = iit.evaluate(m, b, x)
    assert res["siia_per_node"]["L1H3"] == pytest.approx(res["accuracy"])
    # patching an ignored node leaves the clean prediction: IIA = agreement with the
    # high-level counterfactual
    perm = torch.roll(torch.arange(16), 1)
    vals = b.run_high_level(x)
    src_vals = {k: v[perm] for k, v in vals.items()}
    masks = [
        torch.ones(16, dtype=torch.bool) if n.label == "L0H0" else torch.zeros(16, dtype=torch.bool)
        for n in b.nodes
    ]
    target = iit.hl_interchange(b, x, src_vals, masks)
    with torch.no_grad():
        pred = m(x).argmax(-1)
    valid = target >= 0
    expect = float((pred == target)[valid].float().mean())
    assert res["iia_per_node"]["L0H0"] == pytest.approx(expect)


def test_masked_ce_by_hand():
    labels = torch.tensor([[-1, 0, 0, 0, 1]])
    logits = torch.randn(1, 5, 3)
    nll = -logits.log_softmax(-1)[0, 1:].gather(-1, labels[0, 1:, None])[:, 0]
    assert torch.allclose(iit.masked_ce(logits, labels), nll.mean(), atol=1e-6)
    assert float(iit.masked_ce(logits, torch.full((1, 5), -1))) == 0.0


def test_tiny_training_runs_and_resumes(tmp_path):
    b = single_benchmark("left_greater", n_ctx=6, **TINY)
    cfg = iit.TrainConfig(batch_size=32, n_train_per_task=64, n_val_per_task=32, max_epochs=2)
    _model, res = iit.train(b, cfg, checkpoint=tmp_path / "ck")
    assert len(res.history) == 2 and "iia" in res.final and res.seconds_per_epoch > 0
    cfg3 = iit.TrainConfig(batch_size=32, n_train_per_task=64, n_val_per_task=32, max_epochs=3)
    _, res3 = iit.train(b, cfg3, checkpoint=tmp_path / "ck")
    assert [r["epoch"] for r in res3.history] == [1, 2, 3]
    wider = single_benchmark("left_greater", n_ctx=6, **{**TINY, "d_mlp": 2 * TINY["d_mlp"]})
    with pytest.raises(CheckpointError, match="does not fit the ground-truth model"):
        iit.train(wider, cfg3, checkpoint=tmp_path / "ck")


class _Killed(Exception):
    """Raised from the progress callback: the process dies before that epoch's checkpoint."""


def test_resume_is_bit_identical(tmp_path):
    """Killed during epoch 2 (its checkpoint unwritten), resumed from epoch 1's checkpoint: the
    weights, the optimiser state and the loss history equal an uninterrupted run's exactly (the
    batch order and the IIT sources come from the restored generator)."""
    b = single_benchmark("left_greater", n_ctx=6, **TINY)
    cfg = iit.TrainConfig(batch_size=32, n_train_per_task=64, n_val_per_task=32, max_epochs=3)
    whole, res_whole = iit.train(b, cfg, checkpoint=tmp_path / "whole")

    def kill_at_epoch_2(row):
        if row["epoch"] == 2:
            raise _Killed

    with pytest.raises(_Killed):
        iit.train(b, cfg, progress=kill_at_epoch_2, checkpoint=tmp_path / "cut")
    assert torch.load(tmp_path / "cut" / "train_state.pt", weights_only=True)["epoch"] == 1
    resumed, res_cut = iit.train(b, cfg, checkpoint=tmp_path / "cut")
    assert [r["epoch"] for r in res_cut.history] == [1, 2, 3] and res_whole.reached_epoch is None
    for key, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    losses = ("loss_behaviour", "loss_iit", "loss_strict", "loss_total", "accuracy", "iia")
    for a, c in zip(res_whole.history, res_cut.history, strict=True):
        assert [a[k] for k in losses] == [c[k] for k in losses]
    a, c = (
        torch.load(tmp_path / run / "train_state.pt", weights_only=True) for run in ("whole", "cut")
    )
    for k, state in a["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg_sq"], c["optimizer"]["state"][k]["exp_avg_sq"])


def test_load_run_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        iit.load_run(tmp_path)
    (tmp_path / "run.json").write_text("{bad")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        iit.load_run(tmp_path)


# ----------------------------------------------------------------------------- scoring


def test_hungarian_matches_brute_force():
    rng = np.random.default_rng(0)
    for shape in [(1, 1), (2, 3), (3, 3), (4, 6), (5, 3), (6, 6)]:
        for _ in range(5):
            s = rng.integers(0, 10, size=shape).astype(float)  # ties included
            pairs = linear_assignment(s)
            got = sum(s[r, c] for r, c in pairs)
            n, m = shape
            if n <= m:
                best = max(
                    sum(s[i, p[i]] for i in range(n)) for p in itertools.permutations(range(m), n)
                )
            else:
                best = max(
                    sum(s[p[j], j] for j in range(m)) for p in itertools.permutations(range(n), m)
                )
            assert got == pytest.approx(best)
            assert len(pairs) == min(shape)
            assert len({r for r, _ in pairs}) == len({c for _, c in pairs}) == min(shape)
    assert linear_assignment(np.array([[1.0, 5.0]]), maximize=False) == [(0, 0)]


def test_f1_and_auc_by_hand():
    y = torch.tensor([[1, 0], [1, 0], [0, 1], [0, 0]], dtype=torch.bool)
    a = torch.tensor([[1, 0], [0, 0], [1, 1], [0, 1]], dtype=torch.bool)
    f1 = f1_matrix(y, a)
    # value 0 vs unit 0: tp 1, fp 1, fn 1 -> 0.5; value 1 vs unit 1: tp 1, fp 1 -> 2/3
    assert f1[0, 0] == pytest.approx(0.5) and f1[1, 1] == pytest.approx(2 / 3)
    assert f1[0, 1] == pytest.approx(0.0) and f1[1, 0] == pytest.approx(2 / 3)
    assert roc_auc([0.9, 0.8, 0.1, 0.8], [1, 1, 0, 0]) == pytest.approx((2 + 1 + 0.5) / 4)
    assert roc_auc([1, 2], [1, 1]) != roc_auc([1, 2], [1, 1])  # nan


def _pairwise_auc(scores, labels) -> float:
    """Every (positive, negative) pair, one at a time: a win counts 1, a tie 1/2."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_with_ties_matches_every_pair(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 40))
    scores = rng.integers(0, 4, n).astype(float)  # four levels: ties everywhere
    labels = rng.permutation(np.arange(n) < int(rng.integers(1, n)))
    auc = roc_auc(scores, labels)
    assert auc == pytest.approx(_pairwise_auc(scores.tolist(), labels.tolist()), abs=1e-12)
    assert auc + roc_auc(scores, ~labels) == pytest.approx(1.0)  # ties split evenly
    assert roc_auc(np.zeros(n), labels) == 0.5
    assert roc_auc(torch.as_tensor(scores), torch.as_tensor(labels)) == auc


def test_task_purity_by_hand():
    active = torch.tensor([[1, 1], [1, 0], [0, 1], [0, 1]], dtype=torch.bool)
    task = torch.tensor([0, 0, 1, 1])
    p = task_purity(active, task, 2)
    # unit 0 fires only on task 0 (purity 1); unit 1 half of task 0 rows, all task 1 rows:
    # shares 0.5 / 1.5 and 1 / 1.5 -> purity 2/3
    assert p["mean_purity"] == pytest.approx((1 + 2 / 3) / 2)
    assert p["fraction_multi_task"] == pytest.approx(0.5)


def test_class_mean_subspace_finds_the_direction_the_values_differ_along():
    # three values sit at +-2 and 0 along a known direction; the other dimensions are noise of
    # larger variance, so the variance-led direction would be wrong
    gen = torch.Generator().manual_seed(8)
    direction = torch.nn.functional.normalize(torch.tensor([1.0, -2.0, 0.0, 0.5, 0.0]), dim=0)
    value = torch.randint(3, (600,), generator=gen)
    acts = 3.0 * torch.randn(600, 5, generator=gen) * torch.tensor([0, 0, 1, 0, 1])
    acts = acts + (value.float() - 1)[:, None] * 2.0 * direction
    y = torch.nn.functional.one_hot(value, 3).bool()
    q = class_mean_subspace(acts, y)
    assert q.shape == (5, 2)
    assert torch.allclose(q.t() @ q, torch.eye(2), atol=1e-5)
    assert float((q.t() @ direction).norm()) > 0.99
    assert class_mean_subspace(acts, y[:, :1]).shape == (5, 0)


def test_scoring_and_circuit_discovery_run_on_tiny_model(tiny):
    b, model, x = tiny
    x2, _ = b.generate(16, np.random.default_rng(1))
    r = score_mlp(model, b, 0, x, x2, n_latents=8, k=2, sae_steps=5)
    assert set(r["methods"]) == {"sae", "neurons", "probe", "class_means", "none", "whole_mlp"}
    sae = r["methods"]["sae"]
    assert 0 <= sae["hungarian_mean_f1"] <= sae["mean_best_f1"] + 1e-6
    c = circuit_discovery(model, b, x)
    assert len(c["components"]) == 10 and sum(c["in_circuit"]) == 4
    assert not math.isnan(c["auc_atp"])


def test_none_and_whole_mlp_transforms_give_known_iia(tiny):
    """Scoring invariants: the 'none' transform's IIA is the clean prediction's agreement with
    the high-level counterfactual, and swapping the whole MLP (every hook_post unit) gives the
    per-node IIA that iit.evaluate reports for that MLP's node."""
    b, _model, x = tiny
    model = iit.make_model(b, seed=0).eval()
    with torch.no_grad():  # a loud MLP0, so wrong source units change predictions
        model.blocks[0].mlp.fc_in.weight.mul_(30)
        model.blocks[0].mlp.fc_out.weight.mul_(300)
    res = iit.evaluate(model, b, x)
    perm = torch.roll(torch.arange(len(x)), 1)
    vals = b.run_high_level(x)
    src_vals = {k: v[perm] for k, v in vals.items()}
    with torch.no_grad():
        pred = model(x).argmax(-1)
    checked = 0
    for i, node in enumerate(b.nodes):
        if node.site.hook != "blocks.0.hook_mlp_out":
            continue
        var = node.variables[0]
        masks = [torch.full((len(x),), j == i) for j in range(len(b.nodes))]
        target = iit.hl_interchange(b, x, src_vals, masks)
        valid = target >= 0
        agreement = float((pred == target)[valid].float().mean())
        transforms = {"none": lambda a, s: a, "whole_mlp": lambda a, s: s}
        iia = patched_iia(model, b, x, 0, var, transforms)
        assert iia["none"] == pytest.approx(agreement)
        assert iia["whole_mlp"] == pytest.approx(res["iia_per_node"][node.label])
        checked += 1
    assert checked == 1


def test_min_margin_by_hand():
    logits = torch.tensor([[[0.0, 0.0], [2.0, 0.5], [0.0, 3.0]]])
    assert iit.min_margin(logits, torch.tensor([[-1, 0, 1]])) == pytest.approx(1.5)
    assert iit.min_margin(logits, torch.tensor([[-1, 1, 1]])) == pytest.approx(-1.5)


def test_extra_epochs_keep_the_passing_epoch_with_the_largest_margin(tmp_path):
    b = single_benchmark("left_greater", n_ctx=6, **TINY)
    easy = dict(threshold_accuracy=0.0, threshold_iia=0.0, threshold_siia=0.0)
    small = dict(batch_size=32, n_train_per_task=64, n_val_per_task=32, max_epochs=20)
    cfg = iit.TrainConfig(**small, **easy, extra_epochs=3)
    model, res = iit.train(b, cfg, checkpoint=tmp_path / "ck")
    assert res.reached_epoch == 1 and [r["epoch"] for r in res.history] == [1, 2, 3, 4]
    margins = [r["margin"] for r in res.history]
    assert res.best_epoch == 1 + int(np.argmax(margins)) and res.final["margin"] == max(margins)
    rng = np.random.default_rng(cfg.seed)
    b.generate(cfg.n_train_per_task, rng)
    val, _ = b.generate(cfg.n_val_per_task, rng)
    assert iit.evaluate(model, b, val)["margin"] == pytest.approx(max(margins), abs=1e-5)
    _, again = iit.train(b, cfg, checkpoint=tmp_path / "ck")  # resumed: nothing left to run
    assert again.best_epoch == res.best_epoch and len(again.history) == 4


def test_consider_keeps_the_largest_margin_not_the_latest():
    res, model = iit.TrainResult(), torch.nn.Linear(1, 1)
    for epoch, margin in enumerate([1.0, 3.0, 2.0, -1.0], start=1):
        torch.nn.init.constant_(model.weight, float(epoch))
        res.history.append({"epoch": epoch, "margin": margin})
        res.consider(epoch, res.history[-1], model)
    assert res.best_epoch == 2 and float(res.best_state["weight"]) == 2.0
