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
