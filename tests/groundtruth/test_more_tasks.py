"""The four later tasks (histogram, reversal, sort, modular_sum) and the 8-task benchmark: labels
by hand, against per-sequence Python references, and their interchange semantics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gridlens.groundtruth.spec import get_benchmark
from gridlens.groundtruth.tasks import get_task

NEW = ("histogram", "reversal", "sort", "modular_sum")


def tok(task, text: str) -> torch.Tensor:
    ids = {name: i for i, name in enumerate(task.vocab)}
    return torch.tensor([[0] + [ids[c] for c in text]])


def test_labels_by_hand():
    h = get_task("histogram", n_ctx=9)
    assert h.labels(tok(h, "abaabaaa")).tolist() == [[-1, 0, 0, 1, 2, 1, 3, 3, 3]]
    r = get_task("reversal", n_ctx=8)  # 7 content tokens: the centre (4) has no earlier mirror
    assert r.labels(tok(r, "abcabca")).tolist() == [[-1, 0, 0, 0, 0, 3, 2, 1]]
    s = get_task("sort", n_ctx=9)  # first half "caba" sorted into positions 5..8
    assert s.labels(tok(s, "cabaaaaa")).tolist() == [[-1, 0, 0, 0, 0, 1, 1, 2, 3]]
    m = get_task("modular_sum", n_ctx=6)
    assert m.labels(tok(m, "21202")).tolist() == [[-1, 2, 0, 0, 2, 2]]


def reference(name: str, seq: list[int]) -> list[int]:
    """Labels of one sequence (token classes 1..3 after BOS), written as plain loops."""
    n, c = len(seq), [t - 1 for t in seq]  # c[0] is BOS's -1
    out = [-1]
    for p in range(1, n):
        if name == "histogram":
            out.append(min(sum(c[j] == c[p] for j in range(1, p + 1)), 4) - 1)
        elif name == "reversal":
            out.append(c[n - p] if n - p < p else 0)
        elif name == "sort":
            half = (n - 1) // 2
            ranked = sorted(c[1 : half + 1])
            k = p - half - 1
            out.append(ranked[k] if 0 <= k < half else 0)
        else:
            out.append(((c[p] - 1) + (c[p - 1] - 1 if p > 1 else 0)) % 3)
    return out


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("n_ctx", [8, 15])
def test_labels_match_a_per_sequence_reference(name, n_ctx):
    t = get_task(name, n_ctx)
    x = t.generate(200, np.random.default_rng(n_ctx))
    assert t.labels(x).tolist() == [reference(name, row) for row in x.tolist()]


def test_interchanges_read_the_source_where_the_circuit_says():
    rng = np.random.default_rng(0)
    for name, var in [("histogram", "count"), ("reversal", "mirror"), ("sort", "n_a")]:
        t = get_task(name)
        base, src = t.generate(64, rng), t.generate(64, rng)
        hl, ones = t.high_level, torch.ones(64, dtype=torch.bool)
        patches = {v: (ones, hl.run(src)[v]) for v in ([var, "n_ab"] if name == "sort" else [var])}
        out = hl.run(base, patches)["out"]
        if name == "histogram":  # the count is the source's, capped by the same rule
            assert torch.equal(out, hl.run(src)["out"])
        else:  # the answer is wholly the source's in the second half
            assert torch.equal(out[:, 8:], t.labels(src)[:, 8:])
    m = get_task("modular_sum")
    base, src = m.generate(64, rng), m.generate(64, rng)
    prev = m.high_level.run(src)["prev"]
    out = m.high_level.run(base, {"prev": (torch.ones(64, dtype=torch.bool), prev)})["out"]
    assert torch.equal(out[:, 1:], ((base - 2) + prev)[:, 1:] % 3)


def test_all8_layout():
    b = get_benchmark("all8")
    assert b.config.n_heads == 8 and b.n_classes == 2 + 2 + 4 + 4 + 4 + 4 + 4 + 3
    nodes = {n.label: n.variables for n in b.nodes}
    heads = [nodes[f"L0H{h}"][0].split(".")[0] for h in range(8)]
    assert heads == ["parenthesis", "left_greater", "duplicate_remover", "unique_extractor", *NEW]
    assert nodes["L0H6"] == ["sort.n_a", "sort.n_ab"] and nodes["L1H1"] == ["task"]
    x, ids = b.generate(16, np.random.default_rng(0))
    lab = b.labels(x)
    assert all(
        ((lab[ids == k, 2:] >= b.offsets[k]) & (lab[ids == k, 2:] < b.offsets[k + 1])).all()
        for k in range(8)
    )
