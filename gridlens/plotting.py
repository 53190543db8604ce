"""Figures: matplotlib without a display, and PNGs written atomically (a crash never leaves
half an image in a report folder)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from gridlens.errors import ConfigError
from gridlens.io import atomic_write


def pyplot() -> ModuleType:
    """matplotlib.pyplot on the Agg backend (imported on first use: the CLI starts faster)."""
    import matplotlib

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
