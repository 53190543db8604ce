"""Test helpers shared by the world tests: reference quizzes, colour remapping, plain BFS, and
the statistics used to compare our samplers with the reference's."""

from __future__ import annotations

from collections import deque
from pathlib import Path

import numpy as np

from gridlens.world import generate

FAR = 10_000


def reference_grids(reference_dir: Path, task: str) -> np.ndarray:
    """The reference quizzes of `task` as int64 grids [n, 4, 10, 10] (grid tokens dropped)."""
    tokens = np.load(reference_dir / "fleuret_reference_quizzes.npz")[task]
    return tokens.astype(np.int64).reshape(-1, 4, 101)[:, :, 1:].reshape(-1, 4, 10, 10)


def recolour(grids: np.ndarray, old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Map colours old[n, k] -> new[n, k] in grids [n, ...]."""
    lut = np.tile(np.arange(11), (len(grids), 1))
    np.put_along_axis(lut, old, new, axis=1)
    n = len(grids)
    return np.take_along_axis(lut, grids.reshape(n, -1), axis=1).reshape(grids.shape)


def grafted_pairs(task, n: int = 300, seed: int = 5):
    """Two samples a, b of `task` and quizzes whose (B, f(B)) pair comes from b, recoloured so
    b's colour k becomes a's colour k: a valid quiz exactly when a and b share the rule's other
    parameters."""
    rng = np.random.default_rng(seed)
    a, b = task.generate(n, rng), task.generate(n, rng)
    mixed = a.grids.copy()
    mixed[:, 2:] = recolour(b.grids[:, 2:], b.params["colors"], a.params["colors"])
    return a, b, mixed


def bfs(free: np.ndarray, start: tuple[int, int]) -> np.ndarray:
    """4-connected distances inside `free` from `start`; FAR where unreachable."""
    h, w = free.shape
    d = np.full((h, w), FAR, dtype=np.int64)
    d[start] = 0
    todo = deque([start])
    while todo:
        i, j = todo.popleft()
        for a, b in ((i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1)):
            if 0 <= a < h and 0 <= b < w and free[a, b] and d[a, b] == FAR:
                d[a, b] = d[i, j] + 1
                todo.append((a, b))
    return d


def chi2_stat(observed: np.ndarray, expected: np.ndarray) -> tuple[float, int]:
    """Pearson's statistic over the cells expecting at least 5, and its degrees of freedom."""
    keep = expected >= 5
    return (((observed - expected) ** 2)[keep] / expected[keep]).sum(), keep.sum() - 1


def chi2_threshold(df: int) -> float:
    return df + 5 * np.sqrt(2 * df)  # far in the tail (p < 1e-4); fixed seeds make it stable


def z_score(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two-sample z of the means along axis 0."""
    return (a.mean(0) - b.mean(0)) / np.sqrt(a.var(0) / len(a) + b.var(0) / len(b))


def assert_works_at_size(task, name: str, h: int, w: int) -> None:
    """At H x W: generated quizzes pass the checker with objects exactly on coloured cells, and
    other_parameters answers all fail it."""
    batch = generate(name, 200, seed=2, height=h, width=w)
    assert batch.grids.shape == (200, 4, h, w)
    assert task.check(batch.grids).all()
    assert np.array_equal(batch.objects >= 0, batch.grids != 0)
    rng = np.random.default_rng(1)
    sample = task.generate(200, rng, h, w)
    bad = sample.grids.copy()
    bad[:, 3] = task.other_parameters(sample, rng)
    assert not task.check(bad).any()
