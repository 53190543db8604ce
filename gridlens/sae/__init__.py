"""Sparse dictionaries on a GridGPT's activations (see the README's SAE section)."""

from gridlens.sae.cache import ActivationCache, CachedStore, write_cache
from gridlens.sae.pursuit import gradient_pursuit, matching_pursuit
from gridlens.sae.transcoder import (
    Transcoder,
    TranscoderConfig,
    evaluate_transcoders,
    load_transcoder,
    load_transcoders,
    save_transcoder,
)

__all__ = [
    "ActivationCache",
    "CachedStore",
    "Transcoder",
    "TranscoderConfig",
    "evaluate_transcoders",
    "gradient_pursuit",
    "load_transcoder",
    "load_transcoders",
    "matching_pursuit",
    "save_transcoder",
    "write_cache",
]
