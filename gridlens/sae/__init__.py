"""Sparse dictionaries on a GridGPT's activations (see the README's SAE section)."""

from gridlens.sae.pursuit import gradient_pursuit, matching_pursuit

__all__ = ["gradient_pursuit", "matching_pursuit"]
