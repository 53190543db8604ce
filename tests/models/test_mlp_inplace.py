"""The MLP's ReLU runs in place only when no hook saw its input: caches keep hook_pre intact."""

from __future__ import annotations

import torch

from gridlens.models import GridGPT


def test_cached_hook_pre_keeps_its_negative_values():
    model = GridGPT("tiny", seed=3).eval()
    tokens = torch.randint(0, 11, (2, 404), generator=torch.Generator().manual_seed(0))
    names = ["blocks.0.mlp.hook_pre", "blocks.0.mlp.hook_post"]
    _, cache = model.run_with_cache(tokens, names=names)
    pre, post = cache[names[0]], cache[names[1]]
    assert (pre < 0).any()
    torch.testing.assert_close(post, pre.clamp(min=0))
    seen = []
    with model.hooks([(names[0], lambda x, hook: seen.append(x))]):
        model(tokens)
    torch.testing.assert_close(seen[0], pre)


def test_resid_post_equals_the_reference_mlp_of_resid_mid():
    model = GridGPT("tiny", seed=3).eval()
    tokens = torch.randint(0, 11, (2, 404), generator=torch.Generator().manual_seed(1))
    names = ["blocks.1.hook_resid_mid", "blocks.1.hook_resid_post"]
    _, cache = model.run_with_cache(tokens, names=names)
    mid, block = cache[names[0]], model.blocks[1]
    y = torch.nn.functional.layer_norm(mid, (model.cfg.d_model,), block.ln2.weight, block.ln2.bias)
    with torch.no_grad():
        expected = mid + block.mlp.fc_out(torch.relu(block.mlp.fc_in(y)))
    torch.testing.assert_close(cache[names[1]], expected)
