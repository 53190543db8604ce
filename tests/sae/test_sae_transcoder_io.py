"""Transcoder files: ReLU and JumpReLU transcoders (with or without skip) are SAELens 6 files
that SAELens loads with the same outputs, SAELens's own files load in gridlens, and TopK keeps
our format with a note."""

from __future__ import annotations

import json

import pytest
import torch

from gridlens.errors import CheckpointError, ConfigError
from gridlens.sae.io import save_sae
from gridlens.sae.model import SAEConfig, SparseAutoencoder
from gridlens.sae.transcoder import Transcoder, TranscoderConfig
from gridlens.sae.transcoder_io import is_transcoder_dir, load_transcoder, save_transcoder

sae_lens = pytest.importorskip("sae_lens")
SAEMetadata = pytest.importorskip("sae_lens.saes.sae").SAEMetadata

D_IN, D_SAE, D_OUT = 12, 40, 10
KINDS = [("relu", False), ("relu", True), ("jumprelu", False), ("jumprelu", True)]
THEIR_CLASSES = {
    ("relu", False): "Transcoder",
    ("relu", True): "SkipTranscoder",
    ("jumprelu", False): "JumpReLUTranscoder",
    ("jumprelu", True): "JumpReLUSkipTranscoder",
}


def _random_transcoder(arch: str, skip: bool, seed: int = 0) -> Transcoder:
    """Every parameter random (thresholds in [0, 1], so about half the latents are cut)."""
    cfg = TranscoderConfig(
        D_IN, D_SAE, architecture=arch, k=5, hook_name="blocks.1.ln2.hook_normalized",
        target_hook_name="blocks.1.hook_mlp_out", d_out=D_OUT, skip=skip,
    )  # fmt: skip
    tc = Transcoder(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in tc.named_parameters():
            param.copy_(torch.randn(param.shape, generator=g))
            if name == "threshold":
                param.copy_(torch.rand(param.shape, generator=g))
    return tc.eval()


@pytest.mark.parametrize("arch,skip", KINDS)
def test_sae_lens_loads_ours_with_the_same_outputs(tmp_path, arch, skip):
    ours = _random_transcoder(arch, skip)
    save_transcoder(ours, tmp_path / "tc")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "tc"))
    assert type(theirs).__name__ == THEIR_CLASSES[arch, skip]
    assert theirs.cfg.metadata.hook_name == "blocks.1.ln2.hook_normalized"
    assert theirs.cfg.metadata.hook_name_out == "blocks.1.hook_mlp_out"
    x = torch.randn(64, D_IN, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        pred, latents = ours(x)
        their_pred, their_latents = theirs.forward_with_activations(x)
    assert 0.2 < float((latents > 0).float().mean()) < 0.6  # the threshold decides something
    assert torch.allclose(their_latents, latents, atol=1e-5)
    assert torch.allclose(their_pred, pred, atol=1e-4)
    again = load_transcoder(tmp_path / "tc")
    assert again.cfg == ours.cfg
    for name, value in ours.state_dict().items():
        assert torch.equal(again.state_dict()[name], value), name


@pytest.mark.parametrize("arch,skip", KINDS)
def test_files_sae_lens_wrote_load_with_the_same_outputs(tmp_path, arch, skip):
    name = THEIR_CLASSES[arch, skip]
    cfg = getattr(sae_lens, name + "Config")(
        d_in=D_IN, d_sae=D_SAE, d_out=D_OUT, apply_b_dec_to_input=False,
        metadata=SAEMetadata(hook_name="blocks.2.ln2.hook_normalized",
                                      hook_name_out="blocks.2.hook_mlp_out"),
    )  # fmt: skip
    theirs = getattr(sae_lens, name)(cfg).eval()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for param in theirs.parameters():  # thresholds in [-0.5, 1.5]: negative ones too
            param.copy_(torch.rand(param.shape, generator=g) * 2 - 0.5)
    theirs.save_model(tmp_path / "theirs")
    ours = load_transcoder(tmp_path / "theirs")
    assert (ours.cfg.architecture, ours.cfg.skip) == (arch, skip)
    assert (ours.cfg.hook_name, ours.cfg.target_hook_name) == (
        "blocks.2.ln2.hook_normalized",
        "blocks.2.hook_mlp_out",
    )
    x = torch.randn(64, D_IN, generator=g)
    with torch.no_grad():
        their_pred, their_latents = theirs.forward_with_activations(x)
        pred, latents = ours(x)
    assert torch.allclose(latents, their_latents, atol=1e-5)
    assert torch.allclose(pred, their_pred, atol=1e-4)
    assert is_transcoder_dir(tmp_path / "theirs")


def test_topk_keeps_our_format_with_a_note(tmp_path):
    tc = _random_transcoder("topk", True)
    save_transcoder(tc, tmp_path / "tc", training={"steps": 3})
    meta = json.loads((tmp_path / "tc" / "cfg.json").read_text())
    assert meta["format"] == "gridlens.transcoder" and "SAELens" in meta["note"]
    assert meta["training"] == {"steps": 3}
    with pytest.raises(Exception):  # noqa: B017 (SAELens knows no such architecture)
        sae_lens.SAE.load_from_disk(str(tmp_path / "tc"))
    again = load_transcoder(tmp_path / "tc")
    x = torch.randn(8, D_IN)
    with torch.no_grad():
        assert torch.equal(again(x)[0], tc(x)[0])
    assert is_transcoder_dir(tmp_path / "tc")


def test_bad_files_and_transcoders_are_refused(tmp_path):
    tc = _random_transcoder("jumprelu", False)
    with torch.no_grad():
        tc.threshold[0] = -0.1
    with pytest.raises(ConfigError, match="negative"):
        save_transcoder(tc, tmp_path / "neg")
    assert not (tmp_path / "neg").exists()
    with torch.no_grad():
        tc.threshold[0] = 0.1
    save_transcoder(tc, tmp_path / "tc")
    weights = tmp_path / "tc" / "sae_weights.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-3] ^= 0xFF
    weights.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="checksum"):
        load_transcoder(tmp_path / "tc")
    save_transcoder(_random_transcoder("jumprelu", False), tmp_path / "tc2")
    cfg_path = tmp_path / "tc2" / "cfg.json"
    meta = json.loads(cfg_path.read_text())
    del meta["metadata"]["hook_name_out"], meta["metadata"]["gridlens"]
    cfg_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="hook_name_out"):
        load_transcoder(tmp_path / "tc2")
    found = load_transcoder(tmp_path / "tc2", target_hook_name="blocks.1.hook_mlp_out")
    assert found.cfg.target_hook_name == "blocks.1.hook_mlp_out"
    save_sae(SparseAutoencoder(SAEConfig(D_IN, D_SAE, architecture="relu")), tmp_path / "sae")
    assert not is_transcoder_dir(tmp_path / "sae")
    with pytest.raises(CheckpointError, match="not a transcoder"):
        load_transcoder(tmp_path / "sae")
