"""run_blocks continues a forward pass from any block's input, hooks included."""

import pytest
import torch

from gridlens.errors import ConfigError
from gridlens.models import GridGPT


def test_running_the_tail_from_a_cached_residual_gives_the_model_logits():
    model = GridGPT("tiny", seed=0).eval()
    tokens = torch.randint(0, 11, (2, 404), generator=torch.Generator().manual_seed(0))
    tokens[:, ::101] = torch.tensor([11, 12, 13, 14])
    logits, cache = model.run_with_cache(tokens, names="blocks.1.hook_resid_pre")
    tail = model.unembed(model.run_blocks(cache["blocks.1.hook_resid_pre"], 1))
    assert torch.allclose(tail, logits, atol=1e-5)

    def zero(x, hook):
        return torch.zeros_like(x)

    hooks = [("blocks.1.hook_mlp_out", zero)]
    want = model.run_with_hooks(tokens, fwd_hooks=hooks)
    got = model.unembed(model.run_blocks(cache["blocks.1.hook_resid_pre"], 1, fwd_hooks=hooks))
    assert torch.allclose(got, want, atol=1e-5) and not torch.allclose(got, logits, atol=1e-3)
    with pytest.raises(ConfigError, match="run_blocks"):
        model.run_blocks(cache["blocks.1.hook_resid_pre"], 2, 1)


def test_entering_a_block_at_its_head_outputs_or_mlp_activations():
    # the tail from block 1's z (or its MLP activations, or its MLP output) reproduces the full
    # forward, and a hook at the entry point still runs: compared with an ordinary hooked forward
    model = GridGPT("tiny", seed=1).eval()
    tokens = torch.randint(0, 11, (3, 404), generator=torch.Generator().manual_seed(1))
    tokens[:, ::101] = torch.tensor([11, 12, 13, 14])
    names = ["blocks.1.hook_resid_pre", "blocks.1.attn.hook_z"]
    names += ["blocks.1.hook_resid_mid", "blocks.1.mlp.hook_post", "blocks.1.hook_mlp_out"]
    logits, cache = model.run_with_cache(tokens, names=names)
    resid, z = cache["blocks.1.hook_resid_pre"], cache["blocks.1.attn.hook_z"]
    mid, post = cache["blocks.1.hook_resid_mid"], cache["blocks.1.mlp.hook_post"]
    out = cache["blocks.1.hook_mlp_out"]
    assert torch.allclose(
        model.unembed(model.run_blocks(resid, 1, head_outputs=z)), logits, atol=1e-5
    )
    assert torch.allclose(model.unembed(model.run_blocks(mid, 1, mlp_post=post)), logits, atol=1e-5)
    assert torch.allclose(model.unembed(model.run_blocks(mid, 1, mlp_out=out)), logits, atol=1e-5)

    def drop_head_2(x, hook):
        x = x.clone()
        x[:, :, 2] = 0
        return x

    def halve(x, hook):
        return x * 0.5

    for hook_name, fn, kwargs, entry in [
        ("blocks.1.attn.hook_z", drop_head_2, {"head_outputs": z}, resid),
        ("blocks.1.mlp.hook_post", halve, {"mlp_post": post}, mid),
        ("blocks.1.hook_mlp_out", halve, {"mlp_out": out}, mid),
    ]:
        want = model.run_with_hooks(tokens, fwd_hooks=[(hook_name, fn)])
        got = model.unembed(model.run_blocks(entry, 1, fwd_hooks=[(hook_name, fn)], **kwargs))
        assert torch.allclose(got, want, atol=1e-5) and not torch.allclose(got, logits, atol=1e-3)
    with pytest.raises(ConfigError, match="at most one"):
        model.run_blocks(resid, 1, head_outputs=z, mlp_post=post)
    with pytest.raises(ConfigError, match="at most one"):
        model.run_blocks(mid, 1, mlp_post=post, mlp_out=out)
