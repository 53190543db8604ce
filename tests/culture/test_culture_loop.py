"""The loop's bookkeeping: culture rounds, provenance, resuming (also after a crash mid-round),
the original c_quizzes.pth layout, the report, and clear errors on foreign or damaged folders.

Candidate generation and scoring are replaced by stand-ins (world quizzes, fixed scores) so
culture rounds happen without trained models; the real ones are tested in
test_culture_candidates.py."""

import json

import pytest
import torch
from culture_helpers import CFG, fixed_scores, world_candidates
from safetensors.torch import load_file

from gridlens.errors import CheckpointError, ConfigError
from gridlens.training.culture import candidates as cd
from gridlens.training.culture import loop
from gridlens.training.culture.report import culture_report
from gridlens.training.culture.store import LABELS, load_original, save_original


@pytest.fixture(autouse=True)
def stand_ins(monkeypatch):
    monkeypatch.setattr(cd, "generate_candidates", world_candidates)
    monkeypatch.setattr(cd, "score", fixed_scores)


def snapshot(out):
    state = json.loads((out / "state.json").read_text())
    weights = {
        row["file"]: torch.load(out / "models" / row["file"], weights_only=True)["model"]
        for row in state["members"]
    }
    parts = {
        name: load_file(out / "culture" / f"{name}.safetensors") for name in state["culture_parts"]
    }
    return state, weights, parts


def assert_same(a, b):
    (state_a, weights_a, parts_a), (state_b, weights_b, parts_b) = a, b
    assert state_a == state_b
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:
        for key in weights_a[name]:
            assert torch.equal(weights_a[name][key], weights_b[name][key]), (name, key)
    assert parts_a.keys() == parts_b.keys()
    for name in parts_a:
        for key in parts_a[name]:
            assert torch.equal(parts_a[name][key], parts_b[name][key]), (name, key)


def test_culture_rounds_keep_the_right_quizzes_with_provenance(tmp_path):
    summary = loop.run_culture(CFG, tmp_path, progress=False, echo=lambda *_: None)
    assert summary["rounds"] == 3
    state, _, parts = snapshot(tmp_path)
    assert state["culture_parts"] == ["round_00000", "round_00001", "round_00002"]
    history = loop.read_history(tmp_path)
    for r, part in enumerate(parts.values()):
        n = len(part["split"])
        assert n == 8  # the quota: 6 train + 2 test
        assert part["split"].tolist() == [0] * 6 + [1] * 2
        assert (part["round"] == r).all()
        assert torch.allclose(part["probas"][:, 0], torch.tensor(0.1))
        assert (part["probas"][:, 1:] > 0.95).all()
        # the checkers recognise the world quizzes the stand-in made
        labels = {LABELS[i] for i in part["label"].tolist()}
        assert labels <= {"replace_color", "frame"}
        # one attempt: 3 models x 4 candidates, every fourth dropped (model 1 unsure) -> 9 kept
        stats = history[r]["culture"]
        assert (stats["candidates"], stats["scored"], stats["kept"]) == (12, 12, 9)
        assert stats["attempts"] == 1
    assert state["culture_size"] == {"train": 18, "test": 6}
    # a culture round resets every accuracy to 0; the weakest (ties: the first) model trains
    assert [row["trained"] for row in history] == [0, 0, 0]


def test_resume_equals_an_uninterrupted_run(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    loop.run_culture(CFG, straight, progress=False, echo=lambda *_: None)
    loop.run_culture(CFG.replace(rounds=2), split, progress=False, echo=lambda *_: None)
    loop.run_culture(CFG, split, resume=True, progress=False, echo=lambda *_: None)
    assert_same(snapshot(straight), snapshot(split))
    assert len(loop.read_history(split)) == 3


def test_the_weakest_model_trains_and_only_it(tmp_path):
    """Unequal accuracies under the threshold (no culture round): the model of lowest accuracy
    trains, not the first one, and the others' weights and accuracies stay as they were."""
    population = loop.Population.open(tmp_path, CFG.replace(accuracy_threshold=1.0), False)
    for member, accuracy in zip(population.members, (0.6, 0.2, 0.4), strict=True):
        member.accuracy = accuracy
    before = [{n: v.clone() for n, v in m.model.state_dict().items()} for m in population.members]
    record = population.step(progress=False)
    assert record["trained"] == 1 and "culture" not in record
    for k, member in enumerate(population.members):
        after = member.model.state_dict()
        assert any(not torch.equal(v, after[n]) for n, v in before[k].items()) == (k == 1)
    assert record["accuracies"][0] == 0.6 and record["accuracies"][2] == 0.4


def _grids(quiz: torch.Tensor) -> tuple[bytes, ...]:
    """A quiz's four grids (markers dropped) as a sorted tuple: the same for every structure."""
    return tuple(sorted(bytes(g[1:].tolist()) for g in quiz.view(4, -1)))


def test_culture_quizzes_enter_the_next_epochs_training(tmp_path, monkeypatch):
    """After 4 culture rounds (24 training quizzes), the next epoch trains on exactly
    train_quizzes // 2 = 20 of them, in some structure, beside world quizzes."""
    cfg = CFG.replace(rounds=4, prompt_noise=0.0)
    loop.run_culture(cfg, tmp_path, progress=False, echo=lambda *_: None)
    population = loop.Population.open(tmp_path, cfg.replace(rounds=5), True)
    culture = {_grids(q) for q in population.culture.train}
    assert len(culture) == 24
    batches = []
    loss = loop.sequence_loss
    monkeypatch.setattr(loop, "sequence_loss", lambda out, x: batches.append(x) or loss(out, x))
    population.train_epoch(0, progress=False)
    trained = torch.cat(batches)
    assert len(trained) == cfg.train_quizzes
    assert sum(_grids(q) in culture for q in trained) == cfg.train_quizzes // 2


def crash_before_commit(out, monkeypatch):
    """Resume the population in `out` for one round that writes its files and dies before
    committing them (state.json), as a killed run would."""
    commit = loop.Population._commit

    def crash(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop.Population, "_commit", crash)
    with pytest.raises(KeyboardInterrupt):
        loop.run_culture(CFG, out, resume=True, progress=False, echo=lambda *_: None)
    monkeypatch.setattr(loop.Population, "_commit", commit)


def test_a_crash_between_writing_a_round_and_committing_it_never_duplicates(tmp_path, monkeypatch):
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    loop.run_culture(CFG, straight, progress=False, echo=lambda *_: None)
    loop.run_culture(CFG.replace(rounds=1), crashed, progress=False, echo=lambda *_: None)
    crash_before_commit(crashed, monkeypatch)
    assert (crashed / "culture" / "round_00001.safetensors").exists()  # written, not committed
    loop.run_culture(CFG, crashed, resume=True, progress=False, echo=lambda *_: None)
    assert_same(snapshot(straight), snapshot(crashed))


def test_reading_a_population_mid_round_leaves_the_writers_files_alone(tmp_path, monkeypatch):
    # a round written but not yet committed (what a live run has on disk between its writes):
    # population_models (used by report and universality) must not delete it or trim history,
    # or the writer's next commit would name a file that is gone
    out = tmp_path / "pop"
    loop.run_culture(CFG.replace(rounds=1), out, progress=False, echo=lambda *_: None)
    crash_before_commit(out, monkeypatch)
    files = sorted(p.name for p in out.rglob("*") if p.is_file())
    history = (out / "history.jsonl").read_text()
    models = loop.population_models(out)
    assert len(models) == CFG.k
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == files
    assert (out / "culture" / "round_00001.safetensors").exists()
    assert (out / "history.jsonl").read_text() == history


def test_original_c_quizzes_layout_round_trips_and_imports(tmp_path):
    pop = tmp_path / "pop"
    loop.run_culture(CFG.replace(rounds=1), pop, progress=False, echo=lambda *_: None)
    population = loop.Population.open(pop, CFG.replace(rounds=1), resume=True)
    path = save_original(tmp_path / "c_quizzes.pth", population.culture)
    train, test = torch.load(path, weights_only=True)
    assert isinstance(train, list) and torch.equal(train[0], population.culture.train)
    assert torch.equal(test[0], population.culture.test)
    got_train, got_test = load_original(path)
    assert torch.equal(got_train, population.culture.train)
    assert torch.equal(got_test, population.culture.test)
    added = population.import_original(path)
    assert added == 8
    reopened = loop.Population.open(pop, CFG.replace(rounds=1), resume=True)
    assert len(reopened.culture) == 16
    assert (reopened.culture.generator[8:] == -1).all()


def test_the_loop_policy_may_change_on_resume_and_the_change_is_recorded(tmp_path):
    loop.run_culture(CFG.replace(rounds=1), tmp_path, progress=False, echo=lambda *_: None)
    stricter = CFG.replace(rounds=2, accuracy_threshold=0.5, max_fail=1)
    loop.run_culture(stricter, tmp_path, resume=True, progress=False, echo=lambda *_: None)
    saved = json.loads((tmp_path / "culture.json").read_text())
    assert saved["config"]["accuracy_threshold"] == 0.5
    (change,) = saved["policy_changes"]
    assert change["round"] == 1 and len(change["changes"]) == 2
    # round 1 ran under the new threshold: accuracies were 0 < 0.5, so no culture round
    assert "culture" not in loop.read_history(tmp_path)[1]


def test_report_writes_figures_and_json(tmp_path):
    loop.run_culture(CFG.replace(rounds=2), tmp_path, progress=False, echo=lambda *_: None)
    summary = culture_report(tmp_path, tmp_path / "report")
    assert (tmp_path / "report" / "culture_rounds.png").stat().st_size > 1000
    data = json.loads((tmp_path / "report" / "culture_report.json").read_text())
    assert data["culture"]["train"] == 12 and data["culture"]["test"] == 4
    assert sum(data["culture"]["by_label"].values()) == 16
    assert set(summary["figures"]) >= {"culture_rounds.png"}
    assert any(name.startswith(("culture_frame", "culture_replace")) for name in summary["figures"])


def test_foreign_or_damaged_population_folders_are_clear_errors(tmp_path):
    loop.run_culture(CFG.replace(rounds=1), tmp_path, progress=False, echo=lambda *_: None)
    with pytest.raises(ConfigError, match="already holds a population"):
        loop.run_culture(CFG, tmp_path, progress=False)
    with pytest.raises(ConfigError, match="k: 3 vs 4"):
        loop.run_culture(CFG.replace(k=4), tmp_path, resume=True, progress=False)
    with pytest.raises(ConfigError, match="lr: "):
        loop.run_culture(CFG.replace(lr=1.0), tmp_path, resume=True, progress=False)
    part = tmp_path / "culture" / "round_00000.safetensors"
    part.write_bytes(part.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"round_00000\.safetensors: corrupted"):
        loop.run_culture(CFG, tmp_path, resume=True, progress=False)
    part.unlink()
    with pytest.raises(CheckpointError, match="missing"):
        loop.run_culture(CFG, tmp_path, resume=True, progress=False)
    bad = tmp_path / "c.pth"
    torch.save({"not": "a tuple"}, bad)
    with pytest.raises(CheckpointError, match="train list, test list"):
        load_original(bad)
