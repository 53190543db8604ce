"""The HTML report: `build_report` runs the evaluation and every analysis on a model and writes
one self-contained folder (index.html, PNGs beside it, report.json)."""

from gridlens.lazy import lazy_exports

_EXPORTS = {
    "SIZES": "build",
    "build_report": "build",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
