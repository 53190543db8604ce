"""Attribution patching: gradient estimates of every component's activation-patching score from a
few passes instead of one forward per component (Nanda 2023; Kramar et al. 2024, "AtP*").

The quantity estimated is the one `activation_patching` measures: the change of the clean
answer's log-prob m (summed over the answer grid's cells, teacher forced) when one component's
activation in the corrupted run is replaced by the clean run's, normalised per task by
(mean clean m - mean corrupted m). Per pair, with a_c / a_x the clean / corrupted activation
and g = dm/da at the corrupted run:

method="atp": est(c) = sum over positions and features of (a_c - a_x) * g, with a = hook_z
  (heads), mlp.hook_post (neurons), hook_attn_out / hook_mlp_out (layers) or the residual
  stream positions of a block (resid). Two forwards (clean, corrupted) and one backward for all
  components at once.

method="atp*": Kramar et al.'s two changes, as they apply to these components:
  (a) QK fix for heads. AtP on a head's queries and keys linearises the attention softmax,
      which fails where attention saturates. A head's patch is the patch of its queries, keys
      and values at every position; the fix computes the pattern under the clean queries and
      keys exactly (for a whole head: the clean run's pattern A_c) and linearises only after
      it: est = sum_t dm/dz_t . [(A_c - A_x) v_x + A_c (v_c - v_x)]_t. The bracket is exactly
      z_c - z_x, so for whole-head components the QK-fixed estimate IS the AtP estimate on
      hook_z, and atp* computes it that way (tests check the identity against an explicit
      pattern/value computation). The estimate the fix replaces, AtP linear in each head's
      q, k and v (sum over q, k, v of dm/da . (a_c - a_x)), is method="atp-qkv", kept to
      show what the fix buys. Neurons, layers and resid blocks have no softmax of their own:
      linear estimate.
  (b) GradDrop against cancelling paths. For each block l, the corrupted run is repeated with
      the gradient through block l's attention and MLP outputs dropped (detached; the skip
      connection keeps flowing), giving estimates est_l. For a component read first by block
      f (f = its layer + 1; for resid entering block l, f = l), dropping a block before f
      changes nothing (or cuts the component off itself), so est_l is replaced by est there:
      est*(c) = sign(est(c)) * (1 / n_layers) * sum_l |est_l(c)|, per pair. GradDrop ranks
      by magnitude, as in the paper; the sign kept is the undropped estimate's. Costs
      n_layers - 1 extra forward/backward passes (n_layers with resid components);
      grad_drop=False turns it off.

`compare(a, b, k)` measures agreement of two results on the same components: Spearman rank
correlation of the "all" scores (signed, and of their magnitudes) and top-k recall (the share
of b's k largest |scores| that are among a's k largest).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np
import torch

from gridlens.analysis.pairs import PairSet
from gridlens.analysis.patching import (
    PatchingResult,
    Site,
    answer_logprob,
    check_pairs,
    expand_components,
    normalised_scores,
    parse_site,
    per_task_mean,
    predicted_cells,
    task_counts,
)
from gridlens.errors import ConfigError, unknown_name

METHODS = ("atp", "atp*", "atp-qkv")


def _first_reader(s: Site) -> int:
    return s.layer if s.kind == "resid" else s.layer + 1


def _needed(sites: list[Site], method: str) -> list[str]:
    """Hook names cached in both runs (with gradients in the corrupted one)."""
    names = set()
    for s in sites:
        if method == "atp-qkv" and s.kind == "head":
            names |= {f"blocks.{s.layer}.attn.hook_{x}" for x in "qkv"}
        else:
            names.add(s.hook_name)
    return sorted(names)


def _estimates(
    sites: list[Site], method: str, clean: dict, corrupt: dict, grads: dict
) -> torch.Tensor:
    """[n, C] per-pair estimated change of m for each site."""
    n = next(iter(corrupt.values())).shape[0]
    out = torch.zeros(n, len(sites))
    per_hook: dict[str, torch.Tensor] = {}
    for i, s in enumerate(sites):
        if method == "atp-qkv" and s.kind == "head":
            key = f"qkv{s.layer}"
            if key not in per_hook:
                total = 0
                for x in "qkv":
                    h = f"blocks.{s.layer}.attn.hook_{x}"
                    total = total + (grads[h] * (clean[h] - corrupt[h])).sum((1, 3))
                per_hook[key] = total.detach().cpu()
            out[:, i] = per_hook[key][:, s.index]
            continue
        h = s.hook_name
        if h not in per_hook:
            prod = grads[h] * (clean[h] - corrupt[h])
            if s.kind == "head":
                prod = prod.sum((1, 3))  # [n, h]
            elif s.kind == "neuron":
                prod = prod.sum(1)  # [n, d_mlp]
            elif s.kind == "resid":
                prod = prod.sum(2)  # [n, t]
            else:
                prod = prod.sum((1, 2))  # [n]
            per_hook[h] = prod.detach().cpu()
        e = per_hook[h]
        if s.kind in ("head", "neuron"):
            out[:, i] = e[:, s.index]
        elif s.kind == "resid":
            out[:, i] = e[:, s.start : s.stop].sum(1)
        else:
            out[:, i] = e
    return out


def _grad_pass(model, tokens, answer, names, qf, drop: int | None):
    """Corrupted run with gradients: (m per pair, activations, dm/dactivation)."""
    hooks = []
    if drop is not None:
        detach = lambda x, hook: x.detach()  # noqa: E731
        hooks = [(f"blocks.{drop}.hook_attn_out", detach), (f"blocks.{drop}.hook_mlp_out", detach)]
    with torch.enable_grad():
        logits, cache = model.run_with_cache(tokens, names=names, detach=False, fwd_hooks=hooks)
        m = answer_logprob(logits[:, qf:], answer)
        acts = dict(cache.items())
        live = [k for k, v in acts.items() if v.requires_grad]
        got = torch.autograd.grad(m.sum(), [acts[k] for k in live], allow_unused=True)
    grads = {k: torch.zeros_like(v) for k, v in acts.items()}
    for k, g in zip(live, got, strict=True):
        if g is not None:
            grads[k] = g
    return m.detach(), {k: v.detach() for k, v in acts.items()}, grads


def attribution_patching(
    model,
    pairs: PairSet,
    components: str | Sequence[str] = "heads,neurons",
    method: str = "atp",
    resid_block: str = "row",
    chunk: int = 16,
    grad_drop: bool = True,
) -> PatchingResult:
    """Estimate every component's activation-patching score at once (see the module docstring);
    the result has the same form as `activation_patching`'s, so the two compare directly.
    grad_drop=False gives AtP* with the QK fix only (no effect for method="atp")."""
    if method not in METHODS:
        raise unknown_name("attribution method", method, METHODS)
    if chunk < 1:
        raise ConfigError(f"chunk must be >= 1, got {chunk}")
    clean_tok, corrupt_tok = check_pairs(model, pairs)
    names = expand_components(model.cfg, components, resid_block)
    sites = [parse_site(n, model.cfg) for n in names]
    star = method == "atp*"
    n_layers = model.cfg.n_layers
    first = torch.tensor([_first_reader(s) for s in sites])
    drops = [lay for lay in range(n_layers) if star and grad_drop and (first <= lay).any()]
    hook_names = _needed(sites, method)
    qf = predicted_cells(clean_tok).start
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    est, m_c, m_x = [], [], []
    try:
        for lo in range(0, len(clean_tok), chunk):
            c, x = clean_tok[lo : lo + chunk], corrupt_tok[lo : lo + chunk]
            answer = c[:, qf:]
            with torch.no_grad():
                logits, cache = model.run_with_cache(c, names=hook_names)
            clean = dict(cache.items())
            m_c.append(answer_logprob(logits[:, qf:], answer).cpu())
            m, acts, grads = _grad_pass(model, x, answer, hook_names, qf, None)
            m_x.append(m.cpu())
            e = _estimates(sites, method, clean, acts, grads)
            if drops:
                total = torch.zeros_like(e)
                for lay in range(n_layers):
                    if lay in drops:
                        _, acts, grads = _grad_pass(model, x, answer, hook_names, qf, lay)
                        e_l = _estimates(sites, method, clean, acts, grads)
                        total += torch.where(first <= lay, e_l, e).abs()
                    else:
                        total += e.abs()
                e = torch.sign(e) * total / n_layers
            est.append(e)
    finally:
        model.train(was_training)
    m_c_np, m_x_np = torch.cat(m_c).numpy(), torch.cat(m_x).numpy()
    change = torch.cat(est).numpy().T  # [C, n]
    tasks = pairs.tasks
    return PatchingResult(
        method=method,
        pair_kind=pairs.kind,
        components=names,
        scores=normalised_scores(m_x_np[None] + change, m_c_np, m_x_np, tasks),
        clean_logprob=per_task_mean(m_c_np, tasks),
        corrupted_logprob=per_task_mean(m_x_np, tasks),
        n_pairs=task_counts(tasks),
        seconds=time.perf_counter() - t0,
        n_layers=n_layers,
        n_heads=model.cfg.n_heads,
        skipped=dict(pairs.skipped),
    )


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (for Spearman's rho)."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=float)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / counts)[inverse]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (NaN if either side is constant)."""
    ra, rb = _ranks(np.asarray(a, float)), _ranks(np.asarray(b, float))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


def compare(a: PatchingResult, b: PatchingResult, k: int = 10, task: str = "all") -> dict:
    """Agreement of two results on their shared components (b's order): Spearman of the scores,
    of |scores|, and of the scores over the components a scores non-zero ("active": an
    activation that never differs between the runs, e.g. a dead neuron, scores exactly 0 in
    activation patching and ties trivially), and top-k recall (share of b's top-k |scores|
    among a's top-k)."""
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    for r in (a, b):
        if task not in r.scores:
            raise unknown_name("task", task, list(r.scores))
    index = {c: i for i, c in enumerate(a.components)}
    shared = [c for c in b.components if c in index]
    if len(shared) < 2:
        raise ConfigError(
            f"{a.method} and {b.method} results share {len(shared)} component(s); need >= 2"
        )
    sa = np.array([a.scores[task][index[c]] for c in shared], float)
    sb = np.array([b.scores[task][b.components.index(c)] for c in shared], float)
    ok = np.isfinite(sa) & np.isfinite(sb)
    sa, sb = sa[ok], sb[ok]
    nan = float("nan")
    kk = min(k, len(sa))
    top_a = set(np.argsort(-np.abs(sa), kind="stable")[:kk].tolist())
    top_b = set(np.argsort(-np.abs(sb), kind="stable")[:kk].tolist())
    return {
        "a": a.method,
        "b": b.method,
        "n_components": len(sa),
        "spearman": spearman(sa, sb),
        "spearman_abs": spearman(np.abs(sa), np.abs(sb)),
        "spearman_active": spearman(sa[sa != 0], sb[sa != 0]) if (sa != 0).sum() > 1 else nan,
        "n_active": int((sa != 0).sum()),
        "k": kk,
        "top_k_recall": len(top_a & top_b) / kk,
    }


__all__ = ["METHODS", "attribution_patching", "compare", "spearman"]
