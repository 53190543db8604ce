"""The shipped ground-truth models, `eval --run NAME --json`, and the scoreboard's pieces."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from gridlens.errors import CheckpointError
from gridlens.groundtruth import shipped
from gridlens.groundtruth.commands import groundtruth
from gridlens.groundtruth.iit import evaluate, load_run, make_model
from gridlens.groundtruth.scoreboard import matched_units, neuron_units, purity
from gridlens.groundtruth.spec import get_benchmark


def test_shipped_left_greater_loads_and_meets_the_thresholds_on_fresh_inputs():
    folder, is_shipped = shipped.resolve_run("left_greater")
    assert is_shipped and folder == shipped.SHIPPED_DIR / "left_greater"
    model, bench, _ = load_run(folder)
    tokens, _ = bench.generate(300, np.random.default_rng(777))
    m = evaluate(model, bench, tokens)
    assert m["accuracy"] == 1.0 and m["iia"] >= 0.99 and m["siia"] >= 0.99


@pytest.mark.parametrize("name", shipped.SHIPPED)
def test_every_card_records_passing_fresh_metrics_and_matching_checksums(name):
    card = shipped.verify(shipped.SHIPPED_DIR / name)
    assert card["passes"] and shipped.passes(card["fresh"])
    assert card["training"]["reached_epoch"] >= 1 and card["command"].count("--bench") == 1


def test_a_corrupted_shipped_file_is_refused(tmp_path):
    folder = tmp_path / "left_greater"
    shipped.ship(shipped.SHIPPED_DIR / "left_greater", folder, {"name": "x", **_card_stub()})
    raw = bytearray((folder / "model.safetensors").read_bytes())
    raw[-1] ^= 1
    (folder / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="sha256"):
        shipped.verify(folder)


def _card_stub() -> dict:
    fresh = {"n_per_task": 1, "seed": 0, "accuracy": 1, "iia": 1, "siia": 1}
    return {
        "benchmark": "left_greater",
        "nodes": {},
        "unused": [],
        "passes": True,
        "command": "c",
        "fresh": {**fresh, "iia_per_node": {}, "siia_per_node": {}},
        "training": {
            "reached_epoch": 1,
            "training_seconds": 1,
            "cpu_seconds": 1,
            "machine": "m",
        },
    }


def _eval(args, cwd):
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        result = CliRunner().invoke(
            groundtruth,
            ["eval", *args, "--n-per-task", "40", "--sae-steps", "5", "--json", "m.json"],
        )
        assert result.exit_code == 0, result.output
        return json.loads((cwd / "m.json").read_text())


def test_eval_of_a_shipped_name_writes_the_overall_metrics(tmp_path):
    data = _eval(["--run", "left_greater"], tmp_path)
    assert data["shipped"] is True and data["benchmark"] == "left_greater"
    assert data["accuracy"] == 1.0 and data["iia"] >= 0.99 and data["siia"] >= 0.99
    report = json.loads((tmp_path / "left_greater-eval" / "eval.json").read_text())
    assert {k: report["metrics"][k] for k in ("accuracy", "iia", "siia")} == {
        k: data[k] for k in ("accuracy", "iia", "siia")
    }
    for row in report["circuit_discovery"]:  # each ROC AUC, from the file's own scores
        inside = np.array(row["in_circuit"])
        for method in ("activation_patching", "atp"):
            score = np.abs(np.array(row[method]))
            wins = score[inside][:, None] - score[~inside][None, :]
            auc = float(np.mean((wins > 0) + 0.5 * (wins == 0)))
            assert row[f"auc_{method}"] == pytest.approx(auc)
    assert set(data["edge_auc"]) == {"acdc", "eap", "eap_ig"}
    assert (tmp_path / "left_greater-eval" / "edges.png").is_file()


def test_a_local_folder_of_the_same_name_takes_precedence(tmp_path):
    from safetensors.torch import save_file

    folder = tmp_path / "left_greater"
    folder.mkdir()
    (folder / "run.json").write_text((shipped.SHIPPED_DIR / "left_greater/run.json").read_text())
    untrained = make_model(get_benchmark("left_greater"), seed=3)
    save_file(dict(untrained.state_dict()), str(folder / "model.safetensors"))
    data = _eval(["--run", "left_greater"], tmp_path)
    assert data["shipped"] is False and data["accuracy"] < 0.9


def test_neuron_units_swap_dims_of_both_signs():
    units = neuron_units(signed=True)
    a, s = torch.zeros(2, 3), torch.ones(2, 3)
    assert units.codes(torch.tensor([[1.0, -2.0, 0.0]])).tolist() == [[1, -2, 0, -1, 2, 0]]
    assert units.swap(a, s, [4]).tolist() == [[0, 1, 0], [0, 1, 0]]


def test_matching_and_purity_against_hand_counts():
    f1 = torch.tensor([[0.9, 0.8], [0.85, 0.1]])
    assert matched_units(f1, own_units=False) == [1, 0]  # 0.8 + 0.85 beats 0.9 + 0.1
    assert matched_units(f1, own_units=True) == [0, 1]
    # unit 0 fires on 2 of 2 task-0 rows and 1 of 4 task-1 rows: share 1 / (1 + 0.25)
    active = torch.tensor([[1], [1], [1], [0], [0], [0]], dtype=torch.bool)
    task = torch.tensor([0, 0, 1, 1, 1, 1])
    assert purity(active, task, 2, [0], 0) == pytest.approx(0.8)
    assert purity(active, task, 1, [0], 0) is None


def test_a_saved_sae_scores_the_same_loaded_from_its_sae_lens_folder(tmp_path):
    from gridlens.groundtruth.scoreboard import (
        collect_site,
        load_user_sae,
        sae_units,
        score_units,
        train_site_sae,
    )
    from gridlens.sae.io import save_sae

    model, bench, _ = load_run(shipped.SHIPPED_DIR / "left_greater")
    tokens, _ = bench.generate(200, np.random.default_rng(5))
    hook = "blocks.0.mlp.hook_post"
    data = collect_site(model, bench, tokens, hook, None)
    sae = train_site_sae(data["acts"], "jumprelu", hook, steps=30)
    save_sae(sae, tmp_path / "sae")
    loaded = load_user_sae(f"left_greater={tmp_path / 'sae'}")
    assert loaded.hook == hook and loaded.bench == "left_greater"
    site, names = (hook, None), bench.variable_names
    direct = score_units(model, bench, sae_units(sae), data, data, tokens, site, names)
    again = score_units(model, bench, sae_units(loaded.sae), data, data, tokens, site, names)
    for var in names:
        assert again[var]["units"] == direct[var]["units"]
        assert again[var]["f1"] == pytest.approx(direct[var]["f1"], abs=1e-6)
        assert again[var]["iia"] == pytest.approx(direct[var]["iia"], abs=1e-6)
    # interchanging all of MLP0's neurons carries `greater` (it lives there): IIA near 1
    from gridlens.groundtruth.scoring import site_iia

    full = site_iia(model, bench, tokens, "left_greater.greater", {"all": lambda a, s: s}, hook)
    assert full["all"] >= 0.99
