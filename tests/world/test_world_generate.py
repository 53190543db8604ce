"""generate(): structures, prompt noise, metadata and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gridlens.errors import ConfigError, GridSizeError, TokenError, UnknownNameError
from gridlens.world import STRUCTURES, check, generate
from gridlens.world.structures import to_canonical
from gridlens.world.tokens import MARKER_TOKENS, quiz_length


def _slots(tokens: torch.Tensor, h: int = 10, w: int = 10) -> np.ndarray:
    return tokens.numpy().reshape(len(tokens), 4, 1 + h * w)


def test_canonical_structure_lays_out_markers_and_grids():
    batch = generate("replace_color", 20, seed=0)
    slots = _slots(batch.tokens)
    assert batch.tokens.dtype == torch.long and batch.tokens.shape == (20, 404)
    assert (slots[:, :, 0] == [11, 12, 13, 14]).all()
    assert np.array_equal(slots[:, :, 1:].reshape(20, 4, 10, 10), batch.grids)
    assert (batch.structure == "forward").all()


@pytest.mark.parametrize("name", list(STRUCTURES))
def test_each_structure_orders_the_grids_as_named(name):
    spec = STRUCTURES[name]
    batch = generate("replace_color", 30, seed=1, structure=name)
    slots = _slots(batch.tokens)
    expected_markers = [MARKER_TOKENS[g] for g in spec.order]
    assert (slots[:, :, 0] == expected_markers).all()
    grids = slots[:, :, 1:].reshape(30, 4, 10, 10)
    for slot, grid_name in enumerate(spec.order):
        canonical = ("A", "f_A", "B", "f_B").index(grid_name)
        assert np.array_equal(grids[:, slot], batch.grids[:, canonical])
    assert np.array_equal(to_canonical(grids, spec), batch.grids)


def test_mixed_structures_are_uniform():
    batch = generate("replace_color", 5000, seed=2, structure="mix")
    counts = np.array([(batch.structure == s).sum() for s in STRUCTURES])
    assert counts.min() > 5000 / 5 * 0.9 and counts.max() < 5000 / 5 * 1.1


def test_noise_hits_only_the_third_grid_of_forward_and_inverse():
    p = 0.2
    for name in STRUCTURES:
        batch = generate("replace_color", 400, seed=3, structure=name, noise=p)
        spec = STRUCTURES[name]
        grids = _slots(batch.tokens)[:, :, 1:].reshape(-1, 4, 10, 10)
        changed = grids != batch.grids[:, spec.permutation]
        if spec.noise_mask == (0, 0, 1, 0):
            assert not changed[:, [0, 1, 3]].any()
            # a noised cell takes a uniform colour 0..10, which equals the old one 1/11 of the time
            assert abs(changed[:, 2].mean() - p * 10 / 11) < 0.01
            assert np.array_equal(
                batch.noise[:, spec.permutation][:, 2] & changed[:, 2], changed[:, 2]
            )
        else:
            assert not changed.any() and not batch.noise.any()


def test_task_mix_is_uniform_and_labelled():
    batch = generate(["replace_color", "replace_color"], 10, seed=0)
    assert (batch.task == "replace_color").all()
    assert check("replace_color", batch.tokens).all()


def test_params_of_and_subset_follow_the_quiz():
    batch = generate("replace_color", 50, seed=5)
    colours = batch.params_of(7)["colors"]
    source, new = colours[0], colours[3]
    a, fa = batch.grids[7, 0], batch.grids[7, 1]
    assert np.array_equal(fa[a == source], np.full((a == source).sum(), new))
    sub = batch.subset([7, 3])
    assert torch.equal(sub.tokens[0], batch.tokens[7])
    assert np.array_equal(sub.params_of(0)["colors"], colours)
    assert np.array_equal(sub.params_of(1)["colors"], batch.params_of(3)["colors"])


def test_token_annotations_align_with_tokens():
    batch = generate("replace_color", 40, seed=6, structure="mix")
    changes = batch.token_annotations("changes")
    assert changes.shape == batch.tokens.shape
    markers = batch.tokens >= 11
    assert (changes[markers.numpy()] == -1).all()
    # changed cells sit in the X/f(X) slots and differ exactly where the pair differs
    slots = _slots(batch.tokens)
    for i in range(40):
        spec = STRUCTURES[str(batch.structure[i])]
        grids = slots[i, :, 1:].reshape(4, 10, 10)
        canonical = to_canonical(grids[None], spec)[0]
        expect = np.repeat((canonical[0::2] != canonical[1::2]), 2, axis=0)
        got = to_canonical(changes[i].reshape(4, 101)[None, :, 1:].reshape(1, 4, 10, 10), spec)[0]
        assert np.array_equal(got.astype(bool), expect)


def test_other_grid_sizes_and_too_small():
    batch = generate("replace_color", 10, seed=0, height=12, width=8)
    assert batch.tokens.shape == (10, quiz_length(12, 8))
    assert check("replace_color", batch.tokens, height=12, width=8).all()
    with pytest.raises(GridSizeError):
        generate("replace_color", 1, height=2, width=2)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(UnknownNameError, match="replace_color"):
        generate("replace_colour", 1)
    with pytest.raises(UnknownNameError):
        generate("replace_color", 1, structure="sideways")
    with pytest.raises(ConfigError):
        generate("replace_color", 1, noise=1.5)
    with pytest.raises(ConfigError):
        generate("replace_color", -1)
    good = generate("replace_color", 2, seed=0)
    with pytest.raises(TokenError, match="structure"):
        check("replace_color", generate("replace_color", 2, structure="inverse").tokens)
    with pytest.raises(TokenError, match="tokens"):
        check("replace_color", good.tokens[:, :100])
    bad = good.tokens.clone()
    bad[0, 5] = 15
    with pytest.raises(TokenError, match=r"0\.\.14"):
        check("replace_color", bad)
    with pytest.raises(TokenError, match="integers"):
        check("replace_color", good.tokens.float())
