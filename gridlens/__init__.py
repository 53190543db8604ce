"""gridlens: a workbench for mechanistic interpretability of Fleuret's culture GPTs."""

from gridlens.errors import GridlensError

__all__ = ["GridlensError"]
__version__ = "0.1.0"
