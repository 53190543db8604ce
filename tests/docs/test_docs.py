"""The docs: the site builds with warnings as errors, every ```python block of every page (and
of the README) runs, and the README keeps its landing-page shape."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)


def code_blocks(text: str, language: str | None = None) -> list[str]:
    """The fenced blocks of a Markdown text (those of one language, if given), in order."""
    return [body for lang, body in FENCE.findall(text) if language in (None, lang)]


PAGES = sorted(
    [p for p in DOCS.rglob("*.md") if code_blocks(p.read_text(), "python")] + [ROOT / "README.md"]
)


def test_code_blocks_are_found():
    text = "x\n```python\na = 1\n```\n\n```bash\nls\n```\n```python\nb = 2\n```\n"
    assert code_blocks(text, "python") == ["a = 1\n", "b = 2\n"]
    assert code_blocks(text) == ["a = 1\n", "ls\n", "b = 2\n"]
    assert len(PAGES) >= 8  # the guides with examples, and the README


def test_readme_is_a_landing_page():
    text = (ROOT / "README.md").read_text()
    first = code_blocks(text)[0].splitlines()
    assert [line.split()[:2] for line in first] == [["make", "report"], ["make", "test"]]
    python = code_blocks(text, "python")
    assert len(python) == 1 and len(python[0].strip().splitlines()) <= 12
    assert "docs/report.png" in text
    assert len(text.splitlines()) < 120, "the guides live under docs/, not in the README"


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_run(page, tmp_path, monkeypatch):
    """A page's blocks run in order in one namespace, in an empty folder, as a reader would."""
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    for i, block in enumerate(code_blocks(page.read_text(), "python")):
        code = compile(block, f"{page.name}, python block {i + 1}", "exec")
        exec(code, namespace)


@pytest.mark.slow
def test_site_builds_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra is not installed")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for page in ("index.html", "api/sae/index.html", "tutorials/walkthrough.ipynb"):
        assert (tmp_path / "site" / page).is_file(), page
    assert "gridlens.sae.steering.steer" in (tmp_path / "site/api/sae/index.html").read_text()
