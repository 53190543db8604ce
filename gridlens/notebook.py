"""Results in a notebook: the HTML that `_repr_html_` methods return (inline PNGs, tables,
findings), and tabular results as pandas DataFrames when pandas is installed."""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Iterable, Sequence
from html import escape
from typing import Any

from gridlens.errors import MissingDependencyError

MAX_ROWS = 40  # table rows shown inline; to_dataframe() has them all


def image_html(image: Any, alt: str = "") -> str:
    """An <img> holding a matplotlib Figure or a Pillow image as an inline PNG."""
    buffer = io.BytesIO()
    if hasattr(image, "savefig"):
        image.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    else:
        image.save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}"/>'


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return escape("" if value is None else str(value))


def table_html(records: Sequence[dict[str, Any]], max_rows: int = MAX_ROWS) -> str:
    """An HTML table of `records` (one dict per row, the first row's keys as columns)."""
    if not records:
        return "<p><i>no rows</i></p>"
    columns = list(records[0])
    head = "".join(f"<th>{escape(str(c))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(row.get(c))}</td>" for c in columns) + "</tr>"
        for row in records[:max_rows]
    )
    more = len(records) - max_rows
    tail = f"<p><i>{more} more rows: see to_dataframe()</i></p>" if more > 0 else ""
    return f"<table><tr>{head}</tr>{body}</table>{tail}"


def findings_html(lines: Iterable[str]) -> str:
    return "<ul>" + "".join(f"<li>{escape(line)}</li>" for line in lines) + "</ul>"


def result_html(title: str, findings: Iterable[str], figure: Any, records: Sequence[dict]) -> str:
    """A result's block: title, findings, its figure inline and its table."""
    return (
        f"<div><h4>{escape(title)}</h4>{findings_html(findings)}"
        f"{image_html(figure, title)}{table_html(records)}</div>"
    )


def dataframe(records: Sequence[dict[str, Any]]):
    """A pandas DataFrame of `records`; a clear error when pandas is not installed."""
    try:
        import pandas
    except ImportError:
        raise MissingDependencyError(
            "to_dataframe() needs pandas, which is not installed: pip install pandas "
            "(to_records() and to_json() need nothing)"
        ) from None
    return pandas.DataFrame.from_records(list(records))


class Tabular:
    """A result with one row per (item, task): `to_records()` lists them as dicts (plain
    JSON values) and `to_dataframe()` makes them a DataFrame."""

    def to_records(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def to_dataframe(self):
        return dataframe(self.to_records())
