"""Figures: matplotlib without a display, and PNGs written atomically (a crash never leaves
half an image in a report folder).

Every plotting function returns its matplotlib Figure (a notebook shows it inline) and writes a
PNG only when given a path: `finish(fig, path)` ends each of them."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from gridlens.errors import ConfigError
from gridlens.io import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def pyplot() -> ModuleType:
    """matplotlib.pyplot, imported on first use (the CLI starts faster), on the Agg backend
    except in a Jupyter kernel, whose inline backend draws the returned figures."""
    import matplotlib

    if "ipykernel" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Save a matplotlib figure as a PNG atomically and close it."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ConfigError(f"figure path {str(path)!r} must end in .png")
    try:
        return atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=dpi))
    finally:
        pyplot().close(fig)


def finish(fig: Figure, path: str | Path | None = None, dpi: int = 110) -> Figure:
    """Write `fig` as a PNG to `path` when one is given, and return it, closed in pyplot: a
    notebook shows the returned figure once, and a loop of plots holds no memory."""
    if path is None:
        pyplot().close(fig)
        return fig
    save_figure(fig, path, dpi)
    return fig
