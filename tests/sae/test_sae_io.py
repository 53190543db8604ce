"""SAE files: SAELens 6 reads ours and we read SAELens's, with the same outputs; corrupt files
raise CheckpointError naming the file and the field."""

from __future__ import annotations

import json

import pytest
import torch

from gridlens.errors import CheckpointError, ConfigError
from gridlens.sae.gated import build_sae, weight_names
from gridlens.sae.io import load_sae, read_sae_cfg, save_sae
from gridlens.sae.model import ARCHITECTURES, SAEConfig

sae_lens = pytest.importorskip("sae_lens")

D_IN, D_SAE, K = 8, 32, 4


def random_sae(arch: str, seed: int = 0, hook_name: str = "blocks.1.hook_resid_post"):
    """An SAE with every parameter random (biases and thresholds too), thresholds >= 0."""
    sae = build_sae(SAEConfig(D_IN, D_SAE, arch, hook_name=hook_name, k=K), seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for name in weight_names(sae.cfg):
            p = getattr(sae, name)
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if name.startswith("W") else 0.2))
        if arch == "jumprelu":
            sae.threshold.copy_(torch.rand(D_SAE, generator=g) * 0.3)
        if arch == "batchtopk":
            sae.threshold.fill_(0.15)
    return sae.eval()


def inputs(n: int = 64, seed: int = 5) -> torch.Tensor:
    return torch.randn(n, D_IN, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_sae_lens_loads_ours_with_the_same_outputs(tmp_path, arch):
    ours = random_sae(arch)
    save_sae(ours, tmp_path / "sae", training={"tokens": 1000})
    theirs = sae_lens.SAE.load_from_disk(tmp_path / "sae")
    x = inputs()
    latents = ours.encode(x)
    assert 0 < (latents != 0).float().sum(1).mean() < D_SAE  # a sparse, non-trivial code
    torch.testing.assert_close(theirs.encode(x), latents, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(theirs.decode(latents), ours.decode(latents), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(theirs(x), ours(x)[0], atol=1e-5, rtol=1e-5)
    cfg = read_sae_cfg(tmp_path / "sae")
    assert int(cfg["metadata"]["sae_lens_version"].split(".")[0]) >= 6
    assert cfg["metadata"]["hook_name"] == "blocks.1.hook_resid_post"
    assert cfg["metadata"]["gridlens"]["training"] == {"tokens": 1000}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_round_trip_is_exact(tmp_path, arch):
    ours = random_sae(arch, seed=3)
    save_sae(ours, tmp_path / "sae")
    back = load_sae(tmp_path / "sae")
    assert back.cfg == ours.cfg
    assert not back.training
    for name, value in ours.state_dict().items():
        assert torch.equal(back.state_dict()[name], value), name


def test_save_into_an_existing_folder_keeps_other_files(tmp_path):
    (tmp_path / "log.jsonl").write_text("{}\n")
    save_sae(random_sae("topk"), tmp_path)
    assert (tmp_path / "log.jsonl").read_text() == "{}\n"
    assert load_sae(tmp_path).cfg.k == K


def test_activation_scale_is_folded(tmp_path):
    ours = random_sae("jumprelu")
    save_sae(ours, tmp_path / "sae", activation_scale=4.0)
    back = load_sae(tmp_path / "sae")
    x = inputs()
    torch.testing.assert_close(back(x)[0], ours(x * 4.0)[0] / 4.0, atol=1e-5, rtol=1e-5)
    assert read_sae_cfg(tmp_path / "sae")["metadata"]["gridlens"]["activation_scale"] == 4.0


def test_negative_thresholds_are_refused(tmp_path):
    sae = random_sae("jumprelu")
    with torch.no_grad():
        sae.threshold[0] = -0.1
    with pytest.raises(ConfigError, match="negative"):
        save_sae(sae, tmp_path / "sae")


def _randomise(sae, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            scale = 0.3 if name == "threshold" else 0.5
            p.copy_(
                torch.randn(p.shape, generator=g).abs() * scale
                if name == "threshold"
                else torch.randn(p.shape, generator=g) * scale
            )


def _check_same(tmp_path, theirs, want_arch: str) -> None:
    ours = load_sae(tmp_path)
    assert ours.cfg.architecture == want_arch
    x = inputs(seed=9)
    reference = sae_lens.SAE.load_from_disk(tmp_path)
    torch.testing.assert_close(ours.encode(x), reference.encode(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours(x)[0], reference(x), atol=1e-5, rtol=1e-5)


def test_we_load_sae_lens_standard_and_jumprelu(tmp_path):
    meta = {"hook_name": "blocks.2.hook_mlp_out"}
    standard = sae_lens.StandardSAE(
        sae_lens.StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, apply_b_dec_to_input=False)
    )
    standard.cfg.metadata.hook_name = meta["hook_name"]
    _randomise(standard, 1)
    standard.save_model(tmp_path / "standard")
    _check_same(tmp_path / "standard", standard, "relu")
    jump = sae_lens.JumpReLUSAE(sae_lens.JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE))
    jump.cfg.metadata.hook_name = meta["hook_name"]
    _randomise(jump, 2)
    jump.save_model(tmp_path / "jump")
    _check_same(tmp_path / "jump", jump, "jumprelu")


def test_we_load_sae_lens_topk_and_batchtopk_training_saves(tmp_path):
    topk = sae_lens.TopKTrainingSAE(
        sae_lens.TopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K)  # rescale by decoder norm
    )
    topk.cfg.metadata.hook_name = "blocks.0.hook_resid_post"
    _randomise(topk, 3)
    topk.save_inference_model(tmp_path / "topk")
    _check_same(tmp_path / "topk", topk, "topk")

    batch = sae_lens.BatchTopKTrainingSAE(
        sae_lens.BatchTopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K)
    )
    batch.cfg.metadata.hook_name = "blocks.0.hook_resid_post"
    _randomise(batch, 4)
    batch.topk_threshold = torch.tensor(0.2, dtype=torch.double)
    batch.save_inference_model(tmp_path / "batch")  # SAELens writes it as a JumpReLU SAE
    _check_same(tmp_path / "batch", batch, "batchtopk")
    assert load_sae(tmp_path / "batch").cfg.k == K


# ---------------------------------------------------------------------------- corrupt files


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "sae"
    save_sae(random_sae("jumprelu"), path)
    return path


def _edit_cfg(path, change) -> None:
    data = json.loads((path / "cfg.json").read_text())
    change(data)
    (path / "cfg.json").write_text(json.dumps(data))


def _rewrite_weights(path, change) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(path / "sae_weights.safetensors")
    change(state)
    save_file(state, path / "sae_weights.safetensors")


def test_truncated_weights(saved):
    weights = saved / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"sae_weights\.safetensors.*truncated or corrupt"):
        load_sae(saved)


def test_wrong_shape(saved):
    _rewrite_weights(saved, lambda s: s.update(W_dec=torch.zeros(D_SAE, D_IN + 1)))
    with pytest.raises(CheckpointError, match=r"'W_dec' has shape \(32, 9\), expected \(32, 8\)"):
        load_sae(saved)


def test_missing_key(saved):
    _rewrite_weights(saved, lambda s: s.pop("threshold"))
    with pytest.raises(
        CheckpointError, match=r"sae_weights.safetensors: missing key\(s\) \['threshold'\]"
    ):
        load_sae(saved)


def test_nan_weights(saved):
    _rewrite_weights(saved, lambda s: s["b_enc"].__setitem__(0, float("nan")))
    with pytest.raises(CheckpointError, match="'b_enc' contains NaN"):
        load_sae(saved)


def test_bad_json(saved):
    (saved / "cfg.json").write_text('{"architecture": "jumprelu", ')
    with pytest.raises(CheckpointError, match=r"cfg\.json: not valid JSON"):
        load_sae(saved)


def test_old_version(saved):
    _edit_cfg(saved, lambda d: d["metadata"].update(sae_lens_version="5.4.0"))
    with pytest.raises(CheckpointError, match=r"sae_lens_version' is '5\.4\.0'"):
        load_sae(saved)


def test_no_version(saved):
    _edit_cfg(saved, lambda d: d["metadata"].pop("sae_lens_version"))
    with pytest.raises(CheckpointError, match="SAELens < 6"):
        load_sae(saved)


def test_unknown_architecture(saved):
    _edit_cfg(saved, lambda d: d.update(architecture="matching_pursuit"))
    with pytest.raises(CheckpointError, match="field 'architecture' is 'matching_pursuit'"):
        load_sae(saved)


def test_wrong_field_type_and_dtype(saved):
    _edit_cfg(saved, lambda d: d.update(d_sae="32"))
    with pytest.raises(CheckpointError, match="field 'd_sae' is '32', expected an integer"):
        load_sae(saved)
    _edit_cfg(saved, lambda d: d.update(d_sae=32, dtype="int8"))
    with pytest.raises(CheckpointError, match="field 'dtype' is 'int8'"):
        load_sae(saved)


def test_per_input_normalisation_is_refused(saved):
    _edit_cfg(saved, lambda d: d.update(normalize_activations="layer_norm"))
    with pytest.raises(CheckpointError, match="normalize_activations' is 'layer_norm'"):
        load_sae(saved)


def test_missing_files(tmp_path, saved):
    with pytest.raises(CheckpointError, match="no such SAE directory"):
        load_sae(tmp_path / "nowhere")
    (saved / "sae_weights.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"sae_weights\.safetensors: missing"):
        load_sae(saved)
    (saved / "cfg.json").unlink()
    with pytest.raises(CheckpointError, match=r"cfg\.json: missing"):
        load_sae(saved)


def test_default_resolves_to_the_package_folder(tmp_path, monkeypatch):
    import gridlens.sae.io as sae_io

    monkeypatch.setattr(sae_io, "DEFAULT_SAE_DIR", tmp_path / "default_sae")
    with pytest.raises(CheckpointError, match="default SAE is not installed"):
        load_sae("default")
    save_sae(random_sae("batchtopk"), tmp_path / "default_sae")
    assert load_sae("default").cfg.architecture == "batchtopk"


def test_hook_name_can_be_given_for_files_without_one(saved):
    _edit_cfg(saved, lambda d: [d["metadata"].pop(key) for key in ("hook_name", "gridlens")])
    with pytest.raises(CheckpointError, match=r"metadata\.hook_name"):
        load_sae(saved)
    assert load_sae(saved, hook_name="blocks.0.hook_mlp_out").cfg.hook_name == (
        "blocks.0.hook_mlp_out"
    )
