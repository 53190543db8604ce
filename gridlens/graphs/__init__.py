"""Replacement models and attribution graphs over transcoders (see the README's graphs section)."""

from gridlens.graphs.attribution import (
    AttributionGraph,
    attribute,
    graph_scores,
    node_influence,
    prune,
    rows_check,
)
from gridlens.graphs.html import write_graph_page
from gridlens.graphs.interventions import check_interventions
from gridlens.graphs.labels import label_graph
from gridlens.graphs.replacement import ReplacementModel, build_replacement

__all__ = [
    "AttributionGraph",
    "ReplacementModel",
    "attribute",
    "build_replacement",
    "check_interventions",
    "graph_scores",
    "label_graph",
    "node_influence",
    "prune",
    "rows_check",
    "write_graph_page",
]
