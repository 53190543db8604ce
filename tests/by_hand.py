"""Reference computations for the report and analysis tests, written the plain way: full
forwards, hand-written hooks, a log-softmax. They share no code with gridlens.analysis, so a
number that agrees with them was not checked against itself."""

from __future__ import annotations

import torch

CELLS = 100  # the predicted grid: the last 100 tokens; logits at p predict token p


def cells(tokens: torch.Tensor) -> torch.Tensor:
    return torch.arange(tokens.shape[1] - CELLS, tokens.shape[1])


@torch.no_grad()
def grid_losses(model, tokens: torch.Tensor, hooks=()) -> torch.Tensor:
    """[n] mean cross-entropy over each quiz's predicted grid, teacher-forced."""
    at = cells(tokens)
    with model.hooks(list(hooks)):
        logp = model(tokens)[:, at].float().log_softmax(-1)
    return -logp.gather(-1, tokens[:, at, None])[..., 0].mean(1)


@torch.no_grad()
def attention_pattern(model, tokens: torch.Tensor, layer: int) -> torch.Tensor:
    """[n, head, query, key] the layer's attention pattern, as its hook sees it."""
    seen = []
    with model.hooks([(f"blocks.{layer}.attn.hook_pattern", lambda act, hook: seen.append(act))]):
        model(tokens)
    return seen[0]


@torch.no_grad()
def greedy_grids(model, tokens: torch.Tensor, hooks=()) -> torch.Tensor:
    """[n, 100] the predicted grid generated greedily, one forward of the whole prefix per
    cell (no cache): the logits at p depend only on the tokens before p."""
    x = tokens.clone()
    with model.hooks(list(hooks)):
        for p in cells(tokens).tolist():
            x[:, p] = model(x[:, : p + 1])[:, p].argmax(-1)
    return x[:, cells(tokens)]


@torch.no_grad()
def mean_ablation(model, tokens: torch.Tensor, hook_name: str, index: int | None = None):
    """A hook writing, at every position, the activation's mean over `tokens`' quizzes at that
    position (only slice `index` of dimension 2 when given: a head of hook_z, a neuron)."""
    seen = {}

    def keep(act, hook):
        seen["mean"] = act.mean(0, keepdim=True)

    with model.hooks([(hook_name, keep)]):
        model(tokens)

    def hook(act, hook):
        mean = seen["mean"][:, : act.shape[1]]
        act = act.clone()
        if index is None:
            return mean.expand_as(act).clone()
        act[:, :, index] = mean[:, :, index]
        return act

    return hook_name, hook


@torch.no_grad()
def head_patched(model, clean: torch.Tensor, corrupted: torch.Tensor, layer: int, head: int):
    """The restored share of the clean answer's log-prob (summed over its cells, averaged over
    pairs) when one head's hook_z is copied from the clean run into the corrupted one."""
    name = f"blocks.{layer}.attn.hook_z"
    at = cells(clean)
    saved = {}

    def keep(act, hook):
        saved["z"] = act.clone()

    def patch(act, hook):
        act = act.clone()
        act[:, :, head] = saved["z"][:, :, head]
        return act

    def logprob(logits):
        logp = logits[:, at].float().log_softmax(-1)
        return logp.gather(-1, clean[:, at, None]).sum((1, 2)).mean()

    with model.hooks([(name, keep)]):
        lp_clean = logprob(model(clean))
    lp_corrupted = logprob(model(corrupted))
    with model.hooks([(name, patch)]):
        lp_patched = logprob(model(corrupted))
    return float((lp_patched - lp_corrupted) / (lp_clean - lp_corrupted))
