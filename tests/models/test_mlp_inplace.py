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


def _graph_nodes(root) -> set[str]:
    seen, stack, names = set(), [root], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return names


def test_training_relu_is_in_place_without_copying_the_buffer_in_backward():
    # the in-place ReLU acts on the product itself, not on a view of it: no CopySlices node
    # (which would copy the whole batch x pos x d_mlp gradient buffer), and the gradient equals
    # that of the out-of-place ReLU (forced by a hook that only looks at hook_pre)
    model = GridGPT("tiny", seed=5).train()
    tokens = torch.randint(0, 11, (3, 404), generator=torch.Generator().manual_seed(2))
    weights = torch.randn(model(tokens).shape, generator=torch.Generator().manual_seed(3))

    def grads(hooks) -> list[torch.Tensor]:
        model.zero_grad(set_to_none=True)
        with model.hooks(hooks):
            loss = (model(tokens) * weights).sum()
        assert "CopySlices" not in _graph_nodes(loss.grad_fn)
        loss.backward()
        return [p.grad.clone() for p in model.parameters()]

    in_place = grads([])
    looked = grads([("blocks.0.mlp.hook_pre", lambda x, hook: None)])
    for a, b in zip(in_place, looked, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
