"""The scoreboard's faster paths give the old answers: probes fitted on distinct rows, and the
board's parts shared among forked worker processes."""

from __future__ import annotations

import multiprocessing as mp

import pytest
import torch
import torch.nn.functional as F

from gridlens.groundtruth import shipped
from gridlens.groundtruth.iit import load_run
from gridlens.groundtruth.scoreboard import scoreboard
from gridlens.groundtruth.scoring import train_probes


def _probes_on_every_row(acts, y, steps, lr=0.05):
    """The reference: full-batch Adam on every row, as train_probes did before it deduplicated."""
    mu, sd = acts.mean(0), acts.std(0).clamp(min=1e-6)
    x = (acts - mu) / sd
    w = torch.zeros(acts.shape[1], y.shape[1], requires_grad=True)
    b = torch.zeros(y.shape[1], requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=lr)
    pos = y.float().mean(0).clamp(1e-4, 1 - 1e-4)
    for _ in range(steps):
        loss = F.binary_cross_entropy_with_logits(x @ w + b, y.float(), pos_weight=(1 - pos) / pos)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (w / sd[:, None]).detach().t(), (b - (mu / sd) @ w).detach()


def test_probes_on_distinct_rows_match_probes_on_every_row():
    g = torch.Generator().manual_seed(0)
    distinct = torch.relu(torch.randn(200, 8, generator=g))
    # rows repeat unevenly (1 to 30 times), as early positions do across inputs: weighting by
    # the count is what keeps the loss; dropping the weights moves them by ~20%
    repeats = torch.randint(1, 31, (200,), generator=g)
    acts = distinct.repeat_interleave(repeats, 0)
    noisy = distinct @ torch.randn(8, 3, generator=g) + torch.randn(200, 3, generator=g)
    labels = (noisy > 0.3).repeat_interleave(repeats, 0)
    y = torch.cat([labels, ~labels[:, :1]], 1)  # and a column that is one's complement
    w, b = train_probes(acts, y, steps=200)
    w_ref, b_ref = _probes_on_every_row(acts, y, steps=200)
    # the same loss; only the order of the sums differs (Adam amplifies it early on)
    assert (w - w_ref).abs().max() < 2e-3 * w_ref.abs().max()
    assert (b - b_ref).abs().max() < 2e-3 * b_ref.abs().max()
    assert F.cosine_similarity(w, w_ref, dim=1).min() > 0.99999
    predicted = acts @ w.t() + b > 0
    assert (predicted == y).float().mean() > 0.8


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="workers are forked")
def test_the_board_from_two_workers_equals_the_board_from_one_process():
    runs = {
        name: load_run(shipped.SHIPPED_DIR / name)[:2] for name in ("left_greater", "parenthesis")
    }
    cfg = {
        "sites": ["mlp"],
        "train_saes": ["topk"],
        "n_per_task": 16,
        "sae_steps": 5,
        "sae_k": 4,
        "seed": 0,
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in each worker: the same arithmetic, bit for bit
    try:
        one = scoreboard(runs, cfg, [], log=lambda line: None, workers=1)
    finally:
        torch.set_num_threads(threads)
    lines = []
    two = scoreboard(runs, cfg, [], log=lines.append, workers=2)
    assert two == one
    assert [row["method"] for row in one["rows"]] == [
        "none",
        "neurons · mlp",
        "probe · mlp",
        "sae-topk · mlp",
    ]
    # parenthesis has variables in both MLPs, left_greater in the first: three sites logged
    assert sorted(lines) == [
        "left_greater: mlp layer 0 scored",
        "parenthesis: mlp layer 0 scored",
        "parenthesis: mlp layer 1 scored",
    ]
