"""Crosscoders: recovery of a known dictionary whose features are shared by two sources or
specific to one, the scale invariance, activations against the model's own cache, files and the
command."""

from __future__ import annotations

import json

import pytest
import torch
from cli_runner import run

from gridlens.errors import CheckpointError, ConfigError
from gridlens.models import GridGPT, GridGPTConfig
from gridlens.models.checkpoints import save
from gridlens.sae.crosscoder import (
    Crosscoder,
    CrosscoderConfig,
    CrosscoderTrainConfig,
    Sharing,
    load_crosscoder,
    paired_activations,
    save_crosscoder,
    train_crosscoder,
)
from gridlens.world import generate

N_SHARED, N_SPECIFIC, D = 12, 6, 16


def two_source_world(seed: int = 0, batch: int = 256, p: float = 0.07):
    """Features D [m, 2, d]: the first N_SHARED write to both sources (an independent direction
    in each), then N_SPECIFIC only to source 0 and N_SPECIFIC only to source 1; batches are
    sparse positive combinations of them, so the right answer is known feature by feature."""
    g = torch.Generator().manual_seed(seed)
    m = N_SHARED + 2 * N_SPECIFIC
    atoms = torch.randn(m, 2, D, generator=g)
    atoms /= atoms.norm(dim=-1, keepdim=True)
    atoms[N_SHARED : N_SHARED + N_SPECIFIC, 1] = 0
    atoms[N_SHARED + N_SPECIFIC :, 0] = 0
    scale = torch.tensor([1.0, 7.0])  # source 1 is 7x larger: scaling must not bias sharing

    def batches():
        while True:
            on = (torch.rand(batch, m, generator=g) < p).float()
            coef = on * (1 + torch.rand(batch, m, generator=g))
            yield torch.einsum("nm,msd->nsd", coef, atoms) * scale[:, None]

    return atoms, batches()


@pytest.mark.parametrize("arch", ["relu", "topk"])
def test_recovers_shared_and_specific_features(arch):
    atoms, batches = two_source_world()
    cfg = CrosscoderConfig(("a", "b"), D, 48, arch, k=4)
    train = CrosscoderTrainConfig(steps=700, lr=3e-3, l1=1.0, warmup_steps=50, dead_window=200)
    cc, summary = train_crosscoder(batches, cfg, train, progress=False)
    assert min(summary["explained_variance"].values()) > 0.9
    decoders = cc.W_dec.detach()  # scaled units: both sources on one footing
    flat = lambda t: t.reshape(len(t), -1) / t.reshape(len(t), -1).norm(dim=-1, keepdim=True)  # noqa: E731
    true = atoms.clone()
    cosine = flat(true) @ flat(decoders).T
    best = cosine.max(1)
    assert (best.values > 0.9).float().mean() >= 0.9, best.values
    share_b = cc.shares()[best.indices, 1]
    shared, only_a = share_b[:N_SHARED], share_b[N_SHARED : N_SHARED + N_SPECIFIC]
    only_b = share_b[N_SHARED + N_SPECIFIC :]
    assert ((shared > 0.2) & (shared < 0.8)).float().mean() >= 0.9, shared
    assert (only_a < 0.15).float().mean() >= 0.8, only_a
    assert (only_b > 0.85).float().mean() >= 0.8, only_b


def test_sharing_classes_follow_decoder_norms():
    cfg = CrosscoderConfig(("a", "b"), 4, 3)
    cc = Crosscoder(cfg)
    with torch.no_grad():
        cc.W_dec.zero_()
        cc.W_dec[0, 0, 0], cc.W_dec[0, 1, 1] = 1.0, 1.0  # even: shared
        cc.W_dec[1, 0, 2] = 1.0  # only a
        cc.W_dec[2, 0, 0], cc.W_dec[2, 1, 0] = 1.0, 19.0  # share of b 0.95: specific to b
    summary = Sharing.of(cc, torch.ones(3, dtype=torch.bool)).to_json()
    assert summary["shared_fraction"] == pytest.approx(1 / 3)
    assert summary["specific_fraction"] == {"a": pytest.approx(1 / 3), "b": pytest.approx(1 / 3)}
    assert summary["partial_fraction"] == pytest.approx(0)
    dead_one = Sharing.of(cc, torch.tensor([True, False, True])).to_json()
    assert dead_one["live_latents"] == 2 and dead_one["shared_fraction"] == pytest.approx(0.5)


def test_forward_matches_a_per_source_reference_and_scales_cancel():
    cfg = CrosscoderConfig(("a", "b", "c"), 5, 7, "topk", k=3)
    cc = Crosscoder(cfg, seed=3)
    with torch.no_grad():
        cc.b_enc.normal_()
        cc.b_dec.normal_()
        cc.scales.copy_(torch.tensor([0.5, 2.0, 3.0]))
    x = torch.randn(11, 3, 5)
    pre = sum((x[:, s] * cc.scales[s] - cc.b_dec[s]) @ cc.W_enc[s] for s in range(3)) + cc.b_enc
    acts = torch.relu(pre)
    kept = acts * (acts >= acts.topk(3, dim=-1).values[:, -1:])
    recon = torch.stack([(kept @ cc.W_dec[:, s] + cc.b_dec[s]) / cc.scales[s] for s in range(3)], 1)
    got, latents = cc(x)
    torch.testing.assert_close(latents, kept)
    torch.testing.assert_close(got, recon)
    assert int((latents > 0).sum(-1).max()) <= 3


def tiny_model(seed: int) -> GridGPT:
    cfg = GridGPTConfig(d_model=32, n_layers=2, n_heads=2, d_head=16, d_mlp=64)
    return GridGPT(cfg, seed=seed).eval()


def test_paired_activations_equal_each_models_cache():
    a, b = tiny_model(1), tiny_model(2)
    tokens = generate("frame", 3, seed=0).tokens
    hook = "blocks.1.hook_resid_post"
    paired = paired_activations([(a, hook), (b, hook)], tokens)
    for s, model in enumerate((a, b)):
        _, cache = model.run_with_cache(tokens, names=hook)
        torch.testing.assert_close(paired[:, s], cache[hook][:, -100:].reshape(-1, 32))
    with pytest.raises(ConfigError, match="one width"):
        paired_activations([(a, hook), (a, "blocks.0.mlp.hook_post")], tokens)


def test_files_round_trip_and_damage_is_refused(tmp_path):
    cc = Crosscoder(CrosscoderConfig(("a", "b"), 6, 10, "topk", k=2), seed=5)
    save_crosscoder(cc, tmp_path, {"note": 1})
    again = load_crosscoder(tmp_path)
    for name, tensor in cc.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name])
    assert again.cfg == cc.cfg
    file = tmp_path / "crosscoder.safetensors"
    blob = bytearray(file.read_bytes())
    blob[-3] ^= 0xFF
    file.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="checksum"):
        load_crosscoder(tmp_path)
    with pytest.raises(CheckpointError, match="no crosscoder"):
        load_crosscoder(tmp_path / "missing")


def test_config_refuses_bad_shapes():
    with pytest.raises(ConfigError, match=">= 2 sources"):
        CrosscoderConfig(("a",), 4, 8)
    with pytest.raises(ConfigError, match="k must"):
        CrosscoderConfig(("a", "b"), 4, 8, "topk", k=9)
    with pytest.raises(ConfigError, match="input must be"):
        Crosscoder(CrosscoderConfig(("a", "b"), 4, 8)).encode(torch.zeros(2, 3, 4))


def test_command_across_two_models(tmp_path, capsys):
    paths = [save(tiny_model(seed), tmp_path / f"m{seed}") for seed in (1, 2)]
    out = tmp_path / "cc"
    code, stdout, err = run(
        capsys, "sae", "crosscoder", "--model", str(paths[0]), "--model", str(paths[1]),
        "--site", "blocks.1.hook_resid_post", "--d-sae", "32", "--steps", "30",
        "--batch-size", "256", "--tasks", "frame", "--out", str(out), "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads((out / "sharing.json").read_text())
    assert set(summary["explained_variance"]) == {"m1:blocks.1.hook_resid_post",
                                                  "m2:blocks.1.hook_resid_post"}  # fmt: skip
    assert (out / "sharing.png").stat().st_size > 0 and "shared" in stdout
    assert load_crosscoder(out).cfg.d_sae == 32
    code, _, err = run(capsys, "sae", "crosscoder", "--model", str(paths[0]), "--out",
                       str(tmp_path / "x"), "--site", "blocks.1.hook_resid_post")  # fmt: skip
    assert code == 2 and "distinct sources" in err


def test_command_across_a_culture_population(tmp_path, capsys):
    pop = tmp_path / "pop"
    sets = ["k=2", "tasks=frame", "height=6", "width=6", "train_quizzes=20", "test_quizzes=4",
            "batch_size=10", "candidates_per_model=2", "max_attempts=1"]  # fmt: skip
    code, _, err = run(capsys, "culture", "run", "--out", str(pop), "--rounds", "1",
                       *[a for s in sets for a in ("--set", s)], "--no-progress")  # fmt: skip
    assert code == 0, err
    out = tmp_path / "cc"
    code, _, err = run(
        capsys, "sae", "crosscoder", "--population", str(pop), "--site",
        "blocks.0.hook_resid_post", "--d-sae", "16", "--steps", "10", "--batch-size", "64",
        "--out", str(out), "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    assert load_crosscoder(out).cfg.sources == (
        "member0:blocks.0.hook_resid_post",
        "member1:blocks.0.hook_resid_post",
    )
    code, _, err = run(capsys, "sae", "crosscoder", "--population", str(pop), "--model", "x",
                       "--site", "blocks.0.hook_resid_post",
                       "--out", str(tmp_path / "y"))  # fmt: skip
    assert code == 2 and "not both" in err
