"""The clock the benchmark scripts share: wall and process CPU time side by side (on a machine
shared with other jobs, CPU time is the steadier of the two), medians over repeats."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def timed(fn: Callable[[], Any], repeats: int = 1) -> tuple[Any, float, float]:
    """(the last call's result, median wall s, median process CPU s) over `repeats` calls."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return out, statistics.median(walls), statistics.median(cpus)
