"""Head classification and pattern figures: hand-built positional heads with known offsets, the
category layout at known positions, mass conservation, and a smoke run on the default model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gridlens.analysis.attention import (
    CATEGORIES,
    category_matrix,
    classify_heads,
    plot_pattern,
)
from gridlens.analysis.core import quiz_set
from gridlens.errors import GridlensError
from gridlens.models import GridGPT, GridGPTConfig
from gridlens.models.checkpoints import load


def offset_model(offsets: tuple[int, ...]) -> GridGPT:
    """One layer, one head per offset: head h attends from query p to key p - offsets[h].

    The embedding is zero, so LN1's output is the normalised positions Y (all rows of norm
    sqrt(D)). A linear map M with Y[p] @ M ~ Y[p - offset] (ridge least squares, so M stays
    small and float32 exact enough) makes the score Y[p] M Y[k]^T largest at k = p - offset; a
    large factor makes the softmax sharp."""
    d = 32
    cfg = GridGPTConfig(d_model=d, n_layers=1, n_heads=len(offsets), d_head=d, d_mlp=16)
    model = GridGPT(cfg, seed=0).eval()
    y = F.layer_norm(model.pos.double(), (d,))
    with torch.no_grad():
        model.embed.weight.zero_()
        for h, off in enumerate(offsets):
            p = torch.arange(off, cfg.n_ctx)
            a = y[p]
            m = torch.linalg.solve(a.T @ a + 0.1 * torch.eye(d), a.T @ y[p - off])
            model.blocks[0].attn.w_q[h] = (100.0 * m.T).float()
            model.blocks[0].attn.w_k[h] = torch.eye(d)
    return model


@pytest.fixture(scope="module")
def small_quizzes():
    return quiz_set(["frame", "grow"], n_per_task=2, seed=3)


def test_category_layout_at_known_positions():
    cats = category_matrix(404)
    name = {i: c for i, c in enumerate(CATEGORIES)}
    # query 304 predicts cell 0 of the last grid (token 304); key k holds token k - 1
    assert name[int(cats[304, 204])] == "prev_grid_same_cell"  # token 203: cell 0 of grid 3
    assert name[int(cats[305, 204])] == "prev_grid_query_cell"  # cell 0 while predicting 1
    assert name[int(cats[304, 304])] == "marker"  # the f_B marker, token 303
    assert name[int(cats[350, 350])] == "self"
    assert name[int(cats[350, 349])] == "prev_token"
    assert name[int(cats[350, 341])] == "cell_above"  # cell 36 above cell 46
    assert name[int(cats[350, 0])] == "bos"
    assert name[int(cats[350, 245])] == "prev_grid_row"  # token 244 = cell 41, row 4
    assert name[int(cats[350, 210])] == "prev_grid_col"  # token 209 = cell 6, column 6
    assert name[int(cats[350, 149])] == "two_grids_back_same_cell"  # token 148 = cell 46
    assert int(cats[10, 11]) == -1  # the future is invisible
    assert (cats.tril() >= 0).all()


def test_hand_built_heads_are_classified(small_quizzes):
    offsets = (100, 1, 101, 9)  # d_model 32 / 4 heads
    model = offset_model(offsets)
    _, cache = model.run_with_cache(small_quizzes.tokens, names="blocks.0.attn.hook_pattern")
    pattern = cache["blocks.0.attn.hook_pattern"]
    q = torch.arange(304, 404)
    for h, off in enumerate(offsets):  # the construction works (independent check)
        assert pattern[:, h, q, q - off].min() > 0.95
    result = classify_heads(model, small_quizzes)
    labels = result.labels()
    assert labels[0][0] == "prev_grid_same_cell" and labels[0][1] > 0.95
    assert labels[1][0] == "prev_token" and labels[1][1] > 0.95
    assert labels[2][0] == "prev_grid_query_cell" and labels[2][1] > 0.95
    # offset 9 is the cell above for the 90 cells below the first row; for the first row it is
    # the previous grid's last row (or its marker)
    assert labels[3][0] == "cell_above" and labels[3][1] == pytest.approx(0.9, abs=0.01)
    assert result.top_offset.tolist() == list(offsets)
    assert result.entropy_bits.max() < 0.5
    # masses are a partition of the attention: every row sums to 1
    np.testing.assert_allclose(result.mass_predicted.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(result.mass_all.sum(1), 1.0, atol=1e-5)
    for mass in result.per_task.values():
        np.testing.assert_allclose(mass.sum(1), 1.0, atol=1e-5)


def test_uniform_head_spreads_mass_by_key_counts(small_quizzes):
    model = offset_model((1,))
    with torch.no_grad():
        model.blocks[0].attn.w_q.zero_()  # scores 0: uniform over the visible keys
    result = classify_heads(model, small_quizzes, threshold=0.6)
    assert result.labels()[0][0] == "mixed"
    keys = torch.arange(305, 405).double()  # query p sees keys 0..p
    np.testing.assert_allclose(result.entropy_bits[0], torch.log2(keys).mean(), rtol=1e-4)
    cats = category_matrix(404)[304:]
    for c, name in enumerate(CATEGORIES):  # uniform: mass = share of the visible keys
        expected = ((cats == c).sum(1) / keys).mean()
        assert result.mass_predicted[0, c] == pytest.approx(float(expected), abs=1e-5), name
    assert result.mass_predicted[0, CATEGORIES.index("bos")] == pytest.approx(
        float((1 / keys).mean()), rel=1e-4
    )


def test_default_model_smoke(tmp_path):
    model = load("default")
    quizzes = quiz_set(["frame", "replace_color"], n_per_task=4, seed=0)
    result = classify_heads(model, quizzes)
    labels = dict(zip(result.heads, result.labels(), strict=True))
    # the shipped model's layer-0 copy head (docs/analysis.md): offset 100 from the query
    assert labels["L0H2"][0] == "prev_grid_same_cell" and labels["L0H2"][1] > 0.5
    data = result.to_json()
    assert set(data["per_task"]) == {"frame", "replace_color", "all"}
    assert data["heads"]["L0H2"]["top_offset"] == 100
    assert result.table().count("\n") == len(result.heads) + 1
    assert 1 <= len(result.findings()) <= 4
    result.plot(tmp_path / "heads.png")
    assert (tmp_path / "heads.png").stat().st_size > 1000
    plot_pattern(model, quizzes.tokens[0], "L0H2", tmp_path / "p.png", query=5)
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    plot_pattern(model, quizzes.tokens[:1], "L1H0", tmp_path / "q.png")
    assert (tmp_path / "q.png").exists()


def test_plot_pattern_bad_input(tmp_path, small_quizzes):
    model = offset_model((1,))
    tokens = small_quizzes.tokens
    with pytest.raises(GridlensError, match="not an attention head"):
        plot_pattern(model, tokens[0], "L0.attn", tmp_path / "x.png")
    with pytest.raises(GridlensError, match="unknown component"):
        plot_pattern(model, tokens[0], "L0X1", tmp_path / "x.png")
    with pytest.raises(GridlensError, match="one quiz"):
        plot_pattern(model, tokens[:2], "L0H0", tmp_path / "x.png")
    with pytest.raises(GridlensError, match="cell index"):
        plot_pattern(model, tokens[0], "L0H0", tmp_path / "x.png", query=100)
    with pytest.raises(GridlensError, match="threshold"):
        classify_heads(model, small_quizzes, threshold=0)
