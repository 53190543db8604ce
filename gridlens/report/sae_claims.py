"""Claims 6 and 7 of the published investigation: a few SAE latents of the task-specific MLP
bring back the answers its ablation breaks (the write-up's Figure 5), and switching them on in other
tasks' quizzes does not make those follow the task's rule (the write-up saw no effect).

The SAE reads the chosen MLP's output (`blocks.{l}.hook_mlp_out`). The "transform cell" of a
quiz is the first cell the ablated model gets wrong; the clean model's activation there is the
one the latents are read at (logits at position p predict token p).
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from gridlens.analysis.core import predicted_cells
from gridlens.report.claims import INDUCES, RECOVERS, Claim, grade, not_applicable
from gridlens.report.mlp_claims import MlpStudy, follows_rules
from gridlens.sae.splice import encode_inference, window

RECOVER_ID, INDUCE_ID = "sparse_feature_recovers", "feature_induces_behaviour"
RECOVER_TEXT = (
    "A few SAE latents of that MLP bring back the answers its ablation breaks: keeping only the "
    "top latent (x1, x5, x15) or the top 3 in place of the MLP on the predicted grid (the "
    "write-up: 29.4%, 64.7%, 67.6% of the broken quizzes right)."
)
INDUCE_TEXT = (
    "Switching those latents on in quizzes of other tasks moves their answers toward that "
    "task's rule, as judged by its checker (the write-up saw no effect: 'not reproduced' agrees "
    "with it)."
)
#: (name, latents: "none" / "top1" / "top3" / "all", factor) of the recovery test
CONDITIONS = (
    ("no latent", "none", 1.0),
    ("top 1", "top1", 1.0),
    ("top 1 x5", "top1", 5.0),
    ("top 1 x15", "top1", 15.0),
    ("top 3", "top3", 1.0),
    ("top 3 x5", "top3", 5.0),
    ("all latents", "all", 1.0),
)


def _cells(found: MlpStudy) -> tuple[torch.Tensor, torch.Tensor]:
    """(truth tokens of the broken quizzes, the position of each one's transform cell)."""
    tokens = found.quizzes.tokens[found.broken]
    return tokens, predicted_cells(tokens).start + found.first_wrong[found.broken]


@torch.no_grad()
def latents_at_cell(model, sae, found: MlpStudy) -> tuple[torch.Tensor, list[list[int]]]:
    """([m, d_sae] the clean model's latents at each transform cell, [latent, count] of the
    latents among each example's 3 most active, most frequent first)."""
    tokens, pos = _cells(found)
    _, cache = model.run_with_cache(tokens.to(model.device), names=found.site)
    acts = cache[found.site][torch.arange(len(tokens)), pos.to(model.device)]
    latents = encode_inference(sae, acts.to(sae.W_enc.dtype)).float().cpu()
    top = latents.topk(min(3, latents.shape[1]), dim=1)
    counts = Counter(
        j
        for row, v in zip(top.indices.tolist(), top.values, strict=True)
        for j, a in zip(row, v, strict=True)
        if a > 0
    )
    return latents, [[j, c] for j, c in counts.most_common()]


def learned_multiplier(
    model, sae, found: MlpStudy, steps: int = 30, lr: float = 0.2, weight_decay: float = 2.0
) -> torch.Tensor:
    """The write-up's latent mask: a multiplier per latent, zero at first, trained with strong
    weight decay so that decode(latents x m) in place of the MLP output at each
    transform cell gives the right token there (cross-entropy). Plain gradient descent, not
    Adam: with Adam every latent whose gradient keeps its sign settles at the same value
    (1 / weight_decay), whereas here each settles near -gradient / weight_decay, which ranks
    the latents by how much they help."""
    tokens, pos = _cells(found)
    tokens, pos = tokens.to(model.device), pos.to(model.device)
    layer, rows = found.layer, torch.arange(len(tokens), device=model.device)
    names = [f"blocks.{layer}.hook_resid_mid", found.site]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names=names)
    mid, out = cache[names[0]], cache[names[1]]
    latents = encode_inference(sae, out[rows, pos].to(sae.W_enc.dtype)).detach()
    m = torch.zeros(sae.cfg.d_sae, device=model.device, requires_grad=True)
    optimizer = torch.optim.SGD([m], lr=lr, weight_decay=weight_decay)
    with frozen(model, sae):
        for _ in range(steps):
            new = out.clone()
            new[rows, pos] = sae.decode(latents * m).to(out.dtype)
            logits = model.unembed(model.run_blocks(mid, layer, mlp_out=new))[rows, pos]
            loss = F.cross_entropy(logits, tokens[rows, pos])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return m.detach().cpu()


@contextmanager
def frozen(*modules):
    """Parameters of `modules` without gradients inside the block, as they were after it."""
    params = [p for mod in modules for p in mod.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def ranking(multiplier: torch.Tensor, counts: list[list[int]]) -> list[int]:
    """Latents by learned multiplier (those above 0.1), then by count at the transform cells."""
    order = multiplier.argsort(descending=True).tolist()
    kept = [j for j in order if multiplier[j] > 0.1]
    return kept + [j for j, _ in counts if j not in kept]


def stacked_generation(model, tokens: torch.Tensor, hook) -> torch.Tensor:
    """Greedy completion of `tokens` (k conditions stacked row-wise) with `hook` at its site."""
    with model.hooks([hook]):
        return model.complete(tokens.to(model.device)).cpu()


def recon_hook(sae, weights: torch.Tensor, grid: torch.Tensor):
    """The site's activation replaced on the `grid` positions by decode(latents x weights[row]);
    elsewhere it is left as it is."""

    def fn(x, hook):
        sel = window(grid, hook, x.shape[1]).to(x.device)[None, :, None]
        f = encode_inference(sae, x.to(sae.W_enc.dtype)) * weights[:, None].to(x.device)
        return torch.where(sel, sae.decode(f).to(x.dtype), x)

    return (sae.cfg.hook_name, fn)


def add_hook(site: str, rows: torch.Tensor, grid: torch.Tensor):
    """Adds rows[i] to row i's activation at `site` on the `grid` positions."""

    def fn(x, hook):
        sel = window(grid, hook, x.shape[1]).to(x.device)[None, :, None]
        return x + sel * rows[:, None].to(x.device, x.dtype)

    return (site, fn)


def _grid(tokens: torch.Tensor) -> torch.Tensor:
    """[L] bool: the predicted grid's positions."""
    grid = torch.zeros(tokens.shape[1], dtype=torch.bool)
    grid[predicted_cells(tokens)] = True
    return grid


def condition_weights(top: list[int], d_sae: int) -> torch.Tensor:
    """[conditions, d_sae] latent weights of CONDITIONS."""
    out = torch.zeros(len(CONDITIONS), d_sae)
    for i, (_, which, factor) in enumerate(CONDITIONS):
        if which == "all":
            out[i] = factor
        elif which != "none":
            out[i, top[: int(which[-1])]] = factor
    return out


def _right(out: torch.Tensor, tokens: torch.Tensor, k: int) -> list[float]:
    """Share of each of k stacked conditions' completions that are entirely right."""
    cells = predicted_cells(tokens)
    ok = (out[:, cells] == tokens.repeat(k, 1)[:, cells]).all(1)
    return ok.view(k, -1).float().mean(1).tolist()


def sparse_feature_recovers(model, sae, found: MlpStudy) -> tuple[Claim, list[int], torch.Tensor]:
    """Claim 6; also the ranked latents and the latents at the transform cells, for claim 7."""
    cid, m = RECOVER_ID, int(found.broken.sum())
    if m == 0:
        return not_applicable(cid, RECOVER_TEXT, "no quiz broken by the ablation"), [], None
    latents, counts = latents_at_cell(model, sae, found)
    multiplier = learned_multiplier(model, sae, found)
    top = ranking(multiplier, counts)
    if not top:
        return not_applicable(cid, RECOVER_TEXT, "no latent fires at the cells"), [], latents
    tokens, _ = _cells(found)
    weights = condition_weights(top, sae.cfg.d_sae).repeat_interleave(m, 0)
    hook = recon_hook(sae, weights, _grid(tokens))
    out = stacked_generation(model, tokens.repeat(len(CONDITIONS), 1), hook)
    shares = dict(
        zip([c[0] for c in CONDITIONS], _right(out, tokens, len(CONDITIONS)), strict=True)
    )
    best = max(v for k, v in shares.items() if k not in ("no latent", "all latents"))
    gain = best - shares["no latent"]
    verdict = (
        "reproduced"
        if best >= RECOVERS[0] and gain >= RECOVERS[1]
        else ("partly" if gain >= RECOVERS[2] else "not reproduced")
    )
    evidence = {
        "site": found.site,
        "broken_quizzes": m,
        "right_share": shares,
        "top_latents": top[:3],
        "most_active_counts": counts[:8],
        "multiplier": {j: float(multiplier[j]) for j in top[:12] if multiplier[j] > 0.1},
    }
    reason = (
        "the MLP's output on the predicted grid replaced by the SAE's reconstruction from the "
        "kept latents (the 'no latent' baseline: its decoder bias alone), left as it is on the "
        "prompt; latents ranked by the learned multiplier, then by count at the cells"
    )
    return Claim(cid, RECOVER_TEXT, verdict, evidence, reason), top, latents


SCALES = (0.0, 1.0, 5.0)


def feature_induces_behaviour(model, sae, found: MlpStudy, top, latents, others) -> Claim:
    """Claim 7: add the top latents (at their mean value at the transform cells, x SCALES) on
    the predicted grid of `others` (quizzes of other tasks) and check the answers with the
    task's checker; scale 0 is the clean model."""
    cid = INDUCE_ID
    if not top or others is None or len(others) == 0:
        reason = "no latents found for claim 6" if not top else "no quiz of another task"
        return not_applicable(cid, INDUCE_TEXT, reason)
    on = latents[:, top[:3]].mean(0)
    vector = on @ sae.W_dec.detach()[top[:3]].cpu()
    k, tokens = len(SCALES), others.tokens
    steer = torch.cat([s * vector.expand(len(tokens), -1) for s in SCALES])
    out = stacked_generation(model, tokens.repeat(k, 1), add_hook(found.site, steer, _grid(tokens)))
    valid = follows_rules(out, [found.task])[found.task].reshape(k, -1).mean(1)
    lift = float(valid[1:].max() - valid[0])
    evidence = {
        "task": found.task,
        "latents": top[:3],
        "added_values": on.tolist(),
        "scales": list(SCALES),
        "follow_task_rule": dict(zip(map(str, SCALES), map(float, valid), strict=True)),
        "right_answers": dict(zip(map(str, SCALES), _right(out, tokens, k), strict=True)),
        "n_quizzes": len(tokens),
        "lift": lift,
    }
    return Claim(cid, INDUCE_TEXT, grade(lift, *INDUCES), evidence)
