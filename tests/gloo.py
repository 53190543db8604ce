"""Two gloo processes on CPU for the distributed tests. They meet through a file
(init_method file://), not a TCP port: no free port to pick, so no race with other programs for
it; the group and the join both have a deadline."""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Callable

import pytest
import torch
import torch.multiprocessing as mp

TIMEOUT_S = 300  # both processes together, generous for a loaded machine


def join_group(rank: int, world: int, rendezvous: str) -> None:
    """Set torchrun's environment for `rank` and join the gloo group (one torch thread)."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo",
        init_method=f"file://{rendezvous}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=TIMEOUT_S),
    )


def spawn_two(worker: Callable, rendezvous: str, out: str, what: str) -> None:
    """Run worker(rank, 2, rendezvous, out) in two processes, failing the test (not hanging
    it) past TIMEOUT_S."""
    context = mp.spawn(worker, args=(2, rendezvous, out), nprocs=2, join=False)
    deadline = time.monotonic() + TIMEOUT_S
    while not context.join(timeout=2):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the two {what} processes did not finish within {TIMEOUT_S} s")
