"""Scoring circuit discovery and SAEs on tracr-compiled models, whose ground truth is exact.

Circuit: a compiled head or MLP is in the circuit iff tracr gave it weights (a layer's unused
heads and MLPs are all zero); activation patching and AtP score every component, as for the
trained models (:func:`gridlens.groundtruth.scoring.circuit_discovery`), against that set (ROC
AUC, and the recall of :func:`found`). SAE: the final residual stream is a labelled basis, so every
categorical direction (``hist:2``) is a known feature; an SAE trained on it is scored by the
best latent's detection F1 per feature and by the cosine of the nearest decoder row to the
feature's direction (mean max cosine).
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from gridlens.groundtruth.sae import train_sae
from gridlens.groundtruth.scoring import f1_matrix, roc_auc
from gridlens.groundtruth.tracr_models import TracrModel

PAD = "compiler_pad"


def all_inputs(model: TracrModel, limit: int = 4096) -> torch.Tensor:
    """Every input of every length (BOS first, padded to full length), at most ``limit``, as
    token ids. Why every length: a variable such as reverse's ``length`` is constant over
    inputs of one length, so patching between them could never show the heads that compute it."""
    vocab = sorted(k for k in model.cfg.input_map if k not in ("BOS", PAD))
    n = model.cfg.n_ctx - 1
    rows = (
        ["BOS", *r] + [PAD] * (n - length)
        for length in range(1, n + 1)
        for r in itertools.product(vocab, repeat=length)
    )
    return model.tokens(list(itertools.islice(rows, limit)))


def _content(model: TracrModel, tokens: torch.Tensor) -> torch.Tensor:
    """[batch, pos] mask of the positions that carry an answer (not BOS, not padding)."""
    keep = tokens != model.cfg.input_map.get(PAD, -1)
    keep[:, 0] = False
    return keep


def components(model: TracrModel) -> list[tuple[str, int | None, bool]]:
    """(hook, head or None, has weights) for every head and MLP in order."""
    out = []
    for layer, w in enumerate(model.blocks):
        for h in range(model.cfg.n_heads):
            out.append((f"blocks.{layer}.attn.hook_z", h, bool(w["W_O"][h].abs().sum() > 0)))
        out.append((f"blocks.{layer}.hook_mlp_out", None, bool(w["W_out"].abs().sum() > 0)))
    return out


def _metric(model: TracrModel, out: torch.Tensor, clean_class: torch.Tensor, keep) -> torch.Tensor:
    """Per input: the readout of the clean answer summed over its answering positions."""
    picked = out if not model.cfg.output_values else out.gather(-1, clean_class[..., None])
    return (picked[..., 0] * keep).sum(-1)


def circuit_scores(model: TracrModel, tokens: torch.Tensor) -> dict:
    """Activation patching and AtP per component against the compiled circuit (ROC AUC)."""
    source = torch.roll(tokens, 1, 0)
    keep_pos = _content(model, tokens)
    comps = components(model)
    hooks = sorted({c[0] for c in comps})
    with torch.no_grad():
        clean_out, _ = model.run_with_cache(tokens, [])
        cls = clean_out.argmax(-1)
        clean = _metric(model, clean_out, cls, keep_pos)
        _, cache = model.run_with_cache(source, hooks)
    patching = []
    for hook, head, _ in comps:

        def swap(act, _point, head=head, src=cache[hook]):
            if head is None:
                return src
            act = act.clone()
            act[:, :, head] = src[:, :, head]
            return act

        with torch.no_grad():
            out = model.run_with_hooks(tokens, [(hook, swap)])
        patching.append(float((_metric(model, out, cls, keep_pos) - clean).abs().mean()))
    saved: dict[str, torch.Tensor] = {}

    def keep(act, point):
        act.retain_grad()
        saved[point.name] = act

    out = model.run_with_hooks(tokens, [(h, keep) for h in hooks])
    _metric(model, out, cls, keep_pos).sum().backward()
    model.zero_grad(set_to_none=True)
    atp = []
    for hook, head, _ in comps:
        delta = (cache[hook] - saved[hook].detach()) * saved[hook].grad
        delta = delta[:, :, head] if head is not None else delta
        atp.append(float(delta.reshape(len(tokens), -1).sum(1).abs().mean()))
    truth = [c[2] for c in comps]
    return {
        "components": [f"{h}[{k}]" if k is not None else h for h, k, _ in comps],
        "in_circuit": truth,
        "activation_patching": patching,
        "atp": atp,
        "auc_activation_patching": roc_auc(patching, truth),
        "auc_atp": roc_auc(atp, truth),
        "recall_activation_patching": found(patching, truth),
        "recall_atp": found(atp, truth),
    }


def found(scores: list[float], truth: list[bool], relative: float = 1e-3) -> float:
    """Share of the circuit's components scoring above ``relative`` x the top score. Why: the
    parts tracr leaves empty score exactly 0, so the ROC AUC is 1 whenever the circuit's parts
    score anything at all; recall says whether they score enough to be noticed."""
    s = np.asarray(scores)
    hit = s > relative * s.max() if s.max() > 0 else np.zeros(len(s), bool)
    t = np.asarray(truth, bool)
    return float(hit[t].mean()) if t.any() else float("nan")


def sae_scores(model: TracrModel, tokens: torch.Tensor, steps: int = 1000, seed: int = 0) -> dict:
    """A TopK SAE on the last residual stream against its labelled categorical directions."""
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, last)
    acts = cache[last][_content(model, tokens)]
    cat = [i for i, name in enumerate(model.cfg.residual_labels) if ":" in name]
    y = acts[:, cat] > 0.5
    occurs = y.any(0)
    k = max(1, int(y.sum(1).float().median()))
    sae, report = train_sae(acts, 2 * model.cfg.d_model, "topk", k=k, steps=steps, seed=seed)
    with torch.no_grad():
        active = sae.encode(acts) > 0
    f1 = f1_matrix(y[:, occurs], active).max(1).values
    cos = sae.W_dec.detach()[:, cat][:, occurs].max(0).values
    return {
        "features": int(occurs.sum()),
        "k": k,
        "fvu": report.fvu,
        "mean_best_f1": float(f1.mean()),
        "mean_max_cosine": float(cos.mean()),
        "per_feature": {
            model.cfg.residual_labels[cat[i]]: (float(a), float(b))
            for i, a, b in zip(np.flatnonzero(occurs.numpy()), f1, cos, strict=True)
        },
    }
