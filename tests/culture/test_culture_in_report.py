"""`gridlens report --population`: the main report gains a culture section built from the
population's files."""

import json

import pytest
from culture_helpers import CFG, fixed_scores, world_candidates

from gridlens.report.build import build_report
from gridlens.training.culture import candidates as cd
from gridlens.training.culture import loop


@pytest.fixture(autouse=True)
def stand_ins(monkeypatch):
    monkeypatch.setattr(cd, "generate_candidates", world_candidates)
    monkeypatch.setattr(cd, "score", fixed_scores)


@pytest.mark.slow
def test_report_has_a_culture_section(tmp_path):
    pop = tmp_path / "pop"
    loop.run_culture(CFG.replace(rounds=2), pop, progress=False, echo=lambda *_: None)
    folder = build_report(
        tasks="frame", out=tmp_path / "report", size="tiny", progress=False, population=pop
    )
    page = (folder / "index.html").read_text()
    assert "Culture" in page and 'src="culture_rounds.png"' in page
    data = json.loads((folder / "report.json").read_text())
    culture = data["results"]["culture"]
    assert culture["culture"]["train"] == 12 and culture["culture"]["test"] == 4
    assert len(culture["culture_rounds"]) == 2
    assert any("novel" in line for line in data["section_findings"]["Culture"])
    for label in culture["culture"]["by_label"]:
        assert (folder / f"culture_{label}.png").is_file()


def test_a_bad_population_fails_before_any_work(tmp_path):
    from gridlens.errors import CheckpointError

    with pytest.raises(CheckpointError, match=r"culture\.json"):
        build_report(out=tmp_path / "r", size="tiny", progress=False, population=tmp_path)
    assert not (tmp_path / "r").exists()
