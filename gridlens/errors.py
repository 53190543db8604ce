"""One exception hierarchy, so the CLI can print any user-facing error in one line and exit 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class GridlensError(Exception):
    """Base class of every error caused by bad input (argument, file, configuration)."""


class UnknownNameError(GridlensError, KeyError):
    """A task, hook, component or preset name that does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class GridSizeError(GridlensError, ValueError):
    """A grid size a task (or the vocabulary layout) cannot use."""


class TokenError(GridlensError, ValueError):
    """Token tensors of the wrong shape, dtype or range."""


class CheckpointError(GridlensError):
    """A checkpoint or weight file that is missing, malformed, unsafe or of another version."""


class ConfigError(GridlensError, ValueError):
    """An inconsistent configuration."""


def unknown_name(kind: str, name: str, known: Iterable[str]) -> UnknownNameError:
    """An error for `name` that lists the known names and suggests the closest ones."""
    known = list(known)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    listing = ", ".join(known) if len(known) <= 20 else ", ".join(known[:20]) + ", ..."
    return UnknownNameError(f"unknown {kind} {name!r}{hint} (known: {listing})")


class OutputError(GridlensError):
    """An output path that cannot be written (checked before the work starts)."""


class MissingDependencyError(GridlensError, ImportError):
    """An optional package a function needs is not installed."""
