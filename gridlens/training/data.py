"""The training stream and the held-out test set.

- `TestSet`: per task, a pool of quizzes generated from the test seed (canonical, clean). The
  evaluation of structure j takes a slice of the pool and reorders it to that structure, so
  every evaluated quiz comes from the pool.
- `QuizStream`: batch k of rank r is generated from a seed derived from (seed, k, r) alone, so
  the data position is the step number and a resumed run sees exactly the same batches.
  Every training quiz whose canonical grids hash into the test pool is dropped (and replaced by
  a fresh one drawn from (seed, k, r, attempt)).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

from gridlens.errors import ConfigError
from gridlens.world import generate
from gridlens.world import structures as st
from gridlens.world.tasks import TASKS, resolve_tasks
from gridlens.world.tokens import grids_to_tokens

_STREAM_TAG = 0x7472616E  # "tran": training batches
_TEST_TAG = 0x74657374  # "test": test pools


def derive_seed(*parts: int) -> np.random.Generator:
    """A numpy Generator from a tuple of non-negative integers (SeedSequence entropy)."""
    return np.random.default_rng(
        np.random.SeedSequence([int(p) & 0xFFFFFFFFFFFFFFFF for p in parts])
    )


@cache
def _multipliers(cells: int) -> np.ndarray:
    rng = np.random.default_rng(0x9E3779B97F4A7C15)
    return rng.integers(1, 2**63, size=cells, dtype=np.uint64) | np.uint64(1)


def quiz_hash(grids: np.ndarray) -> np.ndarray:
    """[n] uint64 hash of canonical grids [n, 4, H, W] (vectorised; collisions ~ n^2 / 2^64).

    A weighted sum of the cell values with random odd 64-bit multipliers (wrapping), followed
    by the splitmix64 finaliser; the grid shape enters the hash too."""
    g = np.asarray(grids)
    n = len(g)
    flat = g.reshape(n, -1).astype(np.uint64) + np.uint64(1)
    with np.errstate(over="ignore"):
        h = (flat * _multipliers(flat.shape[1])[None]).sum(axis=1, dtype=np.uint64)
        h ^= np.uint64((g.shape[-2] << 16) | g.shape[-1]) if g.ndim == 4 else np.uint64(0)
        h ^= h >> np.uint64(30)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    return h


@dataclass
class TestSet:
    """Held-out quizzes: `pools[task]` = canonical grids [pool, 4, H, W] (clean, no noise)."""

    __test__ = False  # not a pytest class

    seed: int
    pool: int
    pools: dict[str, np.ndarray]
    height: int = 10
    width: int = 10

    @classmethod
    def build(
        cls, tasks: Sequence[str] | str, pool: int, seed: int, height: int = 10, width: int = 10
    ) -> TestSet:
        names = resolve_tasks(tasks)
        pools = {}
        for name in names:
            rng = derive_seed(_TEST_TAG, seed, TASKS.index(name))
            pools[name] = generate(name, pool, seed=rng, height=height, width=width).grids
        return cls(seed, pool, pools, height, width)

    def hashes(self) -> np.ndarray:
        """Sorted uint64 hashes of every pool quiz."""
        return np.unique(np.concatenate([quiz_hash(g) for g in self.pools.values()]))

    def quizzes(self, task: str, structure: str, n: int) -> tuple[torch.Tensor, np.ndarray]:
        """n quizzes of `task` in `structure`: (tokens [n, L], canonical grids [n, 4, H, W]).

        Structures take disjoint slices of the pool (in STRUCTURE_NAMES order)."""
        pool = self.pools[task]
        j = st.STRUCTURE_NAMES.index(structure)
        if n * (j + 1) > len(pool):
            raise ConfigError(
                f"the test pool holds {len(pool)} quizzes per task; {n} per structure for "
                f"structure {structure!r} needs {n * (j + 1)} (raise test_pool, or evaluate fewer)"
            )
        grids = pool[j * n : (j + 1) * n]
        spec = st.get_structure(structure)
        return grids_to_tokens(st.reorder(grids, spec), spec.order), grids


class QuizStream:
    """Deterministic training batches: `batch(k)` depends only on (seed, k, rank)."""

    def __init__(
        self,
        tasks: Sequence[str] | str,
        structures: Sequence[str],
        noise: float,
        batch_size: int,
        seed: int,
        rank: int = 0,
        exclude: np.ndarray | None = None,
        height: int = 10,
        width: int = 10,
    ):
        self.tasks = resolve_tasks(tasks)
        self.structures = tuple(structures)
        self.noise = float(noise)
        self.batch_size = int(batch_size)
        self.seed, self.rank = int(seed), int(rank)
        self.exclude = np.sort(exclude) if exclude is not None else np.empty(0, np.uint64)
        self.height, self.width = height, width
        self.dropped = 0  # quizzes rejected because they are in the test pool (this process)

    def _draw(self, n: int, rng: np.random.Generator) -> tuple[torch.Tensor, np.ndarray]:
        batch = generate(
            self.tasks,
            n,
            seed=rng,
            structure=list(self.structures),
            noise=self.noise,
            height=self.height,
            width=self.width,
        )
        keep = np.ones(n, dtype=bool)
        if len(self.exclude):
            keep = ~np.isin(quiz_hash(batch.grids), self.exclude)
        return batch.tokens[torch.from_numpy(keep)], keep

    def batch(self, k: int) -> torch.Tensor:
        """Long tokens [batch_size, L] of step k (no quiz of the test pool)."""
        parts, have, attempt = [], 0, 0
        while have < self.batch_size:
            if attempt > 100:
                raise ConfigError(
                    "could not draw training quizzes outside the test pool "
                    "(is the task space tiny?)"
                )
            need = self.batch_size - have
            rng = derive_seed(_STREAM_TAG, self.seed, k, self.rank, attempt)
            tokens, keep = self._draw(need, rng)
            self.dropped += int((~keep).sum())
            parts.append(tokens)
            have += len(tokens)
            attempt += 1
        return torch.cat(parts)[: self.batch_size]
