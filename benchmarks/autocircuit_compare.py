"""Our ACDC, EAP and EAP-IG against the `auto-circuit` package's on the shipped `parenthesis`
ground-truth model: edge ROC AUC against the same true edges, and time (issue 18).

auto-circuit does not install into the project's environment; run it from a separate venv
that has auto-circuit beside a TransformerLens 3 and the same torch (RESULTS.md says how):

    OMP_NUM_THREADS=1 PYTHONPATH=. /work/venv_ac/bin/python benchmarks/autocircuit_compare.py

auto-circuit runs on our TransformerLens export of the model (`to_transformer_lens`). It scores
one output position per prompt (`slice_output="last_seq"`), so both sides score only the last
position (is the whole string balanced so far). Both patch every edge's sender from the
corrupted run (the inputs rolled by one, as `groundtruth eval` does) at every position.
auto-circuit names its nodes `Resid Start`, `A{l}.{h}` (`.Q|K|V` as receivers), `MLP {l}`,
`Resid End`; they are mapped to ours and scored as (sender, receiving node) pairs, a pair
taking its best edge, as `gridlens.groundtruth.edges` does. ACDC: both over the same
thresholds, `groundtruth eval`'s 6 (KL on the last position); an edge's score is how many
thresholds keep it (ours) or the smallest threshold that prunes it, infinite if none does
(auto-circuit's). EAP: the gradient of the logit difference at the clean run; EAP-IG: 8 points
on the path for both (auto-circuit's include both ends, ours are midpoints). Times: wall and
process CPU seconds, median of `--repeats` calls (ACDC: one call).
"""

from __future__ import annotations

import argparse
import json
import platform

import numpy as np
import torch
from timing import timed

from gridlens.analysis.circuits import EdgeProblem, EdgeRun, acdc, default_thresholds, eap, eap_ig
from gridlens.groundtruth.edges import gt_problem, pair_index, pair_max, true_pairs
from gridlens.groundtruth.iit import load_run
from gridlens.groundtruth.scoring import roc_auc
from gridlens.groundtruth.shipped import resolve_run
from gridlens.models.transformer_lens import to_transformer_lens


def last_position(problem: EdgeProblem) -> EdgeProblem:
    """The same pairs scored at the last position only."""
    answer = torch.full_like(problem.answer, -1)
    wrong = torch.full_like(problem.wrong, -1)
    answer[:, -1], wrong[:, -1] = problem.answer[:, -1], problem.wrong[:, -1]
    return EdgeProblem(problem.clean, problem.corrupted, answer, wrong)


def node_name(name: str) -> str:
    """An auto-circuit node -> ours: `A1.2.Q` -> `L1H2`, `MLP 0` -> `MLP0`."""
    if name in ("Resid Start", "Resid End"):
        return "input" if name == "Resid Start" else "logits"
    if name.startswith("MLP "):
        return "MLP" + name[4:]
    layer, head = name[1:].split(".")[:2]
    return f"L{layer}H{head}"


def ours(model, problem: EdgeProblem, thresholds: list[float], args) -> dict:
    run = EdgeRun(model.eval(), problem)
    methods = {
        "acdc": (lambda: sum(acdc(run, t, "kl").float() for t in thresholds), 1),
        "eap": (lambda: eap(run, "logit_diff"), args.repeats),
        "eap_ig": (lambda: eap_ig(run, "logit_diff", steps=8), args.repeats),
    }
    pairs, index = pair_index(run.graph)
    out = {}
    for name, (fn, repeats) in methods.items():
        scores, wall, cpu = timed(fn, repeats)
        per_pair = pair_max(scores, index, len(pairs)).numpy()
        out[name] = {
            "scores": dict(zip(pairs, per_pair.tolist(), strict=True)),
            "wall_s": wall,
            "cpu_s": cpu,
        }
    return out


def alias_kv_cache() -> None:
    """auto-circuit 1.0.1 imports TransformerLens 1-2's key-value cache by its old name and
    module, which TransformerLens 3 renamed (``transformer_lens.cache.key_value_cache``); it
    only annotates with it, so the old names are pointed at the new class."""
    import sys
    import types

    import transformer_lens
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    old = types.ModuleType("transformer_lens.past_key_value_caching")
    old.HookedTransformerKeyValueCache = TransformerLensKeyValueCache
    sys.modules.setdefault(old.__name__, old)
    if not hasattr(transformer_lens, "HookedTransformerKeyValueCache"):
        transformer_lens.HookedTransformerKeyValueCache = TransformerLensKeyValueCache


def theirs(model, problem: EdgeProblem, thresholds: list[float], args) -> dict:
    alias_kv_cache()
    from auto_circuit.data import PromptDataLoader, PromptDataset
    from auto_circuit.prune_algos.ACDC import acdc_prune_scores
    from auto_circuit.prune_algos.mask_gradient import mask_gradient_prune_scores
    from auto_circuit.utils.graph_utils import patchable_model

    tl = to_transformer_lens(model)
    for flag in ("use_attn_result", "use_attn_in", "use_split_qkv_input", "use_hook_mlp_in"):
        setattr(tl.cfg, flag, True)
    for p in tl.parameters():
        p.requires_grad_(False)
    patchable = patchable_model(tl, factorized=True, slice_output="last_seq", separate_qkv=True)
    data = PromptDataset(
        problem.clean, problem.corrupted, list(problem.answer[:, -1:]), list(problem.wrong[:, -1:])
    )
    loader = PromptDataLoader(data, seq_len=None, diverge_idx=0, batch_size=len(problem))
    with torch.no_grad():
        gap = (patchable(problem.clean)[:, -1] - model(problem.clean)[:, -1]).abs().max()
    print(json.dumps({"export_max_logit_gap": float(gap)}))
    methods = {
        "acdc": (
            lambda: acdc_prune_scores(patchable, loader, None, tao_exps=[0], tao_bases=thresholds),
            1,
        ),
        "eap": (
            lambda: mask_gradient_prune_scores(
                patchable, loader, None, "logit", "avg_diff", mask_val=0.0
            ),
            args.repeats,
        ),
        "eap_ig": (
            lambda: mask_gradient_prune_scores(
                patchable, loader, None, "logit", "avg_diff", integrated_grad_samples=7
            ),
            args.repeats,
        ),
    }
    out = {}
    for name, (fn, repeats) in methods.items():
        scores, wall, cpu = timed(fn, repeats)
        per_pair: dict[tuple[str, str], float] = {}
        for edge in patchable.edges:
            key = (node_name(edge.src.name), node_name(edge.dest.name))
            value = float(edge.prune_score(scores).abs())
            per_pair[key] = max(per_pair.get(key, -np.inf), value)
        out[name] = {"scores": per_pair, "wall_s": wall, "cpu_s": cpu}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=200, help="pairs")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats of EAP, EAP-IG")
    parser.add_argument("--thresholds", type=int, default=6, help="ACDC thresholds (both)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, bench, _ = load_run(resolve_run("parenthesis")[0])
    tokens, _ = bench.generate(args.examples, np.random.default_rng(args.seed))
    problem = last_position(gt_problem(model, bench, tokens, None))
    truth = true_pairs(bench)
    thresholds = default_thresholds(EdgeRun(model.eval(), problem), "kl", args.thresholds)
    results = {
        "ours": ours(model, problem, thresholds, args),
        "auto-circuit": theirs(model, problem, thresholds, args),
    }
    head = {"machine": platform.machine(), "torch": torch.__version__, "pairs": len(problem)}
    print(json.dumps({**head, "true_pairs": sorted(map("->".join, truth))}))
    for side, methods in results.items():
        for name, r in methods.items():
            pairs = sorted(r["scores"])
            labels = np.array([p in truth for p in pairs])
            auc = roc_auc(np.array([r["scores"][p] for p in pairs]), labels)
            row = {
                "side": side,
                "method": name,
                "pairs_scored": len(pairs),
                "auc": auc,
                "wall_s": r["wall_s"],
                "cpu_s": r["cpu_s"],
            }
            print(json.dumps(row))


if __name__ == "__main__":
    main()
