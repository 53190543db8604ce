"""Edge graph, path patching (against a slow hook-based reference), ACDC, EAP and EAP-IG on a
hand-built model whose circuit is known exactly."""

import pytest
import torch

from gridlens.analysis.circuits import (
    EdgeGraph,
    EdgeProblem,
    EdgeRun,
    acdc,
    eap,
    eap_ig,
    edge_forward,
    path_patch,
)
from gridlens.errors import ConfigError
from gridlens.models import GridGPT

CFG = dict(
    vocab_size=5, n_ctx=6, d_model=8, n_layers=2, n_heads=2, d_head=2, d_mlp=8, d_vocab_out=5
)


def _tokens(seed: int, n: int = 4) -> torch.Tensor:
    return torch.randint(0, 5, (n, 6), generator=torch.Generator().manual_seed(seed))


def _random_model() -> GridGPT:
    model = GridGPT(None, seed=1, shift_input=False, **CFG).eval()
    with torch.no_grad():
        for block in model.blocks:  # LayerNorm affines away from 1/0, so they are exercised
            block.ln1.weight.normal_(1, 0.3, generator=torch.Generator().manual_seed(2))
            block.ln2.bias.normal_(0, 0.3, generator=torch.Generator().manual_seed(3))
    return model


def _sender_outputs(model, cache) -> dict[str, torch.Tensor]:
    """Every sender's output, read from a hooked run's cache."""
    d, h = model.cfg.d_model, model.cfg.n_heads
    out = {"input": cache["hook_embed"] + cache["hook_pos_embed"]}
    for layer, block in enumerate(model.blocks):
        w_o = block.attn.w_o.view(h, -1, d)
        z = cache[f"blocks.{layer}.attn.hook_z"]
        for head in range(h):
            out[f"L{layer}H{head}"] = z[:, :, head] @ w_o[head]
        out[f"MLP{layer}"] = cache[f"blocks.{layer}.hook_mlp_out"]
    return out


def slow_path_patch(model, clean, corrupted, edges) -> torch.Tensor:
    """The model rerun with hooks: each patched receiver's input is the live residual stream
    with each patched sender's live output swapped for its corrupted-run output."""
    _, cache = model.run_with_cache(corrupted)
    corrupt = _sender_outputs(model, cache)
    live: dict[str, torch.Tensor] = {}
    by_receiver: dict[str, list[str]] = {}
    for s, r in edges:
        by_receiver.setdefault(r, []).append(s)

    def patched(resid, receiver):
        return resid - sum(live[s] - corrupt[s] for s in by_receiver[receiver])

    def record(x, hook):
        live[hook.name] = x

    def head_input(layer, part):
        w = getattr(model.blocks[layer].attn, f"w_{part}")

        def fn(x, hook):
            x = x.clone()
            for head in range(model.cfg.n_heads):
                receiver = f"L{layer}H{head}.{part}"
                if receiver in by_receiver:
                    ln = model.blocks[layer].ln1
                    y = ln(patched(live[f"blocks.{layer}.hook_resid_pre"], receiver))
                    x[:, :, head] = y @ w[head].T
            return x

        return fn

    def mlp_input(layer):
        def fn(x, hook):
            receiver = f"MLP{layer}"
            if receiver not in by_receiver:
                return None
            block = model.blocks[layer]
            return block.mlp.fc_in(
                block.ln2(patched(live[f"blocks.{layer}.hook_resid_mid"], receiver))
            )

        return fn

    def senders(layer):
        def fn(z, hook):
            w_o = model.blocks[layer].attn.w_o.view(model.cfg.n_heads, -1, model.cfg.d_model)
            for head in range(model.cfg.n_heads):
                live[f"L{layer}H{head}"] = z[:, :, head] @ w_o[head]

        return fn

    last = model.cfg.n_layers - 1
    hooks = [("hook_embed", record)]
    for layer in range(model.cfg.n_layers):
        hooks += [
            (f"blocks.{layer}.hook_resid_pre", record),
            (f"blocks.{layer}.hook_resid_mid", record),
        ]
        hooks += [(f"blocks.{layer}.attn.hook_{p}", head_input(layer, p)) for p in "qkv"]
        hooks += [(f"blocks.{layer}.attn.hook_z", senders(layer))]
        hooks += [(f"blocks.{layer}.mlp.hook_pre", mlp_input(layer))]
        hooks += [
            (f"blocks.{layer}.hook_mlp_out", lambda x, h, n=f"MLP{layer}": live.update({n: x}))
        ]

    def final(x, hook):
        if "logits" in by_receiver:
            return patched(x, "logits")
        return None

    hooks.append((f"blocks.{last}.hook_resid_post", final))

    def input_sender(x, hook):
        live["input"] = live["hook_embed"] + x

    hooks.append(("hook_pos_embed", input_sender))
    with torch.no_grad():
        return model.run_with_hooks(clean, fwd_hooks=hooks)


def test_edge_graph_counts_and_unpatched_forward_matches_the_model():
    model = _random_model()
    graph = EdgeGraph(model.cfg)
    # receivers: layer 0 heads (6) read 1 sender, MLP0 3, layer 1 heads (6) 4, MLP1 6, logits 7
    assert len(graph) == 6 * 1 + 3 + 6 * 4 + 6 + 7
    clean, corrupted = _tokens(0), _tokens(1)
    with torch.no_grad():
        logits, _ = edge_forward(model, graph, clean)
        _, corrupt = edge_forward(model, graph, corrupted)
        all_corrupt, _ = edge_forward(model, graph, clean, torch.zeros(len(graph)), corrupt)
        torch.testing.assert_close(logits, model(clean))
        torch.testing.assert_close(all_corrupt, model(corrupted))


@pytest.mark.parametrize(
    "edges",
    [
        [("input", "L0H1.q")],
        [("input", "L0H0.k")],
        [("L0H1", "L1H0.v")],
        [("L0H0", "MLP0")],
        [("MLP0", "logits")],
        [("input", "L0H1.v"), ("L0H1", "L1H1.q"), ("MLP0", "MLP1"), ("L1H0", "logits")],
    ],
)
def test_path_patching_matches_a_slow_rerun_with_the_sender_replaced(edges):
    model = _random_model()
    clean, corrupted = _tokens(0), _tokens(1)
    with torch.no_grad():
        fast = path_patch(model, EdgeGraph(model.cfg), clean, corrupted, edges)
    slow = slow_path_patch(model, clean, corrupted, edges)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(fast, model(clean), atol=1e-4)  # the patch did something


def test_resuming_at_a_stage_equals_the_full_forward():
    model = _random_model()
    graph = EdgeGraph(model.cfg)
    run = EdgeRun(model, EdgeProblem(_tokens(0), _tokens(1), _tokens(2), _tokens(3)))
    weights = (torch.rand(len(graph), generator=torch.Generator().manual_seed(0)) > 0.3).float()
    with torch.no_grad():
        full, outs = run.forward(weights)
        for stage in range(len(graph.stages)):
            resumed, again = run.forward(weights, stage, outs)
            torch.testing.assert_close(resumed, full)
            torch.testing.assert_close(again, outs)


# ------------------------------------------------------------------ a hand-built circuit


def known_circuit_model() -> tuple[GridGPT, set[tuple[str, str]]]:
    """Tokens live in dims 0-3. L0H0 attends uniformly (zero query and key weights) and writes
    the mean of its value (read from the tokens) into dims 4-5; MLP1 reads dims 4-5 and writes
    dims 6-7, the only dims the readout reads. Every other head and MLP writes nothing. So
    exactly these edges matter: input -> L0H0.v, L0H0 -> MLP1, input -> MLP1 (through its
    LayerNorm's statistics) and MLP1 -> logits."""
    model = GridGPT(None, seed=0, shift_input=False, **CFG).eval()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.embed.weight[:, :4] = torch.randn(5, 4, generator=g) * 3
        for block in model.blocks:
            block.ln1.weight.fill_(1.0)
            block.ln2.weight.fill_(1.0)
        attn = model.blocks[0].attn
        attn.w_v[0, :, :4] = torch.randn(4, 4, generator=g)
        attn.w_o[:4, 4:6] = torch.randn(4, 2, generator=g)
        mlp = model.blocks[1].mlp
        mlp.fc_in.weight[:, 4:6] = torch.randn(8, 2, generator=g) * 2
        mlp.fc_in.bias.copy_(torch.randn(8, generator=g))
        mlp.fc_out.weight[6:8] = torch.randn(2, 8, generator=g)
        model.unembed.weight[:, 6:8] = torch.randn(5, 2, generator=g) * 3
    circuit = {("input", "L0H0.v"), ("L0H0", "MLP1"), ("input", "MLP1"), ("MLP1", "logits")}
    return model, circuit


def _known_run():
    model, circuit = known_circuit_model()
    clean, corrupted = _tokens(10, 16), _tokens(11, 16)
    with torch.no_grad():
        answer = model(clean).argmax(-1)
        wrong = model(corrupted).argmax(-1)
    return EdgeRun(model, EdgeProblem(clean, corrupted, answer, wrong)), circuit


def _top(graph, scores, k):
    return {(graph.edges[i].sender, graph.edges[i].receiver) for i in scores.argsort()[-k:]}


@pytest.mark.parametrize("method", ["eap", "eap_ig"])
@pytest.mark.parametrize("metric", ["loss", "logit_diff"])
def test_gradient_methods_recover_the_known_circuit(method, metric):
    run, circuit = _known_run()
    scores = (eap if method == "eap" else eap_ig)(run, metric)
    assert _top(run.graph, scores, len(circuit)) == circuit
    outside = ~run.graph.mask(circuit)
    assert float(scores[outside].max()) < 1e-6 * float(scores.max())


@pytest.mark.parametrize("metric", ["kl", "loss", "logit_diff"])
def test_acdc_recovers_the_known_circuit(metric):
    run, circuit = _known_run()
    keep = acdc(run, 1e-6, metric)
    assert keep.tolist() == run.graph.mask(circuit).tolist()
    assert run.faithfulness(keep.float()) == pytest.approx(1.0, abs=1e-4)


def test_edge_weight_gradients_match_finite_differences_along_the_ig_path():
    """EAP-IG integrates d/dalpha M(alpha * all edges) = sum of the edge gradients: check that
    sum against a central difference of the metric at points of the path."""
    from gridlens.analysis.circuits.eap import _gradient

    run, _ = _known_run()
    n, h = len(run.graph), 1e-3
    for alpha in (0.25, 0.5, 0.9):
        grad = _gradient(run, alpha, "logit_diff").double().sum(1)
        with torch.no_grad():
            up = run.per_example(run.logits(torch.full((n,), alpha + h)), "logit_diff")
            down = run.per_example(run.logits(torch.full((n,), alpha - h)), "logit_diff")
        torch.testing.assert_close(grad, ((up - down) / (2 * h)).double(), atol=2e-2, rtol=2e-2)


def test_bad_inputs_raise_gridlens_errors():
    run, _ = _known_run()
    with pytest.raises(ConfigError, match="gradient on the clean run"):
        eap(run, "kl")
    with pytest.raises(ConfigError, match="threshold"):
        acdc(run, -1.0)
    with pytest.raises(ConfigError, match="no edge"):
        run.graph.mask([("MLP1", "L0H0.q")])
    with pytest.raises(Exception, match="unknown circuit metric"):
        eap_ig(run, "kld")
