"""Activations cached on disk, so that SAE runs on one site reuse one forward pass of the model.

A cache directory holds:
    cache.json                  format, version, the site, the stream it came from, and per
                                shard its file name, rows and the sha256 of its tensor data
    shard_NNNNN.safetensors     "activations" [rows, d_in] float32 (sha256 in its metadata too)
Rows are stored in the order the ActivationStore yielded them (already shuffled), so reading a
cache in order replays the live stream: an SAE trained from it equals one trained live on the
same activations (the initialisation sample included when it lies within the store's first
half-buffer, as with the default recipe).

Reading streams one shard at a time (a shard is at most SHARD_BYTES), so a cache may be larger
than memory; each shard's checksum is verified when it is read. `CachedStore` is the trainer's
store interface (next, peek, state_dict); under torchrun rank r reads shards r, r + W, ...
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gridlens.errors import CheckpointError, ConfigError
from gridlens.integrity import seal_safetensors, verify_safetensors_bytes
from gridlens.io import atomic_directory, atomic_write

FORMAT = "gridlens-activation-cache"
VERSION = 1
MANIFEST = "cache.json"
SHARD_BYTES = 64 * 2**20
_SHUFFLE_TAG = 0x63616368  # "cach"


def shard_rows_for(d_in: int) -> int:
    """Rows per shard that keep a shard within SHARD_BYTES."""
    return max(1, SHARD_BYTES // (4 * d_in))


def write_cache(
    store,
    out: str | Path,
    rows: int,
    meta: dict[str, Any] | None = None,
    shard_rows: int | None = None,
    progress: bool = True,
) -> Path:
    """Write the next `rows` rows of `store` (an iterator of [batch, d_in] batches) as a cache
    at `out`, built beside it and renamed into place whole. meta: what made the rows (the
    site's `hook_name` at least), recorded in cache.json."""
    if rows < 1:
        raise ConfigError(f"rows must be >= 1, got {rows}")
    meta = dict(meta or {})
    if "hook_name" not in meta:
        raise ConfigError("a cache's meta must name its hook site (hook_name)")

    def fill(staging: Path) -> None:
        shards, pending, done = [], [], 0
        bar = _bar(rows, progress)
        while done < rows:
            batch = next(store).detach().float().cpu()[: rows - done]
            pending.append(batch)
            done += len(batch)
            bar.update(len(batch))
            width = batch.shape[-1]
            limit = shard_rows or shard_rows_for(width)
            while sum(len(p) for p in pending) >= limit or (done == rows and pending):
                block = torch.cat(pending)
                shards.append(_write_shard(staging, len(shards), block[:limit]))
                pending = [block[limit:]] if len(block) > limit else []
        bar.close()
        manifest = {"format": FORMAT, "version": VERSION, "rows": rows, "d_in": width, **meta}
        manifest["shards"] = shards
        data = (json.dumps(manifest, indent=1) + "\n").encode()
        atomic_write(staging / MANIFEST, lambda handle: handle.write(data))

    return atomic_directory(out, fill)


def _write_shard(folder: Path, index: int, rows: torch.Tensor) -> dict[str, Any]:
    blob = seal_safetensors({"activations": rows.contiguous()})
    name = f"shard_{index:05d}.safetensors"
    atomic_write(folder / name, lambda handle: handle.write(blob))
    header = json.loads(blob[8 : 8 + int.from_bytes(blob[:8], "little")])
    return {"file": name, "rows": len(rows), "sha256": header["__metadata__"]["sha256"]}


def _bar(total: int, show: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="cache", unit="row", unit_scale=True, disable=not show)


class ActivationCache:
    """A cache directory, checked on opening (format, version, every shard present)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        manifest = self.path / MANIFEST
        if not manifest.is_file():
            raise ConfigError(f"{self.path}: not an activation cache (no {MANIFEST})")
        try:
            self.manifest = json.loads(manifest.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise CheckpointError(f"{manifest}: unreadable ({error})") from None
        if self.manifest.get("format") != FORMAT or self.manifest.get("version") != VERSION:
            raise CheckpointError(
                f"{manifest}: format {self.manifest.get('format')!r} version "
                f"{self.manifest.get('version')!r}, expected {FORMAT!r} version {VERSION}"
            )
        missing = [s["file"] for s in self.shards if not (self.path / s["file"]).is_file()]
        if missing:
            raise CheckpointError(f"{self.path}: shard files missing: {missing[:3]}")

    @property
    def shards(self) -> list[dict[str, Any]]:
        return self.manifest["shards"]

    @property
    def rows(self) -> int:
        return int(self.manifest["rows"])

    @property
    def d_in(self) -> int:
        return int(self.manifest["d_in"])

    @property
    def hook_name(self) -> str:
        return self.manifest["hook_name"]

    def shard(self, i: int) -> torch.Tensor:
        """Shard i's rows, its checksum verified against the file's and the manifest's."""
        from safetensors.torch import load

        entry = self.shards[i]
        path = self.path / entry["file"]
        blob = path.read_bytes()
        verify_safetensors_bytes(blob, path)
        header = json.loads(blob[8 : 8 + int.from_bytes(blob[:8], "little")])
        if header.get("__metadata__", {}).get("sha256") != entry["sha256"]:
            raise CheckpointError(f"{path}: not the shard {MANIFEST} lists (checksum differs)")
        rows = load(blob)["activations"]
        if rows.shape != (entry["rows"], self.d_in):
            raise CheckpointError(
                f"{path}: shape {list(rows.shape)}, expected [{entry['rows']}, {self.d_in}]"
            )
        return rows

    def store(
        self, batch_size: int, shuffle: bool = False, seed: int = 0, rank: int = 0, world: int = 1
    ) -> CachedStore:
        return CachedStore(self, batch_size, shuffle, seed, rank, world)


class CachedStore:
    """An endless iterator of [batch_size, d_in] batches read from a cache, one shard in memory
    at a time; after the last row it starts again (the next epoch). shuffle: each epoch visits
    the shards in a seeded order and permutes each shard's rows (a function of (seed, epoch,
    shard) alone, so `state_dict` is three numbers)."""

    def __init__(self, cache, batch_size, shuffle=False, seed=0, rank=0, world=1):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        mine = list(range(rank, len(cache.shards), world))
        if not mine:
            raise ConfigError(
                f"{cache.path}: {len(cache.shards)} shard(s) cannot feed {world} processes"
            )
        self.cache, self.batch_size, self.shuffle, self.seed = cache, batch_size, shuffle, seed
        self.mine = mine
        self.epoch, self.visit, self.row = 0, 0, 0  # position: epoch, shard visit, row in it
        self._loaded: tuple[tuple[int, int], torch.Tensor] | None = None

    def _order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return self.mine
        rng = np.random.default_rng([_SHUFFLE_TAG, self.seed, epoch])
        return [self.mine[i] for i in rng.permutation(len(self.mine))]

    def _rows(self, epoch: int, visit: int) -> torch.Tensor:
        key = (epoch, visit)
        if self._loaded is None or self._loaded[0] != key:
            shard = self._order(epoch)[visit]
            rows = self.cache.shard(shard)
            if self.shuffle:
                rng = np.random.default_rng([_SHUFFLE_TAG, self.seed, epoch, shard])
                rows = rows[torch.from_numpy(rng.permutation(len(rows)))]
            self._loaded = (key, rows)
        return self._loaded[1]

    def _take(self, n: int, advance: bool) -> torch.Tensor:
        epoch, visit, row = self.epoch, self.visit, self.row
        parts = []
        while n > 0:
            rows = self._rows(epoch, visit)
            part = rows[row : row + n]
            parts.append(part)
            n -= len(part)
            row += len(part)
            if row == len(rows):
                visit, row = visit + 1, 0
                if visit == len(self.mine):
                    epoch, visit = epoch + 1, 0
        if advance:
            self.epoch, self.visit, self.row = epoch, visit, row
        return torch.cat(parts)

    def __iter__(self) -> CachedStore:
        return self

    def __next__(self) -> torch.Tensor:
        return self._take(self.batch_size, advance=True)

    def peek(self, n: int) -> torch.Tensor:
        """The next n rows, not consumed (the trainer's initialisation sample)."""
        return self._take(min(n, self.cache.rows), advance=False).clone()

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "visit": self.visit, "row": self.row}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.visit, self.row = (
            int(state["epoch"]),
            int(state["visit"]),
            int(state["row"]),
        )
