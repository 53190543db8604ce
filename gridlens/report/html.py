"""A small static HTML page: a header, a table of contents, sections of reading, tables and
figures. Figures are PNG files beside `index.html`, referenced by relative paths, so the folder
can be moved or zipped and still opens anywhere; the CSS is inline and there is no script."""

from __future__ import annotations

import html
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from gridlens.errors import ConfigError
from gridlens.io import atomic_write

CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1b1f24;
  margin: 0; background: #f6f7f9; }
main { max-width: 1080px; margin: 0 auto; padding: 24px 28px 64px; background: #fff; }
header h1 { margin: 0 0 4px; font-size: 28px; }
header .subtitle { color: #57606a; margin: 0 0 16px; }
h2 { border-bottom: 2px solid #d0d7de; padding-bottom: 4px; margin-top: 40px; }
nav.toc { background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 6px;
  padding: 10px 18px; margin: 16px 0; }
nav.toc ol { margin: 4px 0; padding-left: 22px; columns: 2; }
a { color: #0969da; text-decoration: none; }
a:hover { text-decoration: underline; }
table { border-collapse: collapse; margin: 10px 0 18px; font-size: 14px; }
th, td { border: 1px solid #d0d7de; padding: 3px 10px; text-align: right; }
th { background: #f6f8fa; }
td:first-child, th:first-child { text-align: left; }
table.meta td { text-align: left; }
table.meta td:first-child { color: #57606a; }
caption { caption-side: bottom; color: #57606a; font-size: 13px; padding-top: 4px;
  text-align: left; }
.reading { background: #eef6ff; border-left: 4px solid #0969da; padding: 8px 16px;
  margin: 12px 0; }
.reading ul { margin: 4px 0; padding-left: 20px; }
.howto { color: #404850; }
figure { margin: 16px 0 24px; }
figure img { max-width: 100%; height: auto; border: 1px solid #e1e4e8; }
figcaption { color: #57606a; font-size: 13px; margin-top: 4px; }
footer { color: #57606a; font-size: 13px; margin-top: 48px; border-top: 1px solid #d0d7de;
  padding-top: 8px; }
"""


@dataclass
class Figure:
    """A PNG beside the page: `src` is relative to the page's folder."""

    src: str
    caption: str = ""
    alt: str = ""

    def __post_init__(self) -> None:
        path = PurePosixPath(self.src)
        if path.is_absolute() or ".." in path.parts or "\\" in self.src or ":" in self.src:
            raise ConfigError(f"figure {self.src!r}: must be a relative path inside the report")


@dataclass
class Table:
    header: Sequence[str]
    rows: Sequence[Sequence[object]]
    caption: str = ""

    def __post_init__(self) -> None:
        for row in self.rows:
            if len(row) != len(self.header):
                raise ConfigError(
                    f"table row {row!r} has {len(row)} cells, header {len(self.header)}"
                )


@dataclass
class Text:
    """A paragraph of plain text (escaped)."""

    text: str


@dataclass
class Link:
    """A paragraph linking to a page beside the report (a relative path inside the folder)."""

    href: str
    text: str

    def __post_init__(self) -> None:
        Figure(self.href)  # the same rule: relative, inside the report


Block = Figure | Table | Text | Link


@dataclass
class Section:
    title: str
    howto: str = ""  # what the section shows and how to read it
    findings: list[str] = field(default_factory=list)  # the short reading, with numbers
    blocks: list[Block] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-") or "section"

    def add(self, *blocks: Block) -> Section:
        self.blocks.extend(blocks)
        return self


@dataclass
class Page:
    title: str
    subtitle: str = ""
    meta: list[tuple[str, str]] = field(default_factory=list)  # the header's key/value table
    sections: list[Section] = field(default_factory=list)
    footer: str = ""

    def figures(self) -> list[Figure]:
        return [b for s in self.sections for b in s.blocks if isinstance(b, Figure)]

    def render(self) -> str:
        """The page as one HTML5 document."""
        e = html.escape
        anchors = _unique_anchors(self.sections)
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{e(self.title)}</title>",
            f"<style>{CSS}</style>",
            "</head>",
            "<body>",
            "<main>",
            "<header>",
            f"<h1>{e(self.title)}</h1>",
        ]
        if self.subtitle:
            parts.append(f'<p class="subtitle">{e(self.subtitle)}</p>')
        if self.meta:
            rows = "".join(f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in self.meta)
            parts.append(f'<table class="meta">{rows}</table>')
        parts.append("</header>")
        if self.sections:
            items = "".join(
                f'<li><a href="#{a}">{e(s.title)}</a></li>'
                for s, a in zip(self.sections, anchors, strict=True)
            )
            parts.append(f'<nav class="toc"><strong>Contents</strong><ol>{items}</ol></nav>')
        number = 0
        for section, anchor in zip(self.sections, anchors, strict=True):
            parts.append(f'<section id="{anchor}">')
            parts.append(f"<h2>{e(section.title)}</h2>")
            if section.howto:
                parts.append(f'<p class="howto">{e(section.howto)}</p>')
            if section.findings:
                items = "".join(f"<li>{e(f)}</li>" for f in section.findings)
                parts.append(f'<div class="reading"><strong>Reading</strong><ul>{items}</ul></div>')
            for block in section.blocks:
                if isinstance(block, Figure):
                    number += 1
                    parts.append(_figure(block, number))
                else:
                    parts.append(_block(block))
            parts.append("</section>")
        if self.footer:
            parts.append(f"<footer>{e(self.footer)}</footer>")
        parts += ["</main>", "</body>", "</html>", ""]
        return "\n".join(parts)

    def write(self, folder: str | os.PathLike, name: str = "index.html") -> Path:
        """Write the page into `folder` (atomically) after checking every figure is there."""
        folder = Path(folder)
        missing = [f.src for f in self.figures() if not (folder / f.src).is_file()]
        if missing:
            raise ConfigError(f"{folder}: figures missing for the page: {', '.join(missing)}")
        text = self.render().encode()
        return atomic_write(folder / name, lambda handle: handle.write(text))


def _unique_anchors(sections: Sequence[Section]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for section in sections:
        base = section.anchor
        seen[base] = seen.get(base, 0) + 1
        out.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return out


def _figure(figure: Figure, number: int) -> str:
    e = html.escape
    alt = figure.alt or figure.caption or figure.src
    caption = f"Figure {number}. {figure.caption}" if figure.caption else f"Figure {number}."
    return (
        f'<figure><a href="{e(figure.src, quote=True)}">'
        f'<img src="{e(figure.src, quote=True)}" alt="{e(alt, quote=True)}"></a>'
        f"<figcaption>{e(caption)}</figcaption></figure>"
    )


def _block(block: Block) -> str:
    e = html.escape
    if isinstance(block, Text):
        return f"<p>{e(block.text)}</p>"
    if isinstance(block, Link):
        return f'<p><a href="{e(block.href, quote=True)}">{e(block.text)}</a></p>'
    head = "".join(f"<th>{e(str(h))}</th>" for h in block.header)
    body = "".join(
        "<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in block.rows
    )
    caption = f"<caption>{e(block.caption)}</caption>" if block.caption else ""
    return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
