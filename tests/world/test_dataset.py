"""Sharded datasets: the content is generate() with derived seeds, reading streams it back,
resuming regenerates exactly what is missing or corrupted, and corruption is detected."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gridlens.errors import ConfigError, GridSizeError, UnknownNameError
from gridlens.world import generate
from gridlens.world.dataset import (
    MANIFEST,
    DatasetConfig,
    DatasetError,
    chunk_rng,
    generate_shard,
    open_dataset,
    shard_name,
    write_dataset,
)

OPTIONS = dict(tasks="replace_color", structure="mix", noise=0.1, shard_size=40, seed=7,
               chunk_size=16, progress=False)  # fmt: skip
N = 100  # shards of 40, 40, 20; chunks of 16


@pytest.fixture
def written(tmp_path):
    folder = tmp_path / "ds"
    manifest = write_dataset(folder, N, **OPTIONS)
    return folder, manifest


def _expected(k: int, count: int) -> torch.Tensor:
    """Shard k as generate() makes it from the documented derived seeds."""
    parts = []
    for j, start in enumerate(range(0, count, OPTIONS["chunk_size"])):
        size = min(OPTIONS["chunk_size"], count - start)
        rng = chunk_rng(OPTIONS["seed"], k, j)
        parts.append(generate("replace_color", size, seed=rng, structure="mix", noise=0.1))
    return parts


def test_round_trip_equals_generate_with_derived_seeds(written):
    folder, manifest = written
    assert manifest["complete"] and manifest["count"] == N
    assert [s["count"] for s in manifest["shards"]] == [40, 40, 20]
    assert manifest["format_version"] == 1 and manifest["config"]["seed"] == 7
    assert all(len(s["sha256"]) == 64 for s in manifest["shards"])
    assert manifest["task_counts"] == {"replace_color": N}
    assert sum(manifest["structure_counts"].values()) == N

    ds = open_dataset(folder)
    assert len(ds) == N and ds.tasks == ("replace_color",) and len(ds.structures) == 5
    batches = list(ds.batches(batch_size=30))
    assert [len(b) for b in batches] == [30, 30, 30, 10]  # batches span shard boundaries
    tokens = torch.cat([b.tokens for b in batches])
    structure = torch.cat([b.structure for b in batches])
    assert tokens.dtype == torch.long and tokens.shape == (N, 404)

    parts = [p for k, count in enumerate([40, 40, 20]) for p in _expected(k, count)]
    assert torch.equal(tokens, torch.cat([p.tokens for p in parts]))
    names = np.concatenate([p.structure for p in parts])
    assert [ds.structures[i] for i in structure.tolist()] == names.tolist()
    assert (torch.cat([b.task for b in batches]) == 0).all()


def test_generate_shard_is_the_definition(written):
    folder, _ = written
    ds = open_dataset(folder)
    config = DatasetConfig.make(N, "replace_color", "mix", 0.1, 40, 7, chunk_size=16)
    assert ds.config == config
    for k in range(3):
        stored, made = ds.read_shard(k), generate_shard(config, k)
        for key in ("tokens", "task", "structure"):
            assert np.array_equal(stored[key], made[key])


def test_shuffle_is_a_seeded_permutation(written):
    folder, _ = written
    ds = open_dataset(folder)
    plain = torch.cat([b.tokens for b in ds.batches(64)])
    a = torch.cat([b.tokens for b in ds.batches(64, shuffle=True, seed=1)])
    b = torch.cat([b.tokens for b in ds.batches(64, shuffle=True, seed=1)])
    assert torch.equal(a, b) and not torch.equal(a, plain)
    key = lambda t: sorted(map(tuple, t.tolist()))  # noqa: E731
    assert key(a) == key(plain)
    assert [len(x) for x in ds.batches(64, drop_last=True)] == [64]


def test_resume_regenerates_exactly_the_missing_and_corrupted_shards(written):
    folder, manifest = written
    before = {k: (folder / shard_name(k)).read_bytes() for k in range(3)}
    stamps = {k: (folder / shard_name(k)).stat().st_mtime_ns for k in range(3)}
    (folder / shard_name(1)).unlink()
    data = bytearray(before[2])
    data[-5] ^= 0xFF
    (folder / shard_name(2)).write_bytes(bytes(data))

    again = write_dataset(folder, N, **OPTIONS)
    assert again["shards"] == manifest["shards"]
    for k in range(3):
        assert (folder / shard_name(k)).read_bytes() == before[k]
    assert (folder / shard_name(0)).stat().st_mtime_ns == stamps[0]  # untouched

    # An interrupted run (manifest says shard 2 is not there yet) finishes identically.
    m = json.loads((folder / MANIFEST).read_text())
    m["shards"] = m["shards"][:2]
    m["complete"] = False
    (folder / MANIFEST).write_text(json.dumps(m))
    (folder / shard_name(2)).unlink()
    (folder / f".{shard_name(2)}.x1y2.tmp").write_bytes(b"half a shard from a killed run")
    with pytest.raises(DatasetError, match="incomplete"):
        open_dataset(folder)
    assert open_dataset(folder, allow_incomplete=True).__len__() == 80
    write_dataset(folder, N, **OPTIONS)
    assert (folder / shard_name(2)).read_bytes() == before[2]
    assert sorted(p.name for p in folder.iterdir()) == [MANIFEST, *map(shard_name, range(3))]


def test_corruption_is_detected_on_read(written):
    folder, _ = written
    path = folder / shard_name(1)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    ds = open_dataset(folder)
    stream = ds.batches(40)
    assert len(next(stream)) == 40  # shard 0 is fine
    with pytest.raises(DatasetError, match=r"shard-00001.*checksum mismatch"):
        next(stream)
    with pytest.raises(DatasetError, match="checksum"):
        ds.verify()
    path.unlink()
    with pytest.raises(DatasetError, match="missing"):
        ds.read_shard(1)


def test_malformed_manifests_are_named(written, tmp_path):
    folder, _ = written
    path = folder / MANIFEST
    original = path.read_text()
    path.write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        open_dataset(folder)
    m = json.loads(original)
    m["format_version"] = 99
    path.write_text(json.dumps(m))
    with pytest.raises(DatasetError, match="format_version"):
        open_dataset(folder)
    m["format_version"] = 1
    m["shards"][1]["file"] = "../../elsewhere.safetensors"
    path.write_text(json.dumps(m))
    with pytest.raises(DatasetError, match=r"shards\[1\]"):
        open_dataset(folder)
    with pytest.raises(DatasetError, match="not a gridlens dataset"):
        open_dataset(tmp_path)
    with pytest.raises(DatasetError, match="no such dataset"):
        open_dataset(tmp_path / "nowhere")


def test_other_config_in_existing_folder_is_refused(written):
    folder, _ = written
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(DatasetError, match=r"another configuration: seed=7 \(asked 8\)"):
        write_dataset(folder, N, **{**OPTIONS, "seed": 8})
    with pytest.raises(DatasetError, match="noise"):
        write_dataset(folder, N, **{**OPTIONS, "noise": 0.0})
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_bad_arguments_write_nothing(tmp_path):
    target = tmp_path / "new"
    for kwargs, error in [
        ({"tasks": "nope"}, UnknownNameError),
        ({"structure": "sideways"}, UnknownNameError),
        ({"height": 2}, GridSizeError),
        ({"shard_size": 0}, ConfigError),
        ({"noise": 1.5}, ConfigError),
    ]:
        with pytest.raises(error):
            write_dataset(target, 10, **{**OPTIONS, **kwargs})
    with pytest.raises(ConfigError):
        write_dataset(target, 0, **OPTIONS)
    assert not target.exists()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="not empty"):
        write_dataset(tmp_path / "busy", 10, **OPTIONS)
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["notes.txt"]


def test_non_square_grids_and_labels(tmp_path):
    folder = tmp_path / "wide"
    write_dataset(folder, 12, tasks="replace_color", structure="forward,inverse", noise=0.0,
                  shard_size=5, seed=1, height=8, width=12, progress=False)  # fmt: skip
    ds = open_dataset(folder)
    assert ds.structures == ("forward", "inverse") and ds.quiz_length == 4 * 97
    batch = next(iter(ds.batches(12)))
    assert batch.tokens.shape == (12, 388) and set(batch.structure.tolist()) <= {0, 1}
