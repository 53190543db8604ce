"""The HTML report: `build_report` runs the evaluation and every analysis on a model and writes
one self-contained folder (index.html, PNGs beside it, report.json)."""

from gridlens.report.build import SIZES, build_report

__all__ = ["SIZES", "build_report"]
