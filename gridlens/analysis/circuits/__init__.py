"""Edge-level circuits: the edge graph and path patching, ACDC, EAP and EAP-IG."""

from gridlens.analysis.circuits.acdc import acdc, acdc_sweep, default_thresholds
from gridlens.analysis.circuits.culture import (
    CircuitResult,
    culture_problem,
    draw_circuit,
    find_circuit,
)
from gridlens.analysis.circuits.eap import eap, eap_ig
from gridlens.analysis.circuits.graph import Edge, EdgeGraph, edge_forward, path_patch
from gridlens.analysis.circuits.metrics import METRICS, EdgeProblem, EdgeRun

__all__ = [
    "METRICS",
    "CircuitResult",
    "Edge",
    "EdgeGraph",
    "EdgeProblem",
    "EdgeRun",
    "acdc",
    "acdc_sweep",
    "culture_problem",
    "default_thresholds",
    "draw_circuit",
    "eap",
    "eap_ig",
    "edge_forward",
    "find_circuit",
    "path_patch",
]
