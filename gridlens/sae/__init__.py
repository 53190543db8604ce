"""Sparse dictionaries on a GridGPT's activations (see the README's SAE section)."""

from gridlens.sae.attribution import attribution_study, example_attribution
from gridlens.sae.cache import ActivationCache, CachedStore, write_cache
from gridlens.sae.finetune import finetune_sae
from gridlens.sae.pursuit import gradient_pursuit, matching_pursuit
from gridlens.sae.splitting import feature_splitting, train_family
from gridlens.sae.steering import component_scan, generation_metrics

__all__ = [
    "ActivationCache",
    "CachedStore",
    "attribution_study",
    "component_scan",
    "example_attribution",
    "feature_splitting",
    "finetune_sae",
    "generation_metrics",
    "gradient_pursuit",
    "matching_pursuit",
    "train_family",
    "write_cache",
]
