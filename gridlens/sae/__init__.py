"""Sparse dictionaries on a GridGPT's activations (guide: docs/sae.md; tutorial: docs/tutorials)."""

from gridlens.sae.cache import ActivationCache, CachedStore, write_cache
from gridlens.sae.pursuit import gradient_pursuit, matching_pursuit

__all__ = ["ActivationCache", "CachedStore", "gradient_pursuit", "matching_pursuit", "write_cache"]
