"""Sparse dictionaries on a GridGPT's activations (see the README's SAE section)."""

from gridlens.sae.cache import ActivationCache, CachedStore, write_cache
from gridlens.sae.pursuit import gradient_pursuit, matching_pursuit

__all__ = ["ActivationCache", "CachedStore", "gradient_pursuit", "matching_pursuit", "write_cache"]
