"""HookPoint.start tells position-aware hooks where they are, also during cached decoding."""

import torch

from gridlens.models import last_grid_positions


def test_hook_start_matches_absolute_positions_during_cached_generation(tiny, quizzes):
    """`tiny` is the structured test model (non-trivial, quiz-dependent output), so an
    ablation inside the generated grid must change the completion; cached and uncached
    decoding must agree on that changed completion."""
    tokens = quizzes[:8]
    zero_at = last_grid_positions(tokens.shape[1]).start + 3  # one absolute generated position

    def ablate(x, hook):
        p = zero_at - hook.start
        if 0 <= p < x.shape[1]:
            x = x.clone()
            x[:, p] = 0
        return x

    clean = tiny.complete(tokens)
    with tiny.hooks([("blocks.0.hook_mlp_out", ablate)]):
        cached = tiny.complete(tokens)
        uncached = tiny.complete(tokens, use_cache=False)
    assert not torch.equal(cached, clean)  # the ablation reached the decoded positions
    assert torch.equal(cached[:, :zero_at], clean[:, :zero_at])  # causal: nothing earlier changes
    assert torch.equal(cached, uncached)
