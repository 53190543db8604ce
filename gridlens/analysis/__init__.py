"""Circuit analyses of a GridGPT: ablation, activation and attribution patching, attention
heads, direct paths and the logit lens, probes, interventions during generation, universality.

from gridlens.analysis import quiz_set, ablate
quizzes = quiz_set(["frame", "contact"], 16, seed=0)
result = ablate(model, quizzes, "heads", method="mean")
result.plot()                                # a matplotlib Figure; result.to_dataframe()
"""

from gridlens.lazy import lazy_exports

_EXPORTS = {
    "AblationResult": "ablation",
    "Component": "core",
    "DirectPathResult": "direct",
    "GridMetrics": "core",
    "HeadClassification": "attention",
    "InterventionResult": "intervention",
    "LogitLensResult": "direct",
    "PairSet": "pairs",
    "PatchingResult": "patching",
    "ProbeResult": "probes",
    "QuizSet": "core",
    "UniversalityResult": "universality",
    "ablate": "ablation",
    "ablation_hooks": "ablation",
    "activation_patching": "patching",
    "answer_logprob": "patching",
    "as_tokens": "pairs",
    "attribution_patching": "attribution",
    "classify_heads": "attention",
    "compare_units": "universality",
    "component_names": "core",
    "copy_scores": "direct",
    "correlations": "universality",
    "default_sites": "probes",
    "direct_path_matrices": "direct",
    "expand_components": "patching",
    "first_mismatch": "intervention",
    "generate_under": "intervention",
    "grid_loss": "core",
    "grid_metrics": "core",
    "latent_universality": "universality",
    "ln_scales": "direct",
    "logit_lens": "direct",
    "make_pairs": "pairs",
    "neuron_universality": "universality",
    "pairwise": "universality",
    "parse_component": "core",
    "per_task": "core",
    "plot_pairwise": "universality",
    "plot_pattern": "attention",
    "predicted_cells": "core",
    "quiz_set": "core",
    "resid_names": "patching",
    "site_activations": "universality",
    "spearman": "attribution",
    "token_labels": "probes",
    "train_probes": "probes",
    "validate_pairs": "pairs",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
