"""Refusing work that cannot fit: estimates of memory checked before the work starts."""

from __future__ import annotations

import os

from gridlens.errors import ConfigError, GridlensError


def memory_bytes() -> int:
    """This machine's physical memory."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.3g} {unit}"
        n /= 1024
    raise AssertionError  # unreachable: the loop returns at PiB


def check_fits(n_bytes: float, what: str, error: type[GridlensError] = ConfigError) -> None:
    """Raise `error` if `what` needs about `n_bytes` of memory, more than this machine has."""
    total = memory_bytes()
    if n_bytes > total:
        raise error(
            f"{what} needs about {human_bytes(n_bytes)} of memory, more than this machine's "
            f"{human_bytes(total)}; ask for less"
        )
