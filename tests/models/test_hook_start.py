"""HookPoint.start tells position-aware hooks where they are, also during cached decoding."""

import torch

from gridlens.models import GridGPT


def test_hook_start_matches_absolute_positions_during_cached_generation():
    model = GridGPT("tiny", seed=0).eval()
    tokens = torch.randint(0, 11, (3, 404), generator=torch.Generator().manual_seed(0))
    tokens[:, ::101] = torch.tensor([11, 12, 13, 14])
    zero_at = 350  # ablate the MLP output at one absolute position only

    def ablate(x, hook):
        p = zero_at - hook.start
        if 0 <= p < x.shape[1]:
            x = x.clone()
            x[:, p] = 0
        return x

    hooks = [("blocks.0.hook_mlp_out", ablate)]
    with model.hooks(hooks):
        cached = model.complete(tokens)
        uncached = model.complete(tokens, use_cache=False)
    assert torch.equal(cached, uncached)
