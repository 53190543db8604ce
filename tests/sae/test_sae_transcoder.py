"""Transcoders: the SAE trainer with an input and a target site recovers the features of an
exactly sparse MLP; the store pairs the right sites; files round-trip; metrics are sound."""

from __future__ import annotations

import pytest
import torch

from gridlens.analysis.core import quiz_set
from gridlens.errors import CheckpointError, ConfigError
from gridlens.models.gpt import GridGPT
from gridlens.sae.activations import ActivationStore
from gridlens.sae.train import SAETrainConfig, train_sae
from gridlens.sae.transcoder import (
    Transcoder,
    TranscoderConfig,
    evaluate_transcoders,
    replacement_hooks,
)
from gridlens.sae.transcoder_io import load_transcoder, load_transcoders

D_IN, D_OUT, N_FEATURES = 24, 20, 16


class SparseMLPStore:
    """x = a sparse mix of orthonormal input directions u_i; y = MLP(x) = relu(x U^T) V, so
    hidden unit i equals feature i's coefficient: an MLP whose hidden layer is exactly sparse."""

    def __init__(self, batch: int = 512, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.u = torch.linalg.qr(torch.randn(D_IN, D_IN, generator=g))[0][:N_FEATURES]
        v = torch.randn(N_FEATURES, D_OUT, generator=g)
        self.v = v / v.norm(dim=1, keepdim=True)
        self.batch, self.g, self.step = batch, g, 0
        self.buffer = [self._make() for _ in range(2)]

    def _make(self) -> torch.Tensor:
        on = torch.rand(self.batch, N_FEATURES, generator=self.g) < 0.15
        c = on * (0.5 + torch.rand(self.batch, N_FEATURES, generator=self.g))
        x = c @ self.u
        y = torch.relu(x @ self.u.T) @ self.v
        return torch.cat([x, y], 1)

    def __next__(self) -> torch.Tensor:
        self.buffer.append(self._make())
        return self.buffer.pop(0)

    def peek(self, n: int) -> torch.Tensor:
        return torch.cat(self.buffer)[:n]

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]


def _train(arch: str, steps: int, tmp_path, init_threshold: float = 0.1, **train):
    store = SparseMLPStore()
    cfg = TranscoderConfig(
        D_IN, 32, architecture=arch, k=4, hook_name="x", target_hook_name="y", d_out=D_OUT,
        jumprelu_init_threshold=init_threshold,
    )  # fmt: skip
    train = SAETrainConfig(
        tokens=512 * steps, batch_size=512, lr=5e-3, warmup_steps=10, progress=False,
        dead_after_tokens=20_000, **train,
    )  # fmt: skip
    tc = train_sae(None, cfg, train, tmp_path / "tc", store=store)
    rows = store.peek(1024)  # raw activations: the saved transcoder has its scales folded in
    pred, latents = tc(rows[:, :D_IN])
    target = rows[:, D_IN:]
    ev = 1 - (pred - target).pow(2).sum() / (target - target.mean(0)).pow(2).sum()
    return store, tc, rows, pred, latents, float(ev.detach())


@pytest.mark.slow  # ~8 s alone, up to 20 s on a loaded machine
def test_topk_recovers_the_features_of_an_exactly_sparse_mlp(tmp_path):
    store, tc, rows, pred, _, ev = _train("topk", 300, tmp_path)
    assert ev > 0.95
    decoder = tc.W_dec / tc.W_dec.norm(dim=1, keepdim=True)
    cosine = (store.v @ decoder.T).max(1).values
    assert (cosine > 0.95).all(), cosine
    loaded = load_transcoder(tmp_path / "tc")
    assert torch.allclose(loaded(rows[:, :D_IN])[0], pred, atol=1e-6)


@pytest.mark.slow  # ~5 s alone, up to 15 s on a loaded machine
def test_jumprelu_recovers_most_features_of_an_exactly_sparse_mlp(tmp_path):
    """A low initial threshold (0.1, in normalised units) lets every latent fire and find a
    direction before the L0 term raises the thresholds (to ~0.8). From 0.3 many latents start
    below it and never get a gradient (JumpReLU passes none where inactive): 8 of 16 features
    and explained variance 0.78 with the same steps, 1 of 16 after 150 steps."""
    store, tc, rows, pred, latents, ev = _train("jumprelu", 1000, tmp_path, l0_coefficient=3.0)
    assert ev > 0.98
    assert float((latents > 0).float().sum(1).mean()) < 4  # 16 * 0.15 = 2.4 features per row
    decoder = tc.W_dec / tc.W_dec.norm(dim=1, keepdim=True)
    cosine = (store.v @ decoder.T).max(1).values
    assert int((cosine > 0.9).sum()) >= 12, cosine  # 13-16 of 16 over four seeds
    loaded = load_transcoder(tmp_path / "tc")  # a SAELens JumpReLUTranscoder file
    assert loaded.threshold.min() >= 0
    assert torch.allclose(loaded(rows[:, :D_IN])[0], pred, atol=1e-6)


def test_store_pairs_the_mlp_input_with_its_output():
    model = GridGPT(d_model=16, n_layers=2, n_heads=2, d_head=8, d_mlp=32, seed=0).eval()
    source, target = "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"
    store = ActivationStore(model, source, target_hook=target, batch_size=64, buffer_quizzes=4)
    rows = next(store)
    x, y = rows[:, :16], rows[:, 16:]
    block = model.blocks[1]
    with torch.no_grad():
        hidden = torch.relu(block.mlp.fc_in(x * block.ln2.weight + block.ln2.bias))
        mlp = block.mlp.fc_out(hidden)
    assert torch.allclose(y, mlp, atol=1e-5)


def test_evaluation_of_exact_transcoders_recovers_all_the_loss(tmp_path):
    model = GridGPT(d_model=16, n_layers=2, n_heads=2, d_head=8, d_mlp=32, seed=0).eval()
    exact = {}
    for layer, block in enumerate(model.blocks):
        tc = Transcoder(TranscoderConfig.for_layer(layer, 16, 32, architecture="relu"))
        with torch.no_grad():
            tc.W_enc.copy_((block.mlp.fc_in.weight * block.ln2.weight).T)
            tc.b_enc.copy_(block.mlp.fc_in.bias + block.mlp.fc_in.weight @ block.ln2.bias)
            tc.W_dec.copy_(block.mlp.fc_out.weight.T)
            tc.b_dec.copy_(block.mlp.fc_out.bias)
        exact[layer] = tc.eval()
    quizzes = quiz_set(("contact",), 2, seed=1)
    metrics = evaluate_transcoders(model, exact, quizzes)
    assert metrics["loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert all(row["explained_variance"] > 0.9999 for row in metrics["layers"].values())
    with torch.no_grad():
        clean = model(quizzes.tokens)
        hooked = model.run_with_hooks(quizzes.tokens, replacement_hooks({0: exact[0]}))
    assert torch.allclose(clean, hooked, atol=1e-4)
    broken = {0: Transcoder(TranscoderConfig.for_layer(0, 16, 32, architecture="relu"))}
    assert evaluate_transcoders(model, broken, quizzes)["loss_recovered"] < 0.99


def test_training_on_a_model_streams_saves_and_resumes(tmp_path):
    model = GridGPT(d_model=16, n_layers=2, n_heads=2, d_head=8, d_mlp=32, seed=0).eval()
    cfg = TranscoderConfig.for_layer(1, 16, 32, architecture="topk", k=4, skip=True)
    train = SAETrainConfig(
        tokens=2048, batch_size=256, buffer_quizzes=8, progress=False, checkpoint_every=3
    )
    tc = train_sae(model, cfg, train, tmp_path / "layer_1")
    train_sae(model, cfg, train, tmp_path / "again", stop_after=4)
    resumed = train_sae(model, cfg, train, tmp_path / "again", resume=True)
    for name, tensor in tc.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name
    found = load_transcoders(tmp_path)
    assert list(found) == [1] and found[1].W_skip is not None
    assert torch.equal(found[1].W_dec, tc.W_dec)
    with pytest.raises(ConfigError):
        TranscoderConfig.for_layer(0, 16, 32, architecture="gated")
    with pytest.raises(CheckpointError):
        load_transcoders(tmp_path / "layer_1")
    assert torch.isfinite(tc.W_skip.detach()).all() and tc.W_skip.detach().abs().sum() > 0
