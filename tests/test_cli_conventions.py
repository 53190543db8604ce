"""What every `gridlens` command shares: --help without torch, a fast top-level help,
suggestions for mistyped commands, the same --device / --seed / -n / --highlight options,
progress by stages, and `make test` without a browser for a user who is not root."""

from __future__ import annotations

import inspect
import io
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import click
import pytest
from cli_runner import run

from gridlens.cli import cli
from gridlens.progress import Stages

ROOT = Path(__file__).resolve().parents[1]


def commands(group: click.Group = cli, path: tuple[str, ...] = ()):
    """(path, command) of every command and group under `group`."""
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from commands(command, (*path, name))


def _python(code: str, env: dict | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, cwd=ROOT, check=True, env=env,
    )  # fmt: skip
    return done.stdout.strip()


def test_every_help_runs_without_importing_torch():
    out = _python(
        """
        import sys
        import click
        from gridlens.cli import cli, main

        def walk(group, path):
            ctx = click.Context(group)
            for name in group.list_commands(ctx):
                command = group.get_command(ctx, name)
                yield path + [name]
                if isinstance(command, click.Group):
                    yield from walk(command, path + [name])

        paths = [[], *walk(cli, [])]
        for path in paths:
            try:
                main([*path, "--help"])
            except SystemExit as exit_:
                assert exit_.code in (0, None), (path, exit_.code)
        heavy = [m for m in ("torch", "numpy", "matplotlib", "pandas") if m in sys.modules]
        print(len(paths), heavy)
        """
    )
    count, heavy = out.splitlines()[-1].split(" ", 1)
    assert int(count) >= 35 and heavy == "[]"


def test_top_level_help_takes_under_0_3_s():
    """CPU time, import and help included: wall time on a shared machine measures its load."""
    code = """
        import io, time, contextlib
        start = time.process_time()
        from gridlens.cli import main
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                main(["--help"])
            except SystemExit:
                pass
        print(time.process_time() - start)
        """
    assert min(float(_python(code)) for _ in range(3)) < 0.3


@pytest.mark.parametrize(
    ("typed", "hint"),
    [
        (("reprot",), "Did you mean 'report'?"),
        (("analyze", "direkt"), "Did you mean 'direct'?"),
        (("world", "galery"), "Did you mean 'gallery'?"),
        (("sae", "featurs"), "Did you mean 'features'?"),
    ],
)
def test_a_mistyped_command_gets_a_suggestion(capsys, typed, hint):
    code, _, err = run(capsys, *typed)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("gridlens: error: ")
    assert lines[0].count("Did you mean") == 1 and hint in lines[0]


def test_no_suggestion_for_a_name_like_no_command(capsys):
    code, _, err = run(capsys, "zzzz")
    assert code == 2 and "No such command 'zzzz'" in err and "Did you mean" not in err


def _options(command: click.Command) -> dict[str, click.Option]:
    return {p.name: p for p in command.params if isinstance(p, click.Option)}


def test_commands_share_device_seed_and_n():
    seen = {"device": 0, "seed": 0, "n": 0}
    for path, command in commands():
        options = _options(command)
        if "device" in options:
            seen["device"] += 1
            device = options["device"]
            auto = device.default == "auto" or "auto (default)" in (device.help or "")
            assert auto, (path, device.default)
        if "seed" in options:
            seen["seed"] += 1
            assert options["seed"].type is click.INT, path
        for name in ("n", "n_per_task", "per_task", "quizzes"):
            if name in options:
                seen["n"] += 1
                assert "-n" in options[name].opts, (path, name)
    assert seen["device"] >= 12 and seen["seed"] >= 20 and seen["n"] >= 18


def test_show_and_gallery_take_the_same_highlight(capsys):
    world = cli.get_command(click.Context(cli), "world")
    ctx = click.Context(world)
    show, gallery = (_options(world.get_command(ctx, c))["highlight"] for c in ("show", "gallery"))
    assert show.type.choices == gallery.type.choices == ("none", "changes", "noise")
    base = ("world", "show", "--task", "frame", "-n", "2", "--seed", "3")
    alone = run(capsys, *base, "--highlight")
    assert alone == run(capsys, *base, "--highlight", "changes") and alone[0] == 0
    assert alone != run(capsys, *base)


def test_gallery_stars_the_default_tasks(capsys, tmp_path, monkeypatch):
    import gridlens.world.render as render

    drawn = {}
    monkeypatch.setattr(render, "render_png", lambda tokens, path, **kw: drawn.update(kw))
    code, _, err = run(capsys, "world", "gallery", "--tasks", "frame,scale,contact", "-n", "2",
                       "--highlight", "noise", "--out", str(tmp_path / "g.png"))  # fmt: skip
    assert code == 0, err
    assert drawn["captions"] == ["frame *"] * 2 + ["scale"] * 2 + ["contact *"] * 2
    assert drawn["highlight"].shape[0] == 6 and not drawn["highlight"].any()  # no noise asked


def test_probe_help_names_the_control_it_uses(capsys):
    from gridlens.analysis.probes import train_probes

    code, out, _ = run(capsys, "analyze", "probe", "--help")
    used = inspect.signature(train_probes).parameters["control"].default
    analyze = cli.get_command(click.Context(cli), "analyze")
    option = _options(analyze.get_command(click.Context(analyze), "probe"))["control"]
    assert code == 0 and option.default == used == "type"
    assert "Hewitt" in out and "shuffled-label" not in out


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_stages_show_on_a_terminal_only():
    screen, log = Terminal(), io.StringIO()
    for stream in (screen, log):
        stage = Stages("direct", 2, file=stream)
        with stage("copy scores"):
            pass
        with stage("logit lens"):
            pass
    assert "direct" in screen.getvalue() and "logit lens" in screen.getvalue()
    assert "1/2" in screen.getvalue() and log.getvalue() == ""


def test_a_failing_stage_clears_its_bar():
    screen = Terminal()
    stage = Stages("direct", 2, file=screen)
    with pytest.raises(KeyError), stage("copy scores"):
        raise KeyError("boom")
    last = screen.getvalue().rstrip("\r").rsplit("\r", 1)[-1]
    assert stage.bar.disable and last.strip() == ""  # the line is blanked


def test_analyze_direct_reports_its_stages(capsys, tmp_path, monkeypatch):
    import gridlens.analysis.commands as analysis_commands
    from gridlens.models import GridGPT, save

    save(GridGPT("tiny", seed=0), tmp_path / "tiny")
    names: list[str] = []

    class Recording(Stages):
        def __call__(self, name):
            names.append(name)
            return super().__call__(name)

    monkeypatch.setattr(analysis_commands, "Stages", Recording)
    code, out, err = run(capsys, "analyze", "direct", "--model", str(tmp_path / "tiny"),
                         "--tasks", "frame", "-n", "1", "--out", str(tmp_path / "out"))  # fmt: skip
    assert code == 0, err
    assert names == ["loading the model", "copy scores", "logit lens", "figures"]
    assert (tmp_path / "out" / "direct.json").exists() and "wrote" in out


def _fake_tools(folder: Path, uid: int) -> dict[str, str]:
    """A venv whose ruff and python echo their call, and `id` / `apt-get` shims on PATH."""
    venv = folder / "venv" / "bin"
    venv.mkdir(parents=True)
    shims = folder / "shims"
    shims.mkdir()
    scripts = {
        venv / "ruff": 'echo "ruff $*"',
        venv / "python": 'echo "pytest require=[$GRIDLENS_REQUIRE_BROWSER]"',
        shims / "id": f"echo {uid}",
        shims / "apt-get": 'echo "apt-get $*"',
    }
    for path, body in scripts.items():
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
    (venv / "gridlens").touch()
    os.utime(venv / "gridlens", (4e9, 4e9))  # newer than pyproject.toml: no install
    return {**os.environ, "PATH": f"{shims}:{os.environ['PATH']}"}


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize(("uid", "note", "require"), [(1000, 1, ""), (0, 0, "1")])
def test_make_test_without_a_browser(tmp_path, uid, note, require):
    env = _fake_tools(tmp_path, uid)
    done = subprocess.run(
        ["make", "-s", "test", f"VENV={tmp_path / 'venv'}", "CHROMIUM=/nonexistent"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    lines = done.stdout.splitlines()
    assert sum("browser tests skipped" in line for line in lines) == note
    assert any(line.startswith("apt-get install") for line in lines) == (uid == 0)
    assert lines[-1] == f"pytest require=[{require}]"
