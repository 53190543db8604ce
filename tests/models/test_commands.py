"""`gridlens model info|convert`."""

from __future__ import annotations

import json

import pytest
import torch

from gridlens.cli import main
from gridlens.models import load


def run(args, capsys):
    try:
        main(args)
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_info_and_convert_round_trip(reference, tmp_path, capsys):
    code, out, _ = run(["model", "info", str(reference["path"]), "--json"], capsys)
    assert code == 0 and json.loads(out)["config"]["d_model"] == 64
    code, out, _ = run(["model", "convert", str(reference["path"]), str(tmp_path / "ours")], capsys)
    assert code == 0
    fork = tmp_path / "fork.pth"
    code, _, _ = run(
        ["model", "convert", str(tmp_path / "ours"), str(fork), "--to", "fork"], capsys
    )
    assert code == 0
    a, b = load(reference["path"]), load(fork)
    with torch.no_grad():
        assert torch.equal(a(reference["quizzes"]), b(reference["quizzes"]))


@pytest.mark.parametrize("args", [["model", "info", "missing.pth"], ["model", "info", "me/repo"]])
def test_errors_are_one_line(args, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run(args, capsys)
    assert code == 2
    assert err.startswith("gridlens: error:") and err.count("\n") == 1
