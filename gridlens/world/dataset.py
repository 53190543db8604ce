"""Sharded quiz datasets on disk: written resumably with checksums, streamed back as tensors.

A dataset folder holds `manifest.json` and shards `shard-00000.safetensors`, ... Each shard
stores `tokens` uint8 [m, 4 * (1 + H*W)] (each quiz in its own structure, prompt noise applied),
`task` uint8 [m] (index into the manifest's `tasks`) and `structure` uint8 [m] (index into its
`structures`).

Shard k holds quizzes k * shard_size ... and is generated in chunks of `chunk_size` quizzes:
chunk j is `generate(tasks, size, seed=chunk_rng(seed, k, j), structure=structures,
noise=noise)`, so a shard's content depends only on the configuration and (seed, k, j), never on
interruptions, resumption or which other shards exist. `generate_shard` is that definition.

The manifest records the format version, the configuration, per-shard counts and sha256
checksums, and whether the dataset is complete. Re-running `write_dataset` with the same
configuration verifies existing shards, skips good ones and regenerates missing or corrupted
ones; a different configuration in the same folder is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from gridlens.errors import ConfigError, GridlensError
from gridlens.io import atomic_write
from gridlens.world.generate import generate, resolve_structures
from gridlens.world.tasks import get_task, resolve_tasks
from gridlens.world.tokens import quiz_length

FORMAT = "gridlens-world-dataset"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DEFAULT_CHUNK = 10_000


class DatasetError(GridlensError, ValueError):
    """A dataset folder or shard that is missing, corrupted, incomplete or of another version."""


@dataclass(frozen=True)
class DatasetConfig:
    """Everything that determines a dataset's content."""

    n: int
    tasks: tuple[str, ...]
    structures: tuple[str, ...]
    noise: float
    shard_size: int
    seed: int
    height: int = 10
    width: int = 10
    chunk_size: int = DEFAULT_CHUNK

    @classmethod
    def make(
        cls,
        n: int,
        tasks="default",
        structure="mix",
        noise: float = 0.05,
        shard_size: int = 100_000,
        seed: int = 0,
        height: int = 10,
        width: int = 10,
        chunk_size: int = DEFAULT_CHUNK,
    ) -> DatasetConfig:
        """Resolve and validate (task names, structures, sizes) without touching the disk."""
        names = resolve_tasks(tasks)
        if isinstance(structure, str) and "," in structure:
            structure = [s.strip() for s in structure.split(",") if s.strip()]
        structures = resolve_structures(structure)
        for name, value, low in (("n", n, 1), ("shard_size", shard_size, 1),
                                 ("chunk_size", chunk_size, 1), ("seed", seed, 0)):  # fmt: skip
            if not isinstance(value, int | np.integer) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        if not 0.0 <= noise <= 1.0:
            raise ConfigError(f"noise must be a probability in [0, 1], got {noise}")
        if len(names) > 255 or len(structures) > 255:
            raise ConfigError("a dataset holds at most 255 tasks and 255 structures")
        for name in names:
            get_task(name).validate_size(height, width)
        return cls(int(n), tuple(names), tuple(structures), float(noise), int(shard_size),
                   int(seed), int(height), int(width), int(chunk_size))  # fmt: skip

    @property
    def n_shards(self) -> int:
        return math.ceil(self.n / self.shard_size)

    def shard_count(self, k: int) -> int:
        return min(self.shard_size, self.n - k * self.shard_size)

    def to_json(self) -> dict:
        d = asdict(self)
        d["tasks"], d["structures"] = list(self.tasks), list(self.structures)
        return d

    @classmethod
    def from_json(cls, d: dict, source: str = "manifest") -> DatasetConfig:
        """The configuration a manifest records, with every field checked as `make` does."""
        ints = ("n", "shard_size", "seed", "height", "width", "chunk_size")
        try:
            bad = [k for k in ints if not isinstance(d[k], int) or isinstance(d[k], bool)]
            if bad or not isinstance(d["noise"], int | float):
                raise TypeError(f"fields {bad or ['noise']} must be numbers")
            if not all(isinstance(d[k], list) for k in ("tasks", "structures")):
                raise TypeError("fields 'tasks' and 'structures' must be lists of names")
            return cls.make(d["n"], d["tasks"], d["structures"], d["noise"], d["shard_size"],
                            d["seed"], d["height"], d["width"], d["chunk_size"])  # fmt: skip
        except (KeyError, TypeError, GridlensError) as error:
            raise DatasetError(f"{source}: malformed 'config' ({error})") from None


def chunk_rng(seed: int, shard: int, chunk: int) -> np.random.Generator:
    """The generator of chunk `chunk` of shard `shard`: derived from (seed, shard, chunk) only."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(shard, chunk)))


def generate_shard(config: DatasetConfig, k: int) -> dict[str, np.ndarray]:
    """The arrays of shard k (tokens uint8 [m, L], task and structure uint8 [m])."""
    if not 0 <= k < config.n_shards:
        raise ConfigError(f"shard {k} does not exist (the dataset has {config.n_shards})")
    count = config.shard_count(k)
    parts = []
    for j, start in enumerate(range(0, count, config.chunk_size)):
        parts.append(_generate_chunk(config, k, j, min(config.chunk_size, count - start)))
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def _generate_chunk(config: DatasetConfig, k: int, j: int, size: int) -> dict[str, np.ndarray]:
    batch = generate(
        config.tasks,
        size,
        seed=chunk_rng(config.seed, k, j),
        structure=config.structures,
        noise=config.noise,
        height=config.height,
        width=config.width,
    )
    task_index = {name: i for i, name in enumerate(config.tasks)}
    structure_index = {name: i for i, name in enumerate(config.structures)}
    return {
        "tokens": batch.tokens.numpy().astype(np.uint8),
        "task": np.array([task_index[t] for t in batch.task], dtype=np.uint8),
        "structure": np.array([structure_index[s] for s in batch.structure], dtype=np.uint8),
    }


# ----------------------------------------------------------------------------------- writing


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.safetensors"


def _counts(labels: np.ndarray, names: tuple[str, ...]) -> dict[str, int]:
    counts = np.bincount(labels, minlength=len(names))
    return {name: int(c) for name, c in zip(names, counts, strict=True)}


def _write_manifest(folder: Path, config: DatasetConfig, shards: dict[int, dict]) -> dict:
    done = [shards[k] for k in sorted(shards)]
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config.to_json(),
        "tasks": list(config.tasks),
        "structures": list(config.structures),
        "quiz_length": quiz_length(config.height, config.width),
        "complete": len(done) == config.n_shards,
        "count": sum(s["count"] for s in done),
        "task_counts": {t: sum(s["task_counts"][t] for s in done) for t in config.tasks},
        "structure_counts": {
            s: sum(d["structure_counts"][s] for d in done) for s in config.structures
        },
        "shards": done,
    }
    data = (json.dumps(manifest, indent=1) + "\n").encode()
    atomic_write(folder / MANIFEST, lambda handle: handle.write(data))
    return manifest


def _load_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(f"{folder}: not a gridlens dataset (no {MANIFEST})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DatasetError(f"{path}: field 'format' must be {FORMAT!r}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DatasetError(
            f"{path}: field 'format_version' is {manifest.get('format_version')!r}; "
            f"this gridlens reads version {FORMAT_VERSION}"
        )
    for key in ("config", "shards"):
        if key not in manifest:
            raise DatasetError(f"{path}: missing field {key!r}")
    return manifest


def write_dataset(
    out_dir: str | os.PathLike,
    n: int,
    tasks="default",
    structure="mix",
    noise: float = 0.05,
    shard_size: int = 100_000,
    seed: int = 0,
    height: int = 10,
    width: int = 10,
    chunk_size: int = DEFAULT_CHUNK,
    progress: bool = True,
) -> dict:
    """Write (or finish) a dataset of `n` quizzes in `out_dir`; returns the final manifest.

    Resumable: shards already present with the checksum the manifest records are kept, the
    others (re)generated. Every file is written atomically, the manifest after each shard.
    """
    from tqdm import tqdm

    config = DatasetConfig.make(n, tasks, structure, noise, shard_size, seed, height, width,
                                chunk_size)  # fmt: skip
    folder = Path(out_dir)
    if folder.exists() and not folder.is_dir():
        raise DatasetError(f"{folder}: exists and is not a folder")
    shards: dict[int, dict] = {}
    if (folder / MANIFEST).exists():
        manifest = _load_manifest(folder)
        old = DatasetConfig.from_json(manifest["config"], str(folder / MANIFEST))
        if old != config:
            differ = [
                f"{key}={getattr(old, key)!r} (asked {getattr(config, key)!r})"
                for key in config.to_json()
                if getattr(old, key) != getattr(config, key)
            ]
            raise DatasetError(
                f"{folder} holds a dataset with another configuration: {', '.join(differ)}; "
                "use another folder or the same options"
            )
        for entry in manifest["shards"]:
            k = entry.get("index")
            if not isinstance(k, int) or not 0 <= k < config.n_shards:
                continue
            path = folder / shard_name(k)
            if path.is_file() and _sha256_file(path) == entry.get("sha256"):
                shards[k] = entry
    elif folder.is_dir() and any(folder.iterdir()):
        raise DatasetError(
            f"{folder}: folder is not empty and holds no {MANIFEST}; "
            "write datasets into a new or empty folder"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(".*.tmp"):  # left by a killed run
            stale.unlink()
        _write_manifest(folder, config, shards)
        done = sum(shards[k]["count"] for k in shards)
        bar = tqdm(total=config.n, initial=done, unit="quiz", unit_scale=True,
                   desc=f"dataset {folder.name}", disable=not progress, smoothing=0.1)  # fmt: skip
        with bar:
            for k in range(config.n_shards):
                if k in shards:
                    continue
                count = config.shard_count(k)
                parts = []
                for j, start in enumerate(range(0, count, config.chunk_size)):
                    size = min(config.chunk_size, count - start)
                    parts.append(_generate_chunk(config, k, j, size))
                    bar.update(size)
                arrays = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
                shards[k] = _write_shard(folder, config, k, arrays)
                _write_manifest(folder, config, shards)
        return _write_manifest(folder, config, shards)
    except OSError as error:
        raise DatasetError(f"{folder}: cannot write the dataset ({error})") from None


def _write_shard(folder: Path, config: DatasetConfig, k: int, arrays: dict) -> dict:
    from safetensors.numpy import save

    # One metadata key: safetensors writes several in a random order, which would make the
    # bytes (and the checksum) of identical shards differ between runs.
    info = json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, "shard": k})
    data = save(arrays, metadata={"gridlens": info})
    atomic_write(folder / shard_name(k), lambda handle: handle.write(data))
    return {
        "index": k,
        "file": shard_name(k),
        "count": len(arrays["tokens"]),
        "sha256": hashlib.sha256(data).hexdigest(),
        "task_counts": _counts(arrays["task"], config.tasks),
        "structure_counts": _counts(arrays["structure"], config.structures),
    }


# ----------------------------------------------------------------------------------- reading


@dataclass
class DatasetBatch:
    """A batch read back: tokens long [b, L], task and structure long [b] (label indices)."""

    tokens: torch.Tensor
    task: torch.Tensor
    structure: torch.Tensor

    def __len__(self) -> int:
        return len(self.tokens)


class WorldDataset:
    """A dataset folder opened for reading: `len(ds)`, `ds.tasks`, `ds.structures`,
    `ds.read_shard(k)`, `ds.verify()`, and `ds.batches(batch_size)` which streams shard by shard,
    verifying each shard's checksum as it is read."""

    def __init__(self, path: str | os.PathLike, allow_incomplete: bool = False):
        self.path = Path(path)
        if not self.path.is_dir():
            raise DatasetError(f"{self.path}: no such dataset folder")
        self.manifest = _load_manifest(self.path)
        self.config = DatasetConfig.from_json(self.manifest["config"], str(self.path / MANIFEST))
        if not self.manifest.get("complete") and not allow_incomplete:
            raise DatasetError(
                f"{self.path}: dataset incomplete ({self.manifest.get('count', 0)} of "
                f"{self.config.n} quizzes); re-run the same `gridlens world dataset` command "
                "to finish it"
            )
        manifest_path = self.path / MANIFEST
        for i, entry in enumerate(self.manifest["shards"]):
            ok = isinstance(entry, dict) and isinstance(entry.get("index"), int)
            ok = ok and entry.get("file") == shard_name(entry["index"])
            ok = ok and isinstance(entry.get("count"), int) and isinstance(entry.get("sha256"), str)
            if not ok:
                raise DatasetError(
                    f"{manifest_path}: field 'shards[{i}]' must hold index, file "
                    "(shard-NNNNN.safetensors), count and sha256"
                )
        self.shards = sorted(self.manifest["shards"], key=lambda s: s["index"])
        self._check_shard_list(manifest_path)
        self.tasks: tuple[str, ...] = self.config.tasks
        self.structures: tuple[str, ...] = self.config.structures
        self.quiz_length = quiz_length(self.config.height, self.config.width)

    def _check_shard_list(self, manifest_path: Path) -> None:
        """Each shard listed once, with the count its index must have, and (complete datasets)
        every shard listed: a manifest edited by hand cannot silently drop or repeat data."""
        indices = [s["index"] for s in self.shards]
        repeated = sorted({k for k in indices if indices.count(k) > 1})
        wrong = [
            s["index"] for s in self.shards
            if not 0 <= s["index"] < self.config.n_shards
            or s["count"] != self.config.shard_count(s["index"])
        ]  # fmt: skip
        missing = sorted(set(range(self.config.n_shards)) - set(indices))
        problem = ""
        if repeated:
            problem = f"shards {repeated} are listed more than once"
        elif wrong:
            problem = f"shards {wrong} have an index or count that does not fit the config"
        elif missing and self.manifest["complete"]:
            problem = f"shards {missing[:10]} are missing"
        if problem:
            raise DatasetError(
                f"{manifest_path}: {problem} (n={self.config.n}, shard_size="
                f"{self.config.shard_size}); re-run the dataset command to repair it"
            )

    def __len__(self) -> int:
        return sum(s["count"] for s in self.shards)

    def __repr__(self) -> str:
        return f"WorldDataset({str(self.path)!r}, {len(self)} quizzes, tasks={list(self.tasks)})"

    def read_shard(self, k: int) -> dict[str, np.ndarray]:
        """Shard k's arrays (numpy), after checking its checksum, shapes and label ranges."""
        from safetensors import SafetensorError
        from safetensors.numpy import load

        entry = next((s for s in self.shards if s["index"] == k), None)
        if entry is None:
            raise DatasetError(f"{self.path}: shard {k} is not in the manifest")
        path = self.path / entry["file"]
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise DatasetError(f"{path}: shard file missing") from None
        except OSError as error:
            raise DatasetError(f"{path}: cannot read the shard ({error.strerror})") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != entry["sha256"]:
            raise DatasetError(
                f"{path}: checksum mismatch (manifest sha256 {entry['sha256'][:16]}..., file "
                f"{digest[:16]}...): the shard is corrupted; re-run the dataset command to "
                "regenerate it"
            )
        try:
            arrays = load(data)
        except (SafetensorError, ValueError) as error:
            raise DatasetError(f"{path}: not a readable safetensors shard ({error})") from None
        m = entry["count"]
        expected = {"tokens": (m, self.quiz_length), "task": (m,), "structure": (m,)}
        for key, shape in expected.items():
            if key not in arrays or arrays[key].shape != shape or arrays[key].dtype != np.uint8:
                got = arrays[key].shape if key in arrays else "missing"
                raise DatasetError(f"{path}: field {key!r} must be uint8 {list(shape)}, got {got}")
        if m and (
            arrays["tokens"].max() >= 15
            or arrays["task"].max() >= len(self.tasks)
            or arrays["structure"].max() >= len(self.structures)
        ):
            raise DatasetError(f"{path}: token or label values out of range")
        return arrays

    def verify(self) -> None:
        """Read and check every shard; raises DatasetError at the first bad one."""
        for entry in self.shards:
            self.read_shard(entry["index"])

    def batches(
        self,
        batch_size: int = 256,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        device: str | torch.device | None = None,
    ) -> Iterator[DatasetBatch]:
        """Stream the dataset in batches (one shard in memory at a time). shuffle=True permutes
        the shard order and the quizzes within each shard with a generator seeded by `seed`."""
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        rng = np.random.default_rng(seed)
        order = [s["index"] for s in self.shards]
        if shuffle:
            order = [order[i] for i in rng.permutation(len(order))]
        keys = ("tokens", "task", "structure")
        carry: dict[str, np.ndarray] | None = None
        for k in order:
            arrays = self.read_shard(k)
            if shuffle:
                perm = rng.permutation(len(arrays["tokens"]))
                arrays = {key: arrays[key][perm] for key in keys}
            if carry is not None:
                arrays = {key: np.concatenate([carry[key], arrays[key]]) for key in keys}
            m = len(arrays["tokens"])
            full = m - m % batch_size
            for start in range(0, full, batch_size):
                yield self._batch({key: arrays[key][start : start + batch_size] for key in keys},
                                  device)  # fmt: skip
            carry = {key: arrays[key][full:] for key in keys}
        if carry is not None and len(carry["tokens"]) and not drop_last:
            yield self._batch(carry, device)

    def __iter__(self) -> Iterator[DatasetBatch]:
        return self.batches()

    @staticmethod
    def _batch(arrays: dict[str, np.ndarray], device) -> DatasetBatch:
        def convert(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(a.astype(np.int64)).to(device)

        return DatasetBatch(*(convert(arrays[key]) for key in ("tokens", "task", "structure")))


def open_dataset(path: str | os.PathLike, allow_incomplete: bool = False) -> WorldDataset:
    """Open a dataset folder written by `write_dataset` / `gridlens world dataset`."""
    return WorldDataset(path, allow_incomplete=allow_incomplete)
