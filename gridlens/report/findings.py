"""The report's stages for the published investigation: its seven claims tested on the model
(`claims`, `findings`), an SAE on the task-specific MLP (`sae`) and the neurons (`neurons`).

Claims 1 to 5 reuse the layer ablation and the head classification of earlier stages; the SAE
is the one given with `--sae`, the shipped one when it reads the chosen site of this model and
reconstructs it, or else a small one trained here. The Findings section goes at the top.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from gridlens.report.html import Link, Section, Table

EV_TO_REUSE = 0.7  # the shipped SAE is used only if it explains this much of the site here


def stage_claims(run) -> None:
    """Claims 1 to 5; keeps the MLP study for the SAE stages."""
    from gridlens.analysis.core import quiz_set
    from gridlens.report import claims as c
    from gridlens.report import mlp_claims as m

    zero = run.objects["ablation_layers_zero"]
    run.claims = [
        c.l0_attention_outsized(zero),
        c.l0_previous_token_head(run.objects["attention"]),
        c.l0_direct_path_copies(run.model, run.quizzes),
    ]
    mlps, tasks, matrix = m.mlp_task_matrix(zero)
    i, j, ratio, nxt = m.most_specific(matrix)
    layer = int(mlps[i][1:].split(".")[0])
    fresh = quiz_set([tasks[j]], 2 * run.n_per_task, seed=run.seed + 2)
    run.study = m.study(run.model, layer, fresh)
    run.claims.append(m.task_specific_mlp(zero, run.study, ratio, tasks[nxt]))
    run.claims.append(m.transform_cell_decides(run.model, run.study))


def stage_findings(run) -> Section:
    """Claims 6 and 7 (on the SAE), then the Findings section of all seven."""
    from gridlens.report import sae_claims as s
    from gridlens.report.claims import not_applicable

    sae = run.sae if run.sae.cfg.hook_name == run.study.site else None
    if sae is None:
        reason = f"the SAE reads {run.sae.cfg.hook_name}, not the chosen {run.study.site}"
        run.claims += [
            not_applicable(s.RECOVER_ID, s.RECOVER_TEXT, reason),
            not_applicable(s.INDUCE_ID, s.INDUCE_TEXT, reason),
        ]
    else:
        claim, top, latents = s.sparse_feature_recovers(run.model, sae, run.study)
        others = _other_tasks(run.quizzes, run.study.task, per_task=4)
        run.claims += [
            claim,
            s.feature_induces_behaviour(run.model, sae, run.study, top, latents, others),
        ]
    run.results["findings"] = [claim.to_json() for claim in run.claims]
    return findings_section(run.claims)


def _other_tasks(quizzes, task: str, per_task: int):
    """Up to `per_task` quizzes of each task but `task` (None if there is none)."""
    others = [t for t in quizzes.task_names() if t != task]
    return first_of_each(quizzes, per_task, others) if others else None


def first_of_each(quizzes, k: int, tasks: list[str] | None = None):
    """The first `k` quizzes of each task (of `tasks`, default all), at least one each."""
    tasks = quizzes.task_names() if tasks is None else tasks
    rows = [np.flatnonzero(quizzes.tasks == t)[: max(1, k)] for t in tasks]
    return quizzes.subset(np.concatenate(rows))


def findings_section(claims) -> Section:
    from gridlens.report.claims import evidence_text

    section = Section(
        "Findings",
        howto=(
            "The claims of the published investigation of Fleuret's culture models (an earlier "
            "public project, on a 12-layer 37M model), each tested on this model by the stages "
            "below, with fixed thresholds. A verdict says whether the claim as worded holds "
            "here: reproduced, partly, not reproduced, or not applicable (with the reason). "
            "Every number is in report.json under 'findings'."
        ),
        findings=[f"{c.id}: {c.verdict}. {evidence_text(c)}" for c in claims],
    )
    rows = [[c.id, c.claim, c.verdict, evidence_text(c)] for c in claims]
    return section.add(Table(["id", "claim", "verdict", "evidence"], rows))


# ------------------------------------------------------------------------------------ SAE


def site_fit(model, sae, quizzes) -> float:
    """The SAE's explained variance of its site on the quizzes' predicted grids (nan if the
    site is missing or of another width)."""
    from gridlens.sae.activations import collect, site_width
    from gridlens.sae.splice import encode_inference

    try:
        if site_width(model, sae.cfg.hook_name) != sae.cfg.d_in:
            return float("nan")
    except Exception:  # a site this model does not have
        return float("nan")
    x = collect(model, quizzes.tokens, sae.cfg.hook_name).to(sae.W_enc.dtype)
    with torch.no_grad():
        err = (x - sae.decode(encode_inference(sae, x))).pow(2).sum()
    return float(1 - err / (x - x.mean(0)).pow(2).sum())


def choose_sae(run) -> tuple[Any, str]:
    """(SAE, where it comes from): --sae, else the shipped one if it fits the chosen site
    here, else one trained now on that site."""
    from gridlens.sae.io import load_sae

    if run.sae_path is not None:
        return load_sae(run.sae_path), f"given with --sae ({run.sae_path})"
    site = run.study.site
    shipped = load_sae("default")
    if shipped.cfg.hook_name == site:
        fit = site_fit(run.model, shipped, first_of_each(run.quizzes, run.n_per_task // 4))
        if fit >= EV_TO_REUSE:
            return shipped, f"the shipped SAE (explains {fit:.1%} of {site} here)"
    return train_small_sae(run, site), f"trained for this report on {run.size.sae_tokens:,} rows"


def train_small_sae(run, site: str):
    """A TopK SAE (4 x d_model latents, k = d_model / 8) on the predicted grids of the tasks."""
    from gridlens.sae.model import SAEConfig
    from gridlens.sae.train import SAETrainConfig, train_sae

    d = run.cfg.d_model
    cfg = SAEConfig(d_in=d, d_sae=4 * d, architecture="topk", k=max(1, d // 8), hook_name=site)
    train = SAETrainConfig(
        tokens=run.size.sae_tokens,
        batch_size=2048,
        model_batch=64,
        buffer_quizzes=128,
        tasks=run.tasks,
        seed=run.seed,
        progress=False,
        device=str(run.model.device),
    )
    return train_sae(run.model, cfg, train, progress=False)


def stage_sae(run) -> Section:
    from gridlens.sae.dashboard import choose_latents, write_dashboard
    from gridlens.sae.features import expression_matrix, latent_activations
    from gridlens.sae.labels import label_latents
    from gridlens.sae.metrics import evaluate_sae

    run.sae, origin = choose_sae(run)
    sae = run.sae
    section = Section(
        "Sparse autoencoder",
        howto=_SAE_HOWTO.format(
            site=sae.cfg.hook_name, arch=sae.cfg.architecture, d_sae=sae.cfg.d_sae, origin=origin
        ),
    )
    metrics = evaluate_sae(run.model, sae, first_of_each(run.quizzes, run.n_per_task // 2))
    acts = latent_activations(run.model, sae, run.quizzes)
    expression, labels = expression_matrix(acts), label_latents(acts)
    latents = choose_latents(expression, labels, 12)
    write_dashboard(
        run.model,
        sae,
        run.quizzes,
        run.folder / "sae_dashboard",
        latents=latents,
        n_examples=4,
        acts=acts,
    )
    run.results["sae"] = {
        "origin": origin,
        "metrics": metrics.to_json(),
        "expression": expression.to_json(),
        "labels": labels.to_json(),
    }
    section.findings = metrics.findings() + expression.findings()
    return section.add(
        run.figure(metrics, "sae_metrics.png", "SAE metrics per task and latent firing rates."),
        run.figure(
            expression,
            "sae_expression.png",
            "Latent x task expression (share of each "
            "latent's mean activation per task), latents grouped by preferred task.",
        ),
        _latent_table(labels, expression, latents),
        Link(
            "sae_dashboard/index.html",
            "The SAE dashboard: a page per latent above, with its "
            "top examples, activation histogram, promoted logits and best labels.",
        ),
    )


_SAE_HOWTO = (
    "A {arch} SAE with {d_sae} latents on {site}, the MLP the findings single out ({origin}). "
    "Metrics on the analysis quizzes' predicted grids: explained variance, L0 (latents firing "
    "per row), dead latents, loss recovered when it replaces the site on the predicted grid "
    "(0: as bad as zeroing it, 1: as good as the model) and greedy accuracy with it spliced in. "
    "Labels come from the world's ground truth: the annotation each latent detects best (F1)."
)


def _latent_table(labels, expression, latents: list[int]) -> Table:
    rows = []
    for j in latents:
        best = labels.best(j)
        label = best[0]["label"] if best else "-"
        f1 = f"{best[0]['f1']:.2f}" if best else "-"
        task = expression.tasks[int(expression.preferred[j])]
        share = expression.share[j].max()
        rows.append([j, label, f1, f"{task} ({share:.0%})", f"{expression.firing[j].max():.1%}"])
    return Table(
        ["latent", "best label", "F1", "preferred task (share)", "max firing"],
        rows,
        "The latents on the dashboard: the most task-specific, then the best labelled.",
    )


# -------------------------------------------------------------------------------- neurons

MAX_NEURONS = 4096  # above this many, only the chosen MLP layer's neurons are estimated
EXACT = 16  # neurons ablated exactly: the top estimates, and as many drawn at random


def neuron_estimates(model, quizzes, layers: list[int]) -> dict[str, float]:
    """First-order estimate of each neuron's mean-ablation effect on the grid loss:
    sum over positions of (mean - activation) x gradient, averaged over quizzes."""
    from gridlens.analysis.core import grid_loss

    names = [f"blocks.{lay}.mlp.hook_post" for lay in layers]
    with torch.enable_grad():
        logits, cache = model.run_with_cache(
            quizzes.tokens.to(model.device), names=names, detach=False
        )
        posts = [cache[n] for n in names]
        grads = torch.autograd.grad(grid_loss(logits, quizzes.tokens).mean(), posts)
    out = {}
    for lay, post, grad in zip(layers, posts, grads, strict=True):
        effect = ((post.mean(0, keepdim=True) - post) * grad).sum((0, 1)).detach().cpu()
        out.update({f"L{lay}N{n}": float(v) for n, v in enumerate(effect)})
    return out


def stage_neurons(run) -> Section:
    cfg, quizzes = run.cfg, first_of_each(run.quizzes, run.n_per_task // 8)
    every = cfg.n_layers * cfg.d_mlp <= MAX_NEURONS
    layers = list(range(cfg.n_layers)) if every else [run.study.layer]
    estimate = neuron_estimates(run.model, quizzes, layers)
    ranked = sorted(estimate, key=lambda n: -estimate[n])
    k, drawn, ratio = exact_check(run, quizzes, ranked)
    top = max(ranked[:k], key=ratio.get)
    run.results["neurons"] = {
        "estimate": estimate,
        "exact_loss_ratio": ratio,
        "top_estimates": ranked[:k],
        "random": drawn,
    }
    section = Section(
        "MLP neurons",
        howto=_NEURON_HOWTO.format(
            n=len(estimate),
            where="every MLP layer" if every else f"L{run.study.layer}.mlp",
            q=len(quizzes),
            k=k,
        ),
    )
    section.findings = [
        f"Mean-ablating one neuron raises the grid loss at most x{ratio[top]:.3g} ({top}); "
        f"{k} random neurons: at most x{max(ratio[n] for n in drawn):.3g}, median "
        f"x{np.median([ratio[n] for n in drawn]):.3g}.",
    ]
    rows = [
        [n, f"{estimate[n]:+.4f}", f"{ratio[n]:.3g}", "top" if n in ranked[:k] else "random"]
        for n in sorted(ratio, key=lambda n: -ratio[n])
    ]
    return section.add(
        Table(["neuron", "estimated loss change", "exact loss x", "chosen as"], rows)
    )


def exact_check(run, quizzes, ranked: list[str]) -> tuple[int, list[str], dict[str, float]]:
    """(k, k neurons drawn at random beyond the top k, exact mean-ablation loss ratio of the
    top k and of those)."""
    from gridlens.analysis.ablation import ablate

    k = min(EXACT, len(ranked) // 2)
    rng = np.random.default_rng(run.seed)
    drawn = [str(n) for n in rng.choice(ranked[k:], k, replace=False)]
    exact = ablate(run.model, quizzes, ranked[:k] + drawn, method="mean", seed=run.seed)
    return k, drawn, {n: v["all"] for n, v in exact.effect("loss_ratio").items()}


_NEURON_HOWTO = (
    "Which single neurons matter, cheaply: the effect of mean-ablating each of the {n} neurons "
    "of {where} on the grid loss is estimated to first order (activation change x gradient) on "
    "{q} quizzes; the {k} largest estimates and {k} neurons drawn at random (the baseline) are "
    "then ablated exactly. 'loss x' is the ablated / clean grid loss (1: no effect)."
)
