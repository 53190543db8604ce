"""DistributedDataParallel on CPU: 2 processes with the gloo backend train one model together,
and end where one process trained on the two ranks' batches concatenated ends.

The processes meet through a file (init_method file://), not a TCP port: no free port to pick,
so no race with other programs for it; the group and the join both have a deadline."""

from __future__ import annotations

import datetime
import os
import time

import pytest
import torch
import torch.multiprocessing as mp

from gridlens.models import GridGPT, load
from gridlens.training import checkpoint as ckpt
from gridlens.training.data import QuizStream, TestSet
from gridlens.training.trainer import lr_at, make_optimizer, sequence_loss
from tests.training.conftest import tiny_config

STEPS = 3
TIMEOUT_S = 300  # both processes together, generous for a loaded machine


def _worker(rank: int, world: int, rendezvous: str, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    # joined here, so the trainer's setup() finds the group ready (and its cleanup ends it)
    torch.distributed.init_process_group(
        "gloo",
        init_method=f"file://{rendezvous}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=TIMEOUT_S),
    )
    from gridlens.training.trainer import train

    summary = train(
        tiny_config(steps=STEPS, checkpoint_every=STEPS, device="cpu"), out, echo=lambda *a: None
    )
    # every rank ends with the same weights
    torch.save(summary["model"].state_dict(), f"{out}/rank{rank}.pt")
    assert summary["finished"]


def _spawn(rendezvous: str, out: str) -> None:
    """The two ranks, failing the test (not hanging it) past TIMEOUT_S."""
    context = mp.spawn(_worker, args=(2, rendezvous, out), nprocs=2, join=False)
    deadline = time.monotonic() + TIMEOUT_S
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the two DDP processes did not finish within {TIMEOUT_S} s")


@torch.no_grad()
def _one_process_reference(cfg) -> dict[str, torch.Tensor]:
    """One process, one model, the batches of rank 0 and rank 1 concatenated: the gradient of
    the mean loss over both equals the mean of the ranks' gradients that DDP all-reduces."""
    model = GridGPT(cfg.model_config(), seed=cfg.seed)
    optimizer = make_optimizer(model, cfg)
    test_set = TestSet.build(cfg.tasks, cfg.test_pool, cfg.test_seed)
    streams = [
        QuizStream(
            cfg.tasks,
            cfg.structures,
            cfg.noise,
            cfg.batch_size // 2,
            cfg.seed,
            rank,
            test_set.hashes(),
        )
        for rank in (0, 1)
    ]
    for step in range(STEPS):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(cfg, step)
        tokens = torch.cat([s.batch(step) for s in streams])
        with torch.enable_grad():
            loss = sequence_loss(model(tokens), tokens)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
    return model.state_dict()


@pytest.mark.slow
def test_ddp_gloo_two_processes(tmp_path):
    out = str(tmp_path / "ddp")
    _spawn(str(tmp_path / "rendezvous"), out)
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(out))
    assert state["world_size"] == 2 and state["step"] == STEPS
    a = torch.load(f"{out}/rank0.pt", weights_only=True)
    b = torch.load(f"{out}/rank1.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    saved = load(f"{out}/model").state_dict()
    assert all(torch.equal(a[k], saved[k]) for k in a)
    reference = _one_process_reference(tiny_config(steps=STEPS))
    init = dict(GridGPT(tiny_config().model_config(), seed=0).named_parameters())
    assert all(not torch.equal(init[k], a[k]) for k in init)  # every parameter moved
    for k in a:
        torch.testing.assert_close(a[k], reference[k], rtol=1e-4, atol=1e-6, msg=k)
