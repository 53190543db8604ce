"""Checkpoint formats: the original, the fork, ours; safety and validation."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from gridlens.errors import CheckpointError, GridlensError
from gridlens.models import GridGPT, load, save
from gridlens.models.checkpoints import WEIGHTS_FILE


def original_state(reference) -> dict:
    return torch.load(reference["path"], weights_only=True)[0]


def to_fork(state: dict) -> dict:
    out = {}
    for key, value in state.items():
        head, rest = (
            (key.split(".", 2)[:2], key.split(".", 2)[2])
            if key.startswith("trunk")
            else ([key.split(".", 1)[0]], key.split(".", 1)[1])
        )
        out[".".join([*head, "f", rest])] = value
    return out


def test_fork_and_bare_state_dict_layouts(reference, tmp_path):
    state = original_state(reference)
    fork = to_fork(state)
    assert "trunk.0.f.f.1.w_q" in fork and "embedding.f.0.f.0.weight" in fork
    assert "readout.f.f.weight" in fork and "trunk.1.f.f.f.2.weight" in fork
    torch.save((fork, 0.5), tmp_path / "fork.pth")
    torch.save(state, tmp_path / "bare.pth")
    ref = load(reference["path"])
    for name in ("fork.pth", "bare.pth"):
        model = load(tmp_path / name)
        for (k, a), (_, b) in zip(
            ref.state_dict().items(), model.state_dict().items(), strict=True
        ):
            assert torch.equal(a, b), k


def test_our_format_round_trip_and_atomic_overwrite(reference, tmp_path):
    model = load(reference["path"])
    target = tmp_path / "ckpt"
    save(model, target)
    assert sorted(p.name for p in target.iterdir()) == ["config.json", WEIGHTS_FILE]
    header = json.loads((target / "config.json").read_text())
    assert header["format"] == "gridlens.gridgpt" and header["format_version"] == 1
    again = load(target)
    with torch.no_grad():
        assert torch.equal(again(reference["quizzes"]), model(reference["quizzes"]))
    # overwrite in place; no staging directories left behind
    other = GridGPT(model.cfg, seed=5)
    save(other, target)
    assert torch.equal(load(target).embed.weight, other.embed.weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    # a lone .safetensors file carries its config in the metadata
    single = save(model, tmp_path / "one" / "m.safetensors")
    assert torch.equal(load(single).unembed.bias, model.unembed.bias)


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    bad = tmp_path / "gpt_000.pth"
    torch.save(({"embedding.0.f.0.weight": torch.zeros(15, 8), "x": Payload()}, 0.9), bad)
    with pytest.raises(CheckpointError, match="refused to load"):
        load(bad)
    assert not marker.exists()
    # the payload is live: an unsafe load would have run it
    torch.load(bad, weights_only=False)
    assert marker.exists()

    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(Payload(), protocol=2))
    marker.unlink()
    with pytest.raises(CheckpointError, match="refused to load"):
        load(raw)
    assert not marker.exists()


def test_validation_names_what_is_wrong(reference, tmp_path):
    model = load(reference["path"])
    target = save(model, tmp_path / "ok")
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def write(dirname, st=None, header=None):
        d = tmp_path / dirname
        d.mkdir()
        save_file(st if st is not None else state, str(d / WEIGHTS_FILE))
        h = header or json.loads((target / "config.json").read_text())
        (d / "config.json").write_text(json.dumps(h))
        return d

    missing = dict(state)
    del missing["blocks.1.attn.w_k"]
    with pytest.raises(CheckpointError, match=r"missing key\(s\) \['blocks.1.attn.w_k'\]"):
        load(write("missing", missing))
    wrong = dict(state, **{"blocks.0.mlp.fc_in.weight": torch.zeros(127, 64)})
    with pytest.raises(
        CheckpointError,
        match=r"'blocks.0.mlp.fc_in.weight' has shape \(127, 64\), expected \(128, 64\)",
    ):
        load(write("shape", wrong))
    header = json.loads((target / "config.json").read_text())
    with pytest.raises(CheckpointError, match="'format_version' is 99"):
        load(write("version", header=dict(header, format_version=99)))
    with pytest.raises(CheckpointError, match="unknown config field"):
        load(write("field", header=dict(header, config=dict(header["config"], d_modle=3))))
    # truncated weights and truncated pickles
    blob = (target / WEIGHTS_FILE).read_bytes()
    trunc = write("trunc")
    (trunc / WEIGHTS_FILE).write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load(trunc)
    pth = reference["path"].read_bytes()
    (tmp_path / "cut.pth").write_bytes(pth[: len(pth) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load(tmp_path / "cut.pth")
    with pytest.raises(CheckpointError, match="no such file"):
        load(tmp_path / "nope.pth")
    # original layout with a wrong shape: inferred config disagrees, named precisely
    st = original_state(reference)
    st["trunk.3.f.f.2.weight"] = torch.zeros(100, 64)
    torch.save((st, 0.0), tmp_path / "bad_shape.pth")
    with pytest.raises(CheckpointError, match=r"blocks.1.mlp.fc_in.weight' has shape \(100, 64\)"):
        load(tmp_path / "bad_shape.pth")


def test_hub_identifier_gives_clear_offline_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="hub cannot be reached") as info:
        load("someone/culture-gpt")
    assert isinstance(info.value, GridlensError)
    assert "local" in str(info.value)


def test_export_to_original_layouts(reference):
    from gridlens.models.checkpoints import to_original_state_dict

    model = load(reference["path"])
    original = original_state(reference)
    exported = to_original_state_dict(model)
    assert list(exported) == list(original)
    assert all(torch.equal(exported[k], original[k]) for k in original)
    fork = to_original_state_dict(model, "fork")
    assert set(fork) == set(to_fork(original))
