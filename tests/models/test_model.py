"""GridGPT against the original MyGPT's recorded logits, and its own fast/explicit paths."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from gridlens.errors import ConfigError, TokenError, UnknownNameError
from gridlens.models import PRESETS, GridGPT, GridGPTConfig, get_preset, load


@pytest.fixture(autouse=True)
def _seeded_global_rng():
    """Tests here draw tokens from the global RNG: seed it so a failure reproduces."""
    torch.manual_seed(0)


def independent_mygpt_logits(state: dict, tokens: torch.Tensor, heads: int) -> torch.Tensor:
    """MyGPT's forward written out from the original layout's keys, in float64, with an
    explicit causal pattern: an implementation independent of GridGPT's code."""
    s = {k: v.double() for k, v in state.items()}
    x = F.pad(tokens, (1, -1))
    h = s["embedding.0.f.0.weight"][x]
    _n, t, d = h.shape
    tt = torch.arange(t, dtype=torch.float64)[:, None]
    j = torch.arange(d, dtype=torch.float64)[None, :]
    k = j % 2
    h = h + torch.sin(tt / (1e5 ** ((j - k) / d)) + math.pi / 2 * k)
    layer = 0
    while f"trunk.{2 * layer}.f.1.w_q" in s:
        a, m = f"trunk.{2 * layer}.f.", f"trunk.{2 * layer + 1}.f.f."
        y = F.layer_norm(h, (d,), s[a + "0.f.0.weight"], s[a + "0.f.0.bias"])
        q = torch.einsum("ntc,hdc->nhtd", y, s[a + "1.w_q"])
        kk = torch.einsum("ntc,hdc->nhtd", y, s[a + "1.w_k"])
        v = torch.einsum("ntc,hdc->nhtd", y, s[a + "1.w_v"])
        scores = torch.einsum("nhtd,nhsd->nhts", q, kk) / math.sqrt(q.shape[-1])
        mask = torch.ones(t, t, dtype=torch.bool).triu(1)
        pattern = scores.masked_fill(mask, float("-inf")).softmax(-1)
        z = torch.einsum("nhts,nhsd->nthd", pattern, v).flatten(2)
        h = h + z @ s[a + "1.w_o"]
        y = F.layer_norm(h, (d,), s[m + "0.weight"], s[m + "0.bias"])
        y = F.relu(y @ s[m + "2.weight"].T + s[m + "2.bias"])
        h = h + y @ s[m + "4.weight"].T + s[m + "4.bias"]
        layer += 1
    return h @ s["readout.f.weight"].T + s["readout.f.bias"]


def test_reference_logits_match_original(reference):
    model = load(reference["path"])
    vocab, d_model, d_head, d_mlp, heads, blocks = reference["config"]
    c = model.cfg
    assert (c.vocab_size, c.d_model, c.d_head, c.d_mlp, c.n_heads, c.n_layers) == (
        vocab,
        d_model,
        d_head,
        d_mlp,
        heads,
        blocks,
    )
    with torch.no_grad():
        logits = model(reference["quizzes"])
    assert logits.shape == reference["logits"].shape
    assert torch.allclose(logits, reference["logits"], atol=1e-5, rtol=0)
    # and an independent float64 re-implementation agrees with the recorded logits
    state = torch.load(reference["path"], weights_only=True)[0]
    ind = independent_mygpt_logits(state, reference["quizzes"], heads)
    assert torch.allclose(ind.float(), reference["logits"], atol=1e-5, rtol=0)


def test_fused_and_explicit_attention_agree(reference):
    model = load(reference["path"])
    tokens = reference["quizzes"]
    with torch.no_grad():
        fast = model(tokens)
        slow, cache = model.run_with_cache(tokens, names=lambda n: n.endswith("hook_pattern"))
    assert len(cache) == model.cfg.n_layers
    assert torch.allclose(fast, slow, atol=1e-5, rtol=0)
    pattern = cache["blocks.1.attn.hook_pattern"]
    assert pattern.shape == (6, 4, 404, 404)
    assert torch.allclose(pattern.sum(-1), torch.ones(()), atol=1e-5)
    assert (pattern.triu(1) == 0).all()  # causal


def test_shapes_of_every_hook(tiny):
    tokens = torch.randint(0, 15, (3, 20))
    with torch.no_grad():
        logits, cache = tiny.run_with_cache(tokens)
    c = tiny.cfg
    assert logits.shape == (3, 20, 15)
    assert list(cache) == tiny.hook_names
    assert cache["hook_embed"].shape == (3, 20, c.d_model)
    assert cache["hook_pos_embed"].shape == (3, 20, c.d_model)
    assert cache["blocks.0.attn.hook_q"].shape == (3, 20, c.n_heads, c.d_head)
    assert cache["blocks.0.attn.hook_v"].shape == (3, 20, c.n_heads, c.d_value)
    assert cache["blocks.0.attn.hook_z"].shape == (3, 20, c.n_heads, c.d_value)
    assert cache["blocks.0.attn.hook_result"].shape == (3, 20, c.n_heads, c.d_model)
    assert cache["blocks.1.attn.hook_attn_scores"].shape == (3, c.n_heads, 20, 20)
    assert cache["blocks.1.mlp.hook_pre"].shape == (3, 20, c.d_mlp)
    assert cache["blocks.1.ln2.hook_scale"].shape == (3, 20, 1)
    # the residual stream decomposes as it should
    r = cache
    assert torch.allclose(r["blocks.0.hook_resid_pre"], r["hook_embed"] + r["hook_pos_embed"])
    assert torch.allclose(
        r["blocks.0.hook_resid_mid"],
        r["blocks.0.hook_resid_pre"] + r["blocks.0.hook_attn_out"],
        atol=1e-5,
    )
    assert torch.allclose(
        r["blocks.0.attn.hook_result"].sum(2), r["blocks.0.hook_attn_out"], atol=1e-4
    )
    assert torch.allclose(
        r["blocks.1.hook_resid_post"] @ tiny.unembed.weight.T + tiny.unembed.bias, logits, atol=1e-4
    )


def test_stop_at_layer_and_name_filters(tiny):
    tokens = torch.randint(0, 15, (2, 12))
    logits, cache = tiny.run_with_cache(
        tokens, names=["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"], stop_at_layer=1
    )
    assert logits is None
    assert list(cache) == ["blocks.0.hook_resid_post"]
    resid = tiny(tokens, stop_at_layer=1)
    assert torch.equal(resid, cache["blocks.0.hook_resid_post"])
    with pytest.raises(UnknownNameError, match="hook_resid_post"):
        tiny.run_with_cache(tokens, names=["blocks.0.hook_resid_postt"])
    with pytest.raises(UnknownNameError, match="not cached"):
        cache["blocks.0.hook_resid_pre"]


def test_hooks_edit_and_context_manager_cleans_up(tiny):
    tokens = torch.randint(0, 15, (2, 16))
    with torch.no_grad():
        clean = tiny(tokens)
        seen = []

        def zero_head(z, hook):
            seen.append(hook.name)
            assert hook.layer() == 1
            z = z.clone()
            z[:, :, 2] = 0
            return z

        edited = tiny.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_z", zero_head)])
        assert seen == ["blocks.1.attn.hook_z"]
        assert not torch.allclose(clean, edited)

        # the same edit through hook_result gives the same logits
        def zero_result(r, hook):
            r = r.clone()
            r[:, :, 2] = 0
            return r

        again = tiny.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_result", zero_result)])
        assert torch.allclose(again, edited, atol=1e-5)
        # context manager: removed on exit, even after an exception
        with (
            pytest.raises(RuntimeError),
            tiny.hooks(fwd_hooks=[("blocks.1.attn.hook_z", zero_head)]),
        ):
            assert torch.allclose(tiny(tokens), edited)
            raise RuntimeError("boom")
        assert torch.equal(tiny(tokens), clean)
        # read-only hooks (returning None) change nothing; the explicit-pattern and per-head
        # result paths that hooking every site forces agree to float precision
        cheap = lambda n: not n.endswith(("pattern", "scores", "result", "scale"))  # noqa: E731
        assert torch.equal(tiny.run_with_hooks(tokens, [(cheap, lambda x, h: None)]), clean)
        every = tiny.run_with_hooks(tokens, [(lambda n: True, lambda x, h: None)])
        assert torch.allclose(every, clean, atol=1e-5)


def test_gradients_flow_through_hooks(tiny):
    tokens = torch.randint(0, 15, (2, 10))
    saved = {}

    def keep(x, hook):
        x.retain_grad()
        saved[hook.name] = x

    logits = tiny.run_with_hooks(
        tokens, fwd_hooks=[("blocks.0.hook_resid_post", keep), ("blocks.0.attn.hook_pattern", keep)]
    )
    logits[:, -1, 3].sum().backward()
    assert saved["blocks.0.hook_resid_post"].grad is not None
    assert saved["blocks.0.hook_resid_post"].grad.abs().sum() > 0
    assert saved["blocks.0.attn.hook_pattern"].grad.abs().sum() > 0
    _, cache = tiny.run_with_cache(tokens, names=["blocks.1.hook_resid_pre"], detach=False)
    assert cache["blocks.1.hook_resid_pre"].requires_grad
    tiny.zero_grad()


def test_bad_input_errors(tiny):
    with pytest.raises(TokenError, match="outside the vocabulary"):
        tiny(torch.tensor([[0, 1, 15]]))
    with pytest.raises(TokenError, match="outside the vocabulary"):
        tiny(torch.tensor([[0, -1]]))
    with pytest.raises(TokenError, match="longer than the model's context"):
        tiny(torch.zeros(1, 405, dtype=torch.long))
    with pytest.raises(TokenError, match="integers"):
        tiny(torch.zeros(1, 4))
    with pytest.raises(TokenError, match=r"\[batch, pos\]"):
        tiny(torch.zeros(4, dtype=torch.long))
    with pytest.raises(TokenError, match="meta"):
        tiny(torch.zeros(1, 4, dtype=torch.long, device="meta"))
    with pytest.raises(UnknownNameError, match=r"did you mean 'blocks\.0\.hook_resid_pre'"):
        tiny.run_with_hooks(
            torch.zeros(1, 4, dtype=torch.long), [("blocks.0.hook_resid_pr", print)]
        )
    with pytest.raises(UnknownNameError, match="preset"):
        get_preset("37M")
    with pytest.raises(ConfigError, match="divisible"):
        GridGPTConfig(d_model=10, n_heads=3)


def test_token_zero_is_an_ordinary_token(tiny):
    """Token 0 is a colour: a sequence of zeros gets no special treatment (no padding mask)."""
    a = torch.zeros(1, 30, dtype=torch.long)
    b = a.clone()
    b[0, 10] = 3
    with torch.no_grad():
        la, lb = tiny(a), tiny(b)
    # with the shift, logits at p read tokens < p: position <= 10 unchanged, later ones change
    assert torch.allclose(la[:, :11], lb[:, :11])
    assert not torch.allclose(la[:, 11:], lb[:, 11:])


def test_unshifted_model_reads_its_own_position():
    model = GridGPT(
        GridGPTConfig(
            vocab_size=7,
            n_ctx=15,
            d_model=32,
            n_layers=1,
            n_heads=2,
            d_head=8,
            d_mlp=64,
            d_vocab_out=3,
            shift_input=False,
        ),
        seed=0,
    )
    tokens = torch.randint(0, 7, (4, 15))
    changed = tokens.clone()
    changed[:, 5] = (changed[:, 5] + 1) % 7
    with torch.no_grad():
        out, out2 = model(tokens), model(changed)
    assert out.shape == (4, 15, 3)
    assert torch.allclose(out[:, :5], out2[:, :5]) and not torch.allclose(out[:, 5], out2[:, 5])


def test_presets_and_bf16():
    assert PRESETS["37m"].d_model == 512 and PRESETS["37m"].n_layers == 12
    assert 35e6 < PRESETS["37m"].n_params() < 40e6
    model = GridGPT("tiny", seed=0)
    assert sum(p.numel() for p in model.parameters()) == model.cfg.n_params()
    tokens = torch.randint(0, 15, (2, 50))
    with torch.no_grad():
        ref = model(tokens)
        low = model.to(torch.bfloat16)(tokens)
    assert low.dtype == torch.bfloat16
    assert (low.float() - ref).abs().max() < 0.1


def test_initialisation_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    a, b = GridGPT("tiny", seed=2), GridGPT("tiny", seed=2)
    GridGPT("tiny", seed=None)
    assert torch.equal(torch.rand(3), expected)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(GridGPT("tiny", seed=3).embed.weight, a.embed.weight)
    assert a.embed.weight.std() < 0.03  # MyGPT's N(0, 0.02) embedding
