"""Replacement models and attribution graphs over transcoders (guide: docs/graphs.md)."""

from gridlens.lazy import lazy_exports

_EXPORTS = {
    "AttributionGraph": "attribution",
    "ReplacementModel": "replacement",
    "attribute": "attribution",
    "build_replacement": "replacement",
    "check_interventions": "interventions",
    "graph_scores": "attribution",
    "label_graph": "labels",
    "node_influence": "attribution",
    "prune": "attribution",
    "rows_check": "attribution",
    "write_graph_page": "html",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
