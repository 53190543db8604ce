"""DistributedDataParallel on CPU: 2 processes with the gloo backend train one model together,
and end where one process trained on the two ranks' batches concatenated ends.

The processes meet through a file (init_method file://), not a TCP port: no free port to pick,
so no race with other programs for it; the group and the join both have a deadline."""

from __future__ import annotations

import pytest
import torch

from gridlens.models import GridGPT, load
from gridlens.training import checkpoint as ckpt
from gridlens.training.data import QuizStream, TestSet
from gridlens.training.trainer import lr_at, make_optimizer, sequence_loss
from tests.gloo import join_group, spawn_two
from tests.training.conftest import tiny_config

STEPS = 3


def _worker(rank: int, world: int, rendezvous: str, out: str) -> None:
    # joined here, so the trainer's setup() finds the group ready (and its cleanup ends it)
    join_group(rank, world, rendezvous)
    from gridlens.training.trainer import train

    summary = train(
        tiny_config(steps=STEPS, checkpoint_every=STEPS, device="cpu"), out, echo=lambda *a: None
    )
    # every rank ends with the same weights
    torch.save(summary["model"].state_dict(), f"{out}/rank{rank}.pt")
    assert summary["finished"]


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
    spawn_two(_worker, str(tmp_path / "rendezvous"), out, "DDP")
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
