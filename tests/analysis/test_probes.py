"""Linear probes: known-easy labels, chance-level controls, label alignment and errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gridlens.analysis.core import quiz_set
from gridlens.analysis.probes import (
    control_labels,
    probe_positions,
    split_quizzes,
    token_labels,
    train_probes,
)
from gridlens.errors import GridlensError
from gridlens.models.checkpoints import load


@pytest.fixture(scope="module")
def model():
    return load("default")


@pytest.fixture(scope="module")
def quizzes():
    return quiz_set(n_per_task=2, seed=11)


def test_colour_and_grid_are_read_from_the_embeddings(model, quizzes, tmp_path):
    sites = ["hook_embed", "blocks.0.hook_resid_pre"]
    colour = train_probes(model, quizzes, "colour", sites=sites, control="permute", max_iter=50)
    assert colour.accuracy["hook_embed"] > 0.99
    assert abs(colour.control_accuracy["hook_embed"] - colour.baseline) < 0.05
    grid = train_probes(model, quizzes, "grid", sites=sites, control="permute", max_iter=50)
    assert grid.accuracy["blocks.0.hook_resid_pre"] > 0.98
    assert grid.accuracy["hook_embed"] < 0.4  # tokens alone do not say which grid
    assert grid.n_classes == 4 and abs(grid.control_accuracy["hook_embed"] - 0.25) < 0.05
    data = json.loads(json.dumps(grid.to_json()))
    assert data["selectivity"]["blocks.0.hook_resid_pre"] > 0.7
    assert len(grid.findings()) == 2
    grid.plot(tmp_path / "probe.png")
    assert (tmp_path / "probe.png").read_bytes()[:4] == b"\x89PNG"


def test_type_control_is_near_chance_for_colour(model, quizzes):
    """Control labels drawn per (colour, position) type are hard to memorise linearly."""
    result = train_probes(model, quizzes, "colour", sites=["hook_embed"], max_iter=50)
    assert result.accuracy["hook_embed"] > 0.99
    assert result.control_accuracy["hook_embed"] < result.baseline + 0.1


def test_labels_line_up_with_the_token_each_position_reads():
    positions, labelled = probe_positions(404, "input", shift_input=True)
    assert (labelled == positions - 1).all()
    assert not set(labelled.tolist()) & {0, 101, 202, 303}  # markers left out
    assert len(positions) == 399 and positions[0] == 2  # token 403 is never read
    positions, labelled = probe_positions(404, "next", shift_input=True)
    assert (labelled == positions).all() and len(positions) == 400


def test_objects_keep_background_as_a_class(quizzes):
    labels = token_labels(quizzes, "objects")
    _, cells = probe_positions(404, "next", shift_input=True)
    assert -1 in set(labels[:, cells].ravel().tolist())
    grid = token_labels(quizzes, "grid")
    assert grid[0, 0] == 0 and grid[0, 101] == 1 and grid[0, 403] == 3


def test_controls_and_split():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 200)
    types = rng.integers(0, 10, 200)
    train = np.arange(200) < 150
    control = control_labels(labels, types, train, "type", np.random.default_rng(1))
    for t in range(10):
        assert len(set(control[types == t].tolist())) <= 1  # one label per type
    permuted = control_labels(labels, types, train, "permute", np.random.default_rng(1))
    assert sorted(permuted[train]) == sorted(labels[train])
    tasks = np.array(["a"] * 4 + ["b"] * 4 + ["c"])
    test = split_quizzes(tasks, 0.25, np.random.default_rng(0))
    assert test[:4].sum() == 1 and test[4:8].sum() == 1 and not test[8]


def test_unknown_names_suggest(model, quizzes):
    with pytest.raises(GridlensError, match="did you mean 'objects'"):
        train_probes(model, quizzes, "object")
    with pytest.raises(GridlensError, match="did you mean"):
        train_probes(model, quizzes, "grid", sites=["blocks.0.hook_resid_pots"])
    with pytest.raises(GridlensError, match="per-position"):
        train_probes(model, quizzes, "grid", sites=["blocks.0.attn.hook_pattern"])


def test_a_probe_at_chance_is_not_stated_as_a_finding():
    from gridlens.analysis.probes import ProbeResult

    def result(accuracy: float, control: float) -> ProbeResult:
        sites = ["a", "b"]
        return ProbeResult(
            "changes", "input", "type", sites, {"a": accuracy, "b": 0.5},
            {"a": control, "b": 0.5}, {}, 0.85, 2, 10, 10,
        )  # fmt: skip

    at_chance = result(0.86, 0.855)
    assert at_chance.findings()[0].startswith("No site reads 'changes' beyond chance")
    assert "vs 85.5% on the 'type' control" in at_chance.findings()[0]
    read = result(0.95, 0.86)
    assert read.findings()[0].startswith("A linear probe reads 'changes' at a: 95.0%")
