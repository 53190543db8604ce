"""Edge-level circuits: the edge graph and path patching, ACDC, EAP and EAP-IG."""

from gridlens.lazy import lazy_exports

_EXPORTS = {
    "CircuitResult": "culture",
    "Edge": "graph",
    "EdgeGraph": "graph",
    "EdgeProblem": "metrics",
    "EdgeRun": "metrics",
    "METRICS": "metrics",
    "acdc": "acdc",
    "acdc_sweep": "acdc",
    "culture_problem": "culture",
    "default_thresholds": "acdc",
    "draw_circuit": "culture",
    "eap": "eap",
    "eap_ig": "eap",
    "edge_forward": "graph",
    "find_circuit": "culture",
    "path_patch": "graph",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
