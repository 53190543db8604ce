"""The activation cache: shards round-trip, damage is caught, streaming is ordered, seeded and
resumable, and an SAE trained from a cache equals one trained live on the same activations."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from gridlens.errors import CheckpointError, ConfigError
from gridlens.models.checkpoints import load
from gridlens.sae.cache import ActivationCache, write_cache
from gridlens.sae.model import SAEConfig
from gridlens.sae.train import SAETrainConfig, make_store, train_sae

ROWS, WIDTH = 50, 6


class Counting:
    """Batches of 7 rows whose values say which row they are: row i is [i, i + 0.5, ...]."""

    def __init__(self):
        self.next_row = 0

    def __next__(self):
        i = torch.arange(self.next_row, self.next_row + 7, dtype=torch.float32)
        self.next_row += 7
        return i[:, None] + 0.5 * torch.arange(WIDTH)


def all_rows(n=ROWS):
    return torch.arange(n, dtype=torch.float32)[:, None] + 0.5 * torch.arange(WIDTH)


@pytest.fixture
def cache(tmp_path):
    path = write_cache(Counting(), tmp_path / "c", ROWS, {"hook_name": "h"}, 16, progress=False)
    return ActivationCache(path)


def test_shards_round_trip(cache):
    assert [s["rows"] for s in cache.shards] == [16, 16, 16, 2]
    assert (cache.rows, cache.d_in, cache.hook_name) == (ROWS, WIDTH, "h")
    stored = torch.cat([cache.shard(i) for i in range(len(cache.shards))])
    assert torch.equal(stored, all_rows())
    manifest = json.loads((cache.path / "cache.json").read_text())
    assert manifest["format"] == "gridlens-activation-cache" and manifest["version"] == 1


def test_streaming_replays_in_order_across_shards_and_epochs(cache):
    store = cache.store(batch_size=9)
    assert torch.equal(store.peek(20), all_rows(20))
    seen = torch.cat([next(store) for _ in range(11)])  # 99 rows: one epoch and 49 more
    assert torch.equal(seen, torch.cat([all_rows(), all_rows()[:49]]))
    assert store.state_dict() == {"epoch": 1, "visit": 3, "row": 1}


def test_shuffled_streaming_is_seeded_per_epoch_and_resumes_exactly(cache):
    def epoch(store):
        return torch.cat([next(store) for _ in range(5)])  # 10 rows a batch, 50 an epoch

    a, b = cache.store(10, shuffle=True, seed=3), cache.store(10, shuffle=True, seed=3)
    first, again = epoch(a), epoch(b)
    assert torch.equal(first, again)  # deterministic in the seed
    assert not torch.equal(first, all_rows())  # shuffled ...
    assert torch.equal(first[first[:, 0].argsort()], all_rows())  # ... a permutation of all
    assert not torch.equal(epoch(a), first)  # the next epoch is another order
    other = epoch(cache.store(10, shuffle=True, seed=4))
    assert not torch.equal(other, first)
    paused = cache.store(10, shuffle=True, seed=3)
    for _ in range(7):
        next(paused)
    resumed = cache.store(10, shuffle=True, seed=3)
    resumed.load_state_dict(paused.state_dict())
    reference = cache.store(10, shuffle=True, seed=3)
    expected = [next(reference) for _ in range(12)][7:]
    assert all(torch.equal(next(resumed), e) for e in expected)


def test_ranks_read_disjoint_shards_and_one_shard_is_held_at_a_time(cache, monkeypatch):
    reads = []
    original = ActivationCache.shard
    monkeypatch.setattr(
        ActivationCache, "shard", lambda self, i: reads.append(i) or original(self, i)
    )
    ranks = [cache.store(batch_size=18, rank=r, world=2) for r in (0, 1)]
    assert torch.equal(next(ranks[0]), torch.cat([all_rows()[:16], all_rows()[32:34]]))
    assert torch.equal(next(ranks[1]), torch.cat([all_rows()[16:32], all_rows()[48:50]]))
    assert reads == [0, 2, 1, 3]  # each shard read once, in turn
    with pytest.raises(ConfigError, match="cannot feed"):
        cache.store(4, rank=5, world=6)


def test_damaged_or_swapped_shards_are_detected(cache):
    shard = cache.path / cache.shards[1]["file"]
    blob = bytearray(shard.read_bytes())
    blob[-3] ^= 0x40
    shard.write_bytes(bytes(blob))
    cache.shard(0)  # the others still read
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        cache.shard(1)
    shard.write_bytes((cache.path / cache.shards[0]["file"]).read_bytes())  # valid, but not it
    with pytest.raises(CheckpointError, match="not the shard"):
        cache.shard(1)
    shard.unlink()
    with pytest.raises(CheckpointError, match="missing"):
        ActivationCache(cache.path)
    with pytest.raises(ConfigError, match="not an activation cache"):
        ActivationCache(cache.path / "nowhere")


def test_training_from_a_cache_equals_training_live(tmp_path):
    model = load("default")
    sae_cfg = SAEConfig(
        d_in=128, d_sae=64, architecture="topk", hook_name="blocks.1.hook_mlp_out", k=4
    )
    train_cfg = SAETrainConfig(
        tokens=200 * 8,
        batch_size=200,
        buffer_quizzes=20,  # the 800-row initialisation sample lies in the first half-buffer
        model_batch=10,
        warmup_steps=2,
        dead_after_tokens=400,
        progress=False,
        device="cpu",
    )
    store = make_store(model, sae_cfg, train_cfg, "cpu")
    path = write_cache(store, tmp_path / "c", train_cfg.tokens, {"hook_name": sae_cfg.hook_name},
                       shard_rows=300, progress=False)  # fmt: skip
    live = train_sae(model, sae_cfg, train_cfg, progress=False)
    cached = train_sae(None, sae_cfg, train_cfg.replace(cache=str(path)), progress=False)
    for name, tensor in live.state_dict().items():
        assert torch.equal(tensor, cached.state_dict()[name]), name
    wrong = dataclasses.replace(sae_cfg, hook_name="blocks.2.hook_mlp_out")
    with pytest.raises(ConfigError, match=r"blocks\.1\.hook_mlp_out"):
        train_sae(None, wrong, train_cfg.replace(cache=str(path)), progress=False)


def test_cli_cache_then_train_from_it(tmp_path, capsys):
    from gridlens.cli import main

    cache = tmp_path / "cache"
    main(["sae", "cache", "--preset", "tiny", "--rows", "3072", "--shard-rows", "1000",
          "--out", str(cache), "--no-progress", "--device", "cpu"])  # fmt: skip
    assert [s["rows"] for s in ActivationCache(cache).shards] == [1000, 1000, 1000, 72]
    out = tmp_path / "sae"
    main(["sae", "train", "--preset", "tiny", "--cache", str(cache), "--tokens", "2048",
          "--out", str(out), "--no-progress", "--device", "cpu"])  # fmt: skip
    summary = json.loads((out / "training.json").read_text())
    assert summary["tokens"] == 2048 and summary["train"]["cache"] == str(cache.resolve())
    with pytest.raises(SystemExit) as exit_info:
        main(["sae", "train", "--cache", str(tmp_path / "none"), "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2
    assert "not an activation cache" in capsys.readouterr().err
