"""The `gridlens` command: the world subcommands work, and bad input gives one line on stderr,
exit code 2 and no file written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runner import run
from PIL import Image

from gridlens.world import TASKS, generate
from gridlens.world.dataset import open_dataset
from gridlens.world.render import image_layout

EXECUTABLE = Path(sys.executable).parent / "gridlens"
PROCESS_TIMEOUT_S = 900  # a guard against a hang, not a speed check: a loaded machine is slow


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gridlens: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_help_lists_world_commands(capsys):
    code, out, _ = run(capsys, "world", "--help")
    assert code == 0
    for command in ("show", "gallery", "dataset", "check", "tasks"):
        assert command in out


def test_show_prints_plain_text_off_a_terminal(capsys):
    code, out, _ = run(capsys, "world", "show", "--task", "replace_color", "-n", "2", "--seed", "3")
    assert code == 0
    assert out.count("replace_color · forward") == 2 and "f(B) ?" in out and "\x1b" not in out
    batch = generate("replace_color", 2, seed=3)
    first_row = "".join(".123456789X"[v] + " " for v in batch.grids[0, 0, 0]).rstrip()
    assert out.splitlines()[2].startswith(first_row)


def test_show_color_flag_forces_ansi(capsys):
    code, out, _ = run(capsys, "world", "show", "--task", "replace_color", "-n", "1", "--color")
    assert code == 0 and "\x1b[0;48;2;" in out


def test_show_writes_a_png(capsys, tmp_path):
    out_path = tmp_path / "frame.png"
    code, out, _ = run(
        capsys, "world", "show", "--task", "replace_color", "-n", "8", "--structure", "mix",
        "--noise", "0.05", "--height", "8", "--width", "12", "--out", str(out_path),
    )  # fmt: skip
    assert code == 0 and out.strip() == str(out_path)
    assert Image.open(out_path).size == image_layout(8, 8, 12, captions=True).size


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--task", "fram"], ["unknown task 'fram'", "frame"]),
        (["--task", "replace_color", "--height", "2"], ["at least 3x3", "2x10"]),
        (["--task", "replace_color", "--structure", "sideways"], ["unknown structure"]),
        (["--task", "replace_color", "-n", "0"], ["-n must be 1..1000"]),
        (["--task", "replace_color", "--seed", "-1"], ["--seed must be >= 0"]),
        (["--task", "replace_color", "--noise", "2"], ["noise"]),
        (["--task", "replace_color", "--cell", "3"], ["cell size"]),
        (["--task", "replace_color", "--out", "x.jpg"], [".png"]),
    ],
)
def test_show_bad_input_is_one_line_exit_2_and_writes_nothing(capsys, tmp_path, args, needles):
    args = [a.replace("x.jpg", str(tmp_path / "x.jpg")) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "quiz.png")]
    code, out, err = run(capsys, "world", "show", *args)
    assert_one_line_error(code, err, *needles)
    assert out == "" and list(tmp_path.iterdir()) == []


def test_gallery_of_some_tasks(capsys, tmp_path):
    path = tmp_path / "g.png"
    code, out, _ = run(capsys, "world", "gallery", "--out", str(path), "--tasks", "replace_color",
                       "--per-task", "2", "--highlight")  # fmt: skip
    assert code == 0 and out.strip() == str(path)
    assert Image.open(path).size == image_layout(2, cell=12, columns=2, captions=True).size
    code, _, err = run(capsys, "world", "gallery", "--out", str(tmp_path / "h.png"),
                       "--tasks", "replace_color,nope")  # fmt: skip
    assert_one_line_error(code, err, "unknown task 'nope'")
    assert not (tmp_path / "h.png").exists()


def test_dataset_writes_resumes_and_refuses_other_configs(capsys, tmp_path):
    folder = tmp_path / "ds"
    args = ["world", "dataset", str(folder), "-n", "50", "--tasks", "replace_color",
            "--shard-size", "20", "--seed", "3", "--no-progress"]  # fmt: skip
    code, out, _ = run(capsys, *args)
    assert code == 0 and "50 quizzes in 3 shards" in out
    ds = open_dataset(folder)
    assert len(ds) == 50 and ds.structures == ("forward", "inverse", "backward",
                                               "backward_inverse", "generation")  # fmt: skip
    first = torch.cat([b.tokens for b in ds])
    (folder / "shard-00001.safetensors").unlink()
    code, out, _ = run(capsys, *args)
    assert code == 0 and torch.equal(torch.cat([b.tokens for b in open_dataset(folder)]), first)

    code, _, err = run(capsys, *args[:-2], "4", "--no-progress")
    assert_one_line_error(code, err, "another configuration", "seed=3 (asked 4)")
    code, _, err = run(capsys, "world", "dataset", str(tmp_path / "new"), "-n", "10",
                       "--tasks", "nope", "--no-progress")  # fmt: skip
    assert_one_line_error(code, err, "unknown task 'nope'")
    code, _, err = run(capsys, "world", "dataset", str(tmp_path / "new"), "-n", "10",
                       "--tasks", "replace_color", "--height", "1", "--no-progress")  # fmt: skip
    assert_one_line_error(code, err, "at least 3x3")
    assert not (tmp_path / "new").exists()


def test_check_reads_reference_and_reorders_structures(capsys, tmp_path, reference_dir):
    code, out, _ = run(capsys, "world", "check", "replace_color",
                       str(reference_dir / "fleuret_reference_quizzes.npz"))  # fmt: skip
    assert code == 0 and out.strip() == "replace_color: 200/200 quizzes valid"

    batch = generate("replace_color", 30, seed=2, structure="mix")
    tokens = batch.tokens.numpy().copy()
    np.save(tmp_path / "mix.npy", tokens)
    code, out, _ = run(capsys, "world", "check", "replace_color", str(tmp_path / "mix.npy"))
    assert code == 0 and out.strip() == "replace_color: 30/30 quizzes valid"

    # Corrupt the predicted grid's first cell of quiz 4 (whatever its structure).
    tokens[4, 3 * 101 + 1] = (tokens[4, 3 * 101 + 1] + 1) % 11
    torch.save(torch.from_numpy(tokens), tmp_path / "bad.pt")
    report = tmp_path / "report.json"
    code, out, _ = run(capsys, "world", "check", "replace_color", str(tmp_path / "bad.pt"),
                       "--json", str(report))  # fmt: skip
    assert code == 0 and out.strip() == "replace_color: 29/30 quizzes valid"
    assert json.loads(report.read_text())["invalid_indices"] == [4]

    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    code, _, err = run(capsys, "world", "check", "replace_color", str(tmp_path / "junk.npy"))
    assert_one_line_error(code, err, "junk.npy", "cannot read tokens")
    np.save(tmp_path / "range.npy", np.full((2, 404), 20))
    code, _, err = run(capsys, "world", "check", "replace_color", str(tmp_path / "range.npy"))
    assert_one_line_error(code, err, "0..14")
    code, _, err = run(capsys, "world", "check", "nope", str(tmp_path / "mix.npy"))
    assert_one_line_error(code, err, "unknown task 'nope'")


def test_the_installed_executable(tmp_path):
    """A real process: the console script prints a one-line error and exits 2 (the success
    path runs as a process in the gallery test below)."""
    assert EXECUTABLE.exists(), f"{EXECUTABLE} missing: install the project (make install)"
    bad = [str(EXECUTABLE), "world", "show", "--task", "nope", "--out", str(tmp_path / "x.png")]
    done = subprocess.run(bad, capture_output=True, text=True, timeout=PROCESS_TIMEOUT_S)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert done.stderr.startswith("gridlens: error: unknown task 'nope'")
    assert list(tmp_path.iterdir()) == []


def test_main_job_gallery_of_every_task(tmp_path):
    """`make demo` runs this: every one of the 15 tasks, through the real executable."""
    path = tmp_path / "gallery.png"
    done = subprocess.run([str(EXECUTABLE), "world", "gallery", "--out", str(path)],
                          capture_output=True, text=True, timeout=PROCESS_TIMEOUT_S)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(path)
    layout = image_layout(3 * len(TASKS), cell=12, columns=3, captions=True)
    assert Image.open(path).size == layout.size


def test_docs_world_examples_run(tmp_path, monkeypatch, capsys):
    """The Python examples of the docs' "The grid world" page run as written."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "world.md").read_text()
    blocks = [b.split("```", 1)[0] for b in page.split("```python\n")[1:]]
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, "docs/world.md", "exec"), {})
    assert (tmp_path / "quizzes.png").exists() and (tmp_path / "world-data").is_dir()
    assert "f(B)" in capsys.readouterr().out
