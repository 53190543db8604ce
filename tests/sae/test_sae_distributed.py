"""SAE training under torchrun, on CPU: 2 gloo processes, each streaming its own quizzes through
its own copy of the model, end where one process trained on both ranks' batches side by side
ends; a run stopped and resumed with 2 processes ends bit for bit where an unstopped one does.

The processes meet through a file (init_method file://), not a TCP port: no port to pick, so no
race with other programs for a free one."""

from __future__ import annotations

import pytest
import torch

from gridlens.models.checkpoints import load
from gridlens.sae.gated import build_sae
from gridlens.sae.model import SAEConfig
from gridlens.sae.train import SAETrainConfig, make_store, train_sae
from gridlens.training.distributed import Dist
from tests.gloo import join_group, spawn_two

STOP_AT = 5
SAE_CFG = SAEConfig(d_in=128, d_sae=64, architecture="topk", hook_name="blocks.1.hook_mlp_out", k=4)
TRAIN_CFG = SAETrainConfig(
    tokens=200 * 8,
    batch_size=200,
    buffer_quizzes=6,
    model_batch=6,
    warmup_steps=2,
    checkpoint_every=STOP_AT,
    log_every=2,
    dead_after_tokens=400,
    progress=False,
    device="cpu",
)


def _worker(rank: int, world: int, rendezvous: str, out: str) -> None:
    join_group(rank, world, rendezvous)
    try:
        model = load("default")
        whole = train_sae(model, SAE_CFG, TRAIN_CFG, f"{out}/whole", progress=False)
        train_sae(model, SAE_CFG, TRAIN_CFG, f"{out}/stopped", progress=False, stop_after=STOP_AT)
        resumed = train_sae(model, SAE_CFG, TRAIN_CFG, f"{out}/stopped", resume=True)
        states = {"whole": whole.state_dict(), "resumed": resumed.state_dict()}
        torch.save(states, f"{out}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


class SideBySide:
    """One process's view of the ranks' streams: each batch is their batches concatenated in
    rank order, and the initialisation sample their samples likewise."""

    def __init__(self, stores):
        self.stores = stores

    def __next__(self):
        return torch.cat([next(s) for s in self.stores])

    def peek(self, n):
        return torch.cat([s.peek(n // len(self.stores)) for s in self.stores])

    def state_dict(self):
        return {"stores": [s.state_dict() for s in self.stores]}

    def load_state_dict(self, state):
        for s, part in zip(self.stores, state["stores"], strict=True):
            s.load_state_dict(part)


@pytest.mark.slow
def test_two_processes_equal_one_on_both_batches_and_resume_exactly(tmp_path):
    spawn_two(_worker, str(tmp_path / "rendezvous"), str(tmp_path), "SAE training")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for name, tensor in ranks[0]["whole"].items():
        assert torch.equal(tensor, ranks[1]["whole"][name]), name  # the replicas agree
        assert torch.equal(tensor, ranks[0]["resumed"][name]), name  # resuming is exact
    model = load("default")
    stores = [make_store(model, SAE_CFG, TRAIN_CFG, "cpu", Dist(r, 2, r)) for r in (0, 1)]
    first = [next(s) for s in stores]
    assert not torch.equal(first[0], first[1])  # each rank streams its own quizzes
    stores = [make_store(model, SAE_CFG, TRAIN_CFG, "cpu", Dist(r, 2, r)) for r in (0, 1)]
    reference = train_sae(None, SAE_CFG, TRAIN_CFG, store=SideBySide(stores), progress=False)
    initial = build_sae(SAE_CFG, seed=TRAIN_CFG.seed).state_dict()
    for name, tensor in reference.state_dict().items():
        # float rounding only (5e-8 measured); summing instead of averaging the gradients, which
        # Adam nearly forgives, moves weights by 2e-5
        torch.testing.assert_close(ranks[0]["whole"][name], tensor, rtol=0, atol=1e-6)
        assert not torch.allclose(tensor, initial[name]), name  # it trained
    log = (tmp_path / "whole" / "log.jsonl").read_text().splitlines()
    assert len(log) == 4 and not (tmp_path / "whole" / "rank1").exists()
