"""DistributedDataParallel on CPU: 2 processes with the gloo backend train one model together."""

from __future__ import annotations

import os
import socket

import torch
import torch.multiprocessing as mp

from gridlens.models import load
from gridlens.training import checkpoint as ckpt
from tests.training.conftest import tiny_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    from gridlens.training.trainer import train

    summary = train(
        tiny_config(steps=3, checkpoint_every=3, device="cpu"), out, echo=lambda *a: None
    )
    # every rank ends with the same weights
    torch.save(summary["model"].state_dict(), f"{out}/rank{rank}.pt")
    assert summary["finished"]


def test_ddp_gloo_two_processes(tmp_path):
    out = str(tmp_path / "ddp")
    mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(out))
    assert state["world_size"] == 2 and state["step"] == 3
    a = torch.load(f"{out}/rank0.pt", weights_only=True)
    b = torch.load(f"{out}/rank1.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    saved = load(f"{out}/model").state_dict()
    assert all(torch.equal(a[k], saved[k]) for k in a)
    # the model moved away from its initialisation
    from gridlens.models import GridGPT

    init = GridGPT(tiny_config().model_config(), seed=0).state_dict()
    assert any(not torch.equal(init[k], a[k]) for k in a)
