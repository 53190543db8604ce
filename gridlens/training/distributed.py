"""Multi-process training through torchrun (DistributedDataParallel).

`torchrun --nproc-per-node N $(which gridlens) train ...` sets RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR / MASTER_PORT; `setup()` reads them and joins the process group: NCCL when the
device is CUDA (one GPU per local rank), gloo on CPU. Without those variables it is a no-op and
training runs in one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from gridlens.errors import ConfigError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def env_world() -> Dist:
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as error:
        raise ConfigError(
            f"malformed torchrun environment (RANK/WORLD_SIZE/LOCAL_RANK): {error}"
        ) from None
    return Dist(rank, world, local)


def setup(device: torch.device) -> Dist:
    """Join the process group described by the environment (if any) and return this process's
    place in it."""
    d = env_world()
    if not d.enabled:
        return d
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, rank=d.rank, world_size=d.world_size)
    return d


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def mean(value: float, d: Dist, device: torch.device) -> float:
    """The mean of a scalar over the processes (the value itself in one process)."""
    if not d.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / d.world_size


def broadcast_flag(flag: bool, d: Dist, device: torch.device) -> bool:
    """Rank 0's value of a boolean, on every rank (used to stop all ranks together)."""
    if not d.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    dist.broadcast(t, 0)
    return bool(t.item())
