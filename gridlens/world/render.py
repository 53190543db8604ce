"""Pictures of quizzes: a PNG (Pillow) and ANSI-coloured terminal text.

Both take a batch of quizzes as tokens [n, 4 * (1 + H*W)] in any structure (each quiz may use
its own), a single quiz [L], a `QuizBatch`, or colour grids [n, 4, H, W] in canonical order
(A, f_A, B, f_B). Each quiz is drawn as one row of its four grids in the stored order, each
labelled from its marker ("A", "f(A)", "B", "f(B)"); the grids its structure asks a model to
predict are framed (PNG) or marked with "?" (terminal).

Highlights are bool masks in the stored (slot) order, either per cell [n, 4, H, W] or per token
[n, L] (marker positions ignored), e.g. `batch.token_annotations("changes") > 0`; with a
`QuizBatch` the names "changes" and "noise" select its annotations directly.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import numpy as np
import torch

from gridlens.errors import ConfigError, TokenError
from gridlens.io import atomic_write
from gridlens.world import structures as st
from gridlens.world.tokens import (
    COLOR_RGB,
    GRID_NAMES,
    N_COLORS,
    TOKEN_TO_GRID,
    grid_size_from_length,
    validate_tokens,
)

if TYPE_CHECKING:
    from PIL import Image

LABELS: dict[str, str] = {"A": "A", "f_A": "f(A)", "B": "B", "f_B": "f(B)"}
LINE_RGB = (200, 200, 200)
"""Cell grid lines."""
FRAME_RGB = (0, 0, 0)
"""The frame around a predicted grid."""
HIGHLIGHT_RGB = (255, 0, 255)
"""The inner ring of a highlighted cell's outline (magenta: not a palette colour)."""
HIGHLIGHT_EDGE_RGB = (0, 0, 0)
"""The outer ring, drawn over the cell's grid lines: it sets the outline apart from violet."""
TEXT_RGB = (0, 0, 0)
PLAIN_CHARS = ".123456789X"
"""Terminal characters of colours 0..10 when colour is off."""
MAX_PIXELS = 150_000_000


@dataclass
class _Prepared:
    grids: np.ndarray  # [n, 4, H, W] in stored order
    orders: list[tuple[str, ...]]  # per quiz: grid name of each slot
    predicted: np.ndarray  # [n, 4] bool
    highlight: np.ndarray | None  # [n, 4, H, W] bool
    captions: list[str] | None
    height: int
    width: int


def _is_batch(obj: object) -> bool:
    from gridlens.world.generate import QuizBatch

    return isinstance(obj, QuizBatch)


def _predicted(order: tuple[str, ...]) -> tuple[int, ...]:
    try:
        return st.structure_of_order(order).predicted
    except KeyError:  # an order no structure uses (e.g. a model's output): nothing framed
        return (0, 0, 0, 0)


def _prepare(
    quizzes,
    highlight=None,
    captions=None,
    height: int | None = None,
    width: int | None = None,
) -> _Prepared:
    batch = quizzes if _is_batch(quizzes) else None
    if batch is not None:
        height, width = batch.height, batch.width
        tokens = batch.tokens
    else:
        tokens = quizzes
    if not isinstance(tokens, torch.Tensor):
        try:
            tokens = np.asarray(tokens)
        except (ValueError, TypeError) as error:
            raise TokenError(f"quizzes must be a token array or a QuizBatch: {error}") from None
        if tokens.dtype == object:
            raise TokenError("quizzes must be a rectangular integer array, got ragged rows")
        tokens = torch.from_numpy(tokens) if tokens.size else torch.zeros(tokens.shape, dtype=int)
    if tokens.ndim == 1:
        tokens = tokens[None]

    if tokens.ndim == 4:  # colour grids in canonical order
        if tokens.shape[1] != 4:
            raise TokenError(f"grids must have shape [n, 4, H, W], got {list(tokens.shape)}")
        if tokens.is_floating_point() or tokens.dtype == torch.bool:
            raise TokenError(f"grids must be integers, got dtype {tokens.dtype}")
        grids = tokens.cpu().numpy().astype(np.int64)
        if grids.size and (grids.min() < 0 or grids.max() >= N_COLORS):
            raise TokenError(
                f"grid cells must be colours 0..{N_COLORS - 1}, "
                f"got values from {grids.min()} to {grids.max()}"
            )
        n, _, height, width = grids.shape
        orders = [GRID_NAMES] * n
    elif tokens.ndim == 2:
        if height is None or width is None:
            height, width = grid_size_from_length(tokens.shape[1])
        validate_tokens(tokens, height, width)
        n = len(tokens)
        t = tokens.cpu().numpy().astype(np.int64).reshape(n, 4, 1 + height * width)
        grids = t[:, :, 1:].reshape(n, 4, height, width)
        orders = [tuple(TOKEN_TO_GRID[int(m)] for m in row) for row in t[:, :, 0]]
    else:
        raise TokenError(
            f"quizzes must be tokens [n, L], one quiz [L] or grids [n, 4, H, W], "
            f"got shape {list(tokens.shape)}"
        )
    if n == 0:
        raise TokenError("nothing to render: the batch holds no quiz")
    predicted = np.array([_predicted(o) for o in orders], dtype=bool).reshape(n, 4)

    mask = None
    if isinstance(highlight, str):
        if batch is None:
            raise ConfigError(
                f"highlight={highlight!r} names an annotation; it needs a QuizBatch, not tokens"
            )
        if highlight not in ("changes", "noise"):
            raise ConfigError(
                f"highlight must be 'changes', 'noise' or a bool mask, not {highlight!r}"
            )
        highlight = batch.token_annotations(highlight) > 0
    if highlight is not None:
        mask = np.asarray(highlight.cpu() if isinstance(highlight, torch.Tensor) else highlight)
        if mask.dtype != bool:
            raise TokenError(f"highlight must be a bool mask, got dtype {mask.dtype}")
        length = 4 * (1 + height * width)
        if mask.shape == (n, length):
            mask = mask.reshape(n, 4, 1 + height * width)[:, :, 1:]
            mask = mask.reshape(n, 4, height, width)
        elif mask.shape != (n, 4, height, width):
            raise TokenError(
                f"highlight must have shape [{n}, 4, {height}, {width}] (cells) or "
                f"[{n}, {length}] (tokens), got {list(mask.shape)}"
            )

    if isinstance(captions, str):
        if captions != "auto":
            raise ConfigError("captions must be a list of strings (one per quiz) or 'auto'")
        captions = (
            [f"{t} · {s}" for t, s in zip(batch.task, batch.structure, strict=True)]
            if batch is not None
            else None
        )
    if captions is not None:
        captions = [str(c) for c in captions]
        if len(captions) != n:
            raise ConfigError(f"captions: expected one per quiz ({n}), got {len(captions)}")
    return _Prepared(grids, orders, predicted, mask, captions, int(height), int(width))


# ----------------------------------------------------------------------------------------- PNG


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _fit(draw, text: str, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


@dataclass(frozen=True)
class Layout:
    """Where everything sits in a rendered image (pixels; x to the right, y down)."""

    n: int
    height: int
    width: int
    cell: int
    columns: int
    captions: bool

    @property
    def font_size(self) -> int:
        return max(10, min(14, self.cell))

    @property
    def frame(self) -> int:
        return max(2, self.cell // 5)

    @property
    def grid_size(self) -> tuple[int, int]:
        """(height, width) of a grid in pixels, grid lines included."""
        return self.height * self.cell + 1, self.width * self.cell + 1

    @property
    def gap(self) -> int:
        return max(12, self.cell)

    @property
    def margin(self) -> int:
        return 8

    @property
    def label_height(self) -> int:
        return self.font_size + 4 + self.frame

    @property
    def panel_size(self) -> tuple[int, int]:
        """(height, width) of one quiz's panel."""
        gh, gw = self.grid_size
        caption = self.font_size + 6 if self.captions else 0
        return (
            self.label_height + gh + caption + 2 * self.margin,
            4 * gw + 3 * self.gap + 2 * self.margin,
        )

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the image, as Pillow reports it."""
        ph, pw = self.panel_size
        return self.columns * pw, math.ceil(self.n / self.columns) * ph

    def grid_origin(self, quiz: int, slot: int) -> tuple[int, int]:
        """(x, y) of the top-left pixel (a grid line) of grid `slot` of quiz `quiz`."""
        ph, pw = self.panel_size
        gw = self.grid_size[1]
        x = (quiz % self.columns) * pw + self.margin + slot * (gw + self.gap)
        y = (quiz // self.columns) * ph + self.margin + self.label_height
        return x, y

    def cell_box(self, quiz: int, slot: int, row: int, col: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) inclusive pixel bounds of a cell's interior (inside the lines)."""
        x, y = self.grid_origin(quiz, slot)
        x0, y0 = x + col * self.cell + 1, y + row * self.cell + 1
        return x0, y0, x0 + self.cell - 2, y0 + self.cell - 2


def image_layout(
    n: int, height: int = 10, width: int = 10, cell: int = 14, columns: int | None = None,
    captions: bool = True,
) -> Layout:  # fmt: skip
    """The layout `render_image` uses for n quizzes with these options."""
    if not 6 <= cell <= 64:
        raise ConfigError(f"cell size must be 6..64 pixels, got {cell}")
    if columns is None:
        columns = 1 if n <= 8 else min(4, math.ceil(n / 8))
    if columns < 1:
        raise ConfigError(f"columns must be >= 1, got {columns}")
    layout = Layout(n, height, width, cell, min(columns, n), captions)
    total_w, total_h = layout.size
    if total_w * total_h > MAX_PIXELS:
        raise ConfigError(
            f"{n} quizzes make a {total_w}x{total_h} image, too large; render fewer quizzes, "
            "a smaller cell size or more columns"
        )
    return layout


def _outline(pixels: np.ndarray, highlight: np.ndarray, cell: int) -> None:
    """Outline the highlighted cells in place: a black ring over the cell's grid lines and a
    magenta ring one pixel inside, so that most of the cell keeps its colour visible."""
    span = np.arange(cell + 1)
    line = (span == 0) | (span == cell)  # the grid lines around a cell
    inner = (span == 1) | (span == cell - 1)
    edge = line[:, None] | line[None, :]
    ring = (inner[:, None] | inner[None, :]) & ~edge
    for *quiz_slot, row, col in zip(*np.nonzero(highlight), strict=True):
        y, x = row * cell, col * cell
        block = pixels[(*quiz_slot, slice(y, y + cell + 1), slice(x, x + cell + 1))]
        block[edge] = HIGHLIGHT_EDGE_RGB
        block[ring] = HIGHLIGHT_RGB


def render_image(
    quizzes,
    *,
    highlight=None,
    captions="auto",
    columns: int | None = None,
    cell: int = 14,
    height: int | None = None,
    width: int | None = None,
) -> Image.Image:
    """A Pillow image of the quizzes: one row of four labelled grids per quiz, `columns` quizzes
    side by side (default: one column up to 8 quizzes, more beyond), cells `cell` pixels wide
    with grid lines, predicted grids framed in black, highlighted cells outlined and
    a caption under each quiz (`captions`: one string per quiz, None, or "auto": task and
    structure for a QuizBatch). height/width: the grid size when tokens alone cannot tell.
    `image_layout` with the same options says where each cell is."""
    from PIL import Image, ImageDraw

    q = _prepare(quizzes, highlight, captions, height, width)
    n, h, w = len(q.grids), q.height, q.width
    layout = image_layout(n, h, w, cell, columns, q.captions is not None)
    font = _font(layout.font_size)
    gh, gw = layout.grid_size

    # Cells and grid lines for every grid at once: [n, 4, gh, gw, 3].
    pixels = COLOR_RGB[q.grids].repeat(cell, axis=2).repeat(cell, axis=3)
    pixels = np.pad(pixels, ((0, 0), (0, 0), (0, 1), (0, 1), (0, 0)))
    pixels[:, :, ::cell, :] = LINE_RGB
    pixels[:, :, :, ::cell] = LINE_RGB
    if q.highlight is not None:
        _outline(pixels, q.highlight, cell)

    total_w, total_h = layout.size
    canvas = np.full((total_h, total_w, 3), 255, dtype=np.uint8)
    for i in range(n):
        for s in range(4):
            x, y = layout.grid_origin(i, s)
            canvas[y : y + gh, x : x + gw] = pixels[i, s]

    image = Image.fromarray(canvas, "RGB")
    draw = ImageDraw.Draw(image)
    frame = layout.frame
    for i in range(n):
        for s in range(4):
            x, y = layout.grid_origin(i, s)
            label_y = y - layout.label_height + 2
            draw.text((x, label_y), LABELS[q.orders[i][s]], fill=TEXT_RGB, font=font)
            if q.predicted[i, s]:
                draw.rectangle(
                    (x - frame, y - frame, x + gw - 1 + frame, y + gh - 1 + frame),
                    outline=FRAME_RGB,
                    width=frame,
                )
        if q.captions is not None:
            x, y = layout.grid_origin(i, 0)
            text = _fit(draw, q.captions[i], font, layout.panel_size[1] - 2 * layout.margin)
            draw.text((x, y + gh + frame + 2), text, fill=TEXT_RGB, font=font)
    return image


def render_png(quizzes, path: str | os.PathLike, **options) -> Path:
    """Render the quizzes (see `render_image` for the options) to a PNG file, written
    atomically: a crash or bad input never leaves a partial file. Returns the path."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ConfigError(f"output {str(path)!r} must end in .png")
    image = render_image(quizzes, **options)  # validate and draw before touching the disk
    return atomic_write(path, lambda handle: image.save(handle, format="PNG"))


# ------------------------------------------------------------------------------------ terminal


def use_color(stream: TextIO | None = None) -> bool:
    """Colour on a terminal unless NO_COLOR is set (https://no-color.org)."""
    stream = sys.stdout if stream is None else stream
    if os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def render_text(
    quizzes,
    *,
    color: bool = False,
    highlight=None,
    captions="auto",
    height: int | None = None,
    width: int | None = None,
) -> str:
    """The quizzes as text: per quiz a caption line, a label line and H rows of four grids.

    color=True paints each cell as two spaces on a 24-bit ANSI background; color=False writes
    one character per cell (".", "1".."9", "X" for colours 0..10). Highlighted cells show "<>"
    (colour) or a "*" after the character (plain); predicted grids' labels end in " ?".
    """
    q = _prepare(quizzes, highlight, captions, height, width)
    w = q.width
    gap = "  "
    lines: list[str] = []
    for i in range(len(q.grids)):
        if q.captions is not None:
            lines.append(q.captions[i])
        labels = []
        for s in range(4):
            label = LABELS[q.orders[i][s]] + (" ?" if q.predicted[i, s] else "")
            labels.append(label[: 2 * w].ljust(2 * w))
        lines.append(gap.join(labels).rstrip())
        for r in range(q.height):
            parts = []
            for s in range(4):
                cells = q.grids[i, s, r]
                marks = q.highlight[i, s, r] if q.highlight is not None else np.zeros(w, bool)
                if color:
                    out, previous = [], None
                    for c, m in zip(cells, marks, strict=True):
                        red, green, blue = (int(v) for v in COLOR_RGB[c])
                        if (c, m) != previous:  # escapes only where the cell style changes
                            out.append(f"\x1b[0;48;2;{red};{green};{blue}m")
                            if m:
                                dark = 0.299 * red + 0.587 * green + 0.114 * blue < 128
                                out.append("\x1b[38;2;255;255;255m" if dark else "\x1b[38;2;0;0;0m")
                        out.append("<>" if m else "  ")
                        previous = (c, m)
                    parts.append("".join(out) + "\x1b[0m")
                else:
                    parts.append(
                        "".join(
                            PLAIN_CHARS[c] + ("*" if m else " ")
                            for c, m in zip(cells, marks, strict=True)
                        )
                    )
            lines.append(gap.join(parts).rstrip() if not color else gap.join(parts))
        lines.append("")
    return "\n".join(lines)


def print_quizzes(quizzes, file: TextIO | None = None, color: bool | None = None, **options):
    """Print the quizzes to `file` (stdout): in colour on a terminal, plain text otherwise or
    when NO_COLOR is set; color=True/False forces it."""
    file = sys.stdout if file is None else file
    color = use_color(file) if color is None else color
    file.write(render_text(quizzes, color=color, **options))
    file.flush()
