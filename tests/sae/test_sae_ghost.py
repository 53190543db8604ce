"""Ghost grads: only the dead latents' gradients change, the loss matches a hand computation,
and dead latents revive with it."""

from __future__ import annotations

import pytest
import torch
from test_sae_train import SparseSource

from gridlens.sae.model import SAEConfig, SparseAutoencoder
from gridlens.sae.train import SAETrainConfig, ghost_grads_loss, sae_losses, train_sae

DEAD = torch.arange(40, 64)


def _gradients(arch: str, ghost: str) -> dict[str, torch.Tensor]:
    sae = SparseAutoencoder(SAEConfig(32, 64, arch, hook_name="synthetic", k=4), seed=0)
    with torch.no_grad():
        sae.b_enc[DEAD] = -2.0  # never fires on these rows (pre-activations about +-0.1)
    x = torch.randn(256, 32, generator=torch.Generator().manual_seed(1))
    dead = torch.zeros(64, dtype=torch.bool)
    dead[DEAD] = True
    cfg = SAETrainConfig(tokens=256, batch_size=256, ghost_grads=ghost, aux_coefficient=0.0)
    result = sae_losses(sae, x, cfg, dead)
    assert not result.fired[DEAD].any()
    result.total.backward()
    return {name: p.grad.clone() for name, p in sae.named_parameters()}


@pytest.mark.parametrize("arch", ["relu", "topk", "jumprelu"])
@pytest.mark.parametrize("variant", ["original", "improved"])
def test_ghost_grads_change_only_dead_latents(arch, variant):
    without, with_ghost = _gradients(arch, "off"), _gradients(arch, variant)
    alive = torch.tensor([i not in DEAD for i in range(64)]).nonzero().flatten()
    for name, latent_dim in (("W_enc", 1), ("b_enc", 0), ("W_dec", 0)):
        a, b = without[name].movedim(latent_dim, 0), with_ghost[name].movedim(latent_dim, 0)
        torch.testing.assert_close(a[alive], b[alive])
        changed = (b[DEAD] - a[DEAD]).abs().reshape(len(DEAD), -1).sum(1)
        assert (changed > 0).all(), name
    torch.testing.assert_close(without["b_dec"], with_ghost["b_dec"])


def test_ghost_loss_by_hand():
    sae = SparseAutoencoder(SAEConfig(2, 3, "relu", hook_name="s"))
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    x, recon = torch.tensor([[0.0, 2.0]]), torch.tensor([[0.0, 0.0]])
    dead = torch.tensor([False, True, False])
    mse = torch.tensor(4.0)  # the main loss the ghost term is scaled to
    # dead latent 1: pre 2, ghost output exp(2) e_1 rescaled to norm |residual| / 2 = 1: the
    # loss (0 - 0)^2 + (1 - 2)^2 = 1 is rescaled to the MSE (4), then x 1/3 dead for "improved"
    original = ghost_grads_loss(sae, x, recon, mse, dead, "original")
    improved = ghost_grads_loss(sae, x, recon, mse, dead, "improved")
    assert float(original.detach()) == pytest.approx(4.0, rel=1e-5)
    assert float(improved.detach()) == pytest.approx(4.0 / 3, rel=1e-5)
    assert float(ghost_grads_loss(sae, x, recon, mse, torch.zeros(3, dtype=torch.bool))) == 0


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only add overhead
    yield
    torch.set_num_threads(threads)


def test_ghost_grads_revive_dead_latents(one_thread):
    """16 of 64 ReLU latents alive for 32 atoms: ghost grads train dead ones onto the rest."""

    def run(ghost: str) -> int:
        source = SparseSource(atoms=32, active=2, seed=3, batch=256)
        cfg = SAEConfig(d_in=32, d_sae=64, architecture="relu", hook_name="synthetic")
        train_cfg = SAETrainConfig(
            tokens=256 * 100,
            batch_size=256,
            lr=3e-3,
            warmup_steps=10,
            l1_coefficient=0.5,
            dead_after_tokens=256 * 5,
            ghost_grads=ghost,
            progress=False,
            device="cpu",
            b_dec_init="mean",
        )
        state = SparseAutoencoder(cfg, seed=0).state_dict()
        state["b_enc"][16:] = -1.0  # 48 latents start below firing (pre-activations ~ +-0.1)
        trained = train_sae(None, cfg, train_cfg, store=source, progress=False, initial_state=state)
        _, latents = trained(torch.cat([next(source) for _ in range(4)]))
        return int(((latents > 0).sum(0) == 0).sum())

    dead = {variant: run(variant) for variant in ("off", "original", "improved")}
    assert dead["off"] == 48
    assert dead["original"] <= 24 and dead["improved"] <= 24, dead
