"""Sparse dictionaries on a GridGPT's activations (guide: docs/sae.md; tutorial: docs/tutorials).

from gridlens.sae import load_sae, latent_activations
sae = load_sae("default")
acts = latent_activations(model, sae, quizzes)
acts.latent(7)                               # top examples drawn inline in a notebook
"""

from gridlens.lazy import lazy_exports

_EXPORTS = {
    "ActivationCache": "cache",
    "ActivationStore": "activations",
    "AttributionResult": "attribution",
    "CachedStore": "cache",
    "CausalResult": "attribution",
    "EncoderComparison": "encoders",
    "ExpressionMatrix": "features",
    "FeatureActivations": "features",
    "GatedSAE": "gated",
    "LabelResult": "labels",
    "Latent": "features",
    "MaskResult": "attribution",
    "PromotedLogits": "features",
    "SAEConfig": "model",
    "SAEMetrics": "metrics",
    "SAETrainConfig": "train",
    "SparseAutoencoder": "model",
    "SteeringResult": "steering",
    "Transcoder": "transcoder",
    "TranscoderConfig": "transcoder",
    "ablate_latents": "attribution",
    "amplify_latents": "attribution",
    "attribute": "attribution",
    "attribution_study": "attribution",
    "build_sae": "gated",
    "collect": "activations",
    "compare_encoders": "encoders",
    "component_scan": "steering",
    "decoder_direction": "steering",
    "edit_latents": "attribution",
    "evaluate_sae": "metrics",
    "evaluate_transcoders": "transcoder",
    "example_attribution": "attribution",
    "expression_matrix": "features",
    "feature_splitting": "splitting",
    "finetune_sae": "finetune",
    "generation_metrics": "steering",
    "gradient_pursuit": "pursuit",
    "label_latents": "labels",
    "latent_activations": "features",
    "learned_mask": "attribution",
    "load_sae": "io",
    "load_transcoder": "transcoder",
    "load_transcoders": "transcoder",
    "matching_pursuit": "pursuit",
    "position_mask": "activations",
    "promoted_logits": "features",
    "save_sae": "io",
    "save_transcoder": "transcoder",
    "splice_hooks": "splice",
    "steer": "steering",
    "train_family": "splitting",
    "train_sae": "train",
    "write_cache": "cache",
    "write_dashboard": "dashboard",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
