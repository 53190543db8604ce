"""Replacement models and attribution graphs over transcoders (see the README's graphs section)."""

from gridlens.graphs.attribution import (
    AttributionGraph,
    attribute,
    graph_scores,
    node_influence,
    prune,
    rows_check,
)
from gridlens.graphs.replacement import ReplacementModel, build_replacement

__all__ = [
    "AttributionGraph",
    "ReplacementModel",
    "attribute",
    "build_replacement",
    "graph_scores",
    "node_influence",
    "prune",
    "rows_check",
]
