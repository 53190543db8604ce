"""Rendering: PNG pixels land where the tokens say, highlights and frames where asked, text
output for terminals, and clear errors for bad input."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from gridlens.errors import ConfigError, TokenError
from gridlens.world import STRUCTURES, generate
from gridlens.world.render import (
    FRAME_RGB,
    HIGHLIGHT_EDGE_RGB,
    HIGHLIGHT_RGB,
    PLAIN_CHARS,
    image_layout,
    print_quizzes,
    render_image,
    render_png,
    render_text,
    use_color,
)
from gridlens.world.tokens import COLOR_RGB


def _cells(image: Image.Image, layout, n: int, h: int = 10, w: int = 10) -> np.ndarray:
    """The colour at the centre of every cell: [n, 4, H, W, 3]."""
    pixels = np.asarray(image)
    out = np.zeros((n, 4, h, w, 3), dtype=np.uint8)
    for i in range(n):
        for s in range(4):
            for r in range(h):
                for c in range(w):
                    x0, y0, x1, y1 = layout.cell_box(i, s, r, c)
                    out[i, s, r, c] = pixels[(y0 + y1) // 2, (x0 + x1) // 2]
    return out


@pytest.fixture(scope="module")
def mixed():
    return generate("replace_color", 10, seed=3, structure="mix", noise=0.1)


def test_every_cell_has_the_colour_of_its_token_in_stored_order(mixed):
    image = render_image(mixed, cell=12, columns=3)
    layout = image_layout(10, cell=12, columns=3, captions=True)
    assert image.size == layout.size
    stored = mixed.tokens.numpy().reshape(10, 4, 101)[:, :, 1:].reshape(10, 4, 10, 10)
    assert np.array_equal(_cells(image, layout, 10), COLOR_RGB[stored])
    # The stored order is the structure's order of the clean canonical grids (noise aside).
    for i in range(10):
        spec = STRUCTURES[mixed.structure[i]]
        clean = mixed.grids[i, spec.permutation]
        noisy = mixed.noise[i, spec.permutation]
        assert np.array_equal(stored[i][~noisy], clean[~noisy])


def test_tokens_and_batch_render_identically_without_captions(mixed):
    a = np.asarray(render_image(mixed, captions=None))
    b = np.asarray(render_image(mixed.tokens, captions=None))
    c = np.asarray(render_image(mixed.tokens.numpy().tolist(), captions=None))
    assert np.array_equal(a, b) and np.array_equal(a, c)


def test_predicted_grids_are_framed():
    gen = generate("replace_color", 2, seed=0, structure="generation")
    fwd = generate("replace_color", 2, seed=0, structure="forward")
    for batch, framed in ((gen, [False, True, True, True]), (fwd, [False, False, False, True])):
        layout = image_layout(2, cell=14, captions=True)
        pixels = np.asarray(render_image(batch, cell=14))
        for s in range(4):
            x, y = layout.grid_origin(1, s)
            outside = pixels[y + 30, x - 1]  # just left of the grid, in the frame's band
            assert (tuple(outside) == FRAME_RGB) == framed[s], (batch.structure[0], s)


def test_highlight_outlines_exactly_the_asked_cells(mixed):
    n = len(mixed)
    mask = np.zeros((n, 4, 10, 10), dtype=bool)
    mask[0, 2, 3, 4] = True
    mask[5, 0, 0, 0] = True
    layout = image_layout(n, cell=14, captions=True)
    pixels = np.asarray(render_image(mixed, highlight=mask, cell=14))
    plain = np.asarray(render_image(mixed, cell=14))
    for i, s, r, c in [(0, 2, 3, 4), (5, 0, 0, 0)]:
        x0, y0, x1, y1 = layout.cell_box(i, s, r, c)
        assert tuple(pixels[y0, (x0 + x1) // 2]) == HIGHLIGHT_RGB  # top edge of the cell
        assert tuple(pixels[(y0 + y1) // 2, x1]) == HIGHLIGHT_RGB  # right edge
        assert tuple(pixels[y0 - 1, (x0 + x1) // 2]) == HIGHLIGHT_EDGE_RGB  # over the line
        assert tuple(pixels[(y0 + y1) // 2, x1 + 1]) == HIGHLIGHT_EDGE_RGB
        token = mixed.tokens[i].reshape(4, 101)[s, 1 + 10 * r + c]
        # Only a one-pixel ring of the cell is covered: its colour shows everywhere else.
        interior = pixels[y0 + 1 : y1, x0 + 1 : x1].reshape(-1, 3)
        assert (interior == COLOR_RGB[token]).all()
    changed = np.any(pixels != plain, axis=-1)
    boxes = [layout.cell_box(0, 2, 3, 4), layout.cell_box(5, 0, 0, 0)]
    inside = np.zeros_like(changed)
    for x0, y0, x1, y1 in boxes:  # the cell and the grid lines around it
        inside[y0 - 1 : y1 + 2, x0 - 1 : x1 + 2] = True
    assert changed.any() and not (changed & ~inside).any()

    # The same mask given per token [n, L] draws the same picture.
    per_token = np.zeros((n, 4, 101), dtype=bool)
    per_token[:, :, 1:] = mask.reshape(n, 4, 100)
    again = np.asarray(render_image(mixed, highlight=torch.from_numpy(per_token.reshape(n, -1))))
    assert np.array_equal(again, pixels)


def test_highlight_changes_marks_the_changed_cells(mixed):
    layout = image_layout(len(mixed), cell=14, captions=True)
    pixels = np.asarray(render_image(mixed, highlight="changes", cell=14))
    marks = mixed.token_annotations("changes").reshape(len(mixed), 4, 101)[:, :, 1:] > 0
    for i in range(3):
        for s in range(4):
            for r in range(10):
                for c in range(10):
                    x0, y0, x1, _ = layout.cell_box(i, s, r, c)
                    edge = tuple(pixels[y0, (x0 + x1) // 2]) == HIGHLIGHT_RGB
                    assert edge == marks[i, s, 10 * r + c]


def test_grids_input_and_non_square_sizes():
    batch = generate("replace_color", 3, seed=1, height=8, width=12)
    image = render_image(batch, cell=10)
    layout = image_layout(3, 8, 12, cell=10, captions=True)
    assert image.size == layout.size
    assert np.array_equal(_cells(image, layout, 3, 8, 12), COLOR_RGB[batch.grids])
    from_grids = render_image(torch.as_tensor(batch.grids), cell=10, captions=None)
    from_tokens = render_image(batch.tokens, height=8, width=12, cell=10, captions=None)
    assert np.array_equal(np.asarray(from_grids), np.asarray(from_tokens))
    with pytest.raises(TokenError, match="square"):
        render_image(batch.tokens)  # 8x12 cannot be guessed from the length


def test_bad_inputs_raise_clear_errors(mixed):
    tokens = mixed.tokens
    with pytest.raises(TokenError, match=r"shape \[n, 404\]"):
        render_image(tokens[:, :400], height=10, width=10)
    bad = tokens.clone()
    bad[0, 5] = 15
    with pytest.raises(TokenError, match=r"0\.\.14"):
        render_image(bad)
    bad = tokens.clone()
    bad[0, 5] = 12
    with pytest.raises(TokenError, match="marker"):
        render_image(bad)
    with pytest.raises(TokenError, match="integers"):
        render_image(tokens.float())
    with pytest.raises(TokenError, match="no quiz"):
        render_image(tokens[:0])
    with pytest.raises(TokenError, match=r"colours 0\.\.10"):
        render_image(np.full((1, 4, 10, 10), 11))
    with pytest.raises(TokenError, match="bool"):
        render_image(tokens, highlight=np.zeros((10, 404), dtype=np.int64))
    with pytest.raises(TokenError, match="highlight must have shape"):
        render_image(tokens, highlight=np.zeros((10, 4, 9, 10), dtype=bool))
    with pytest.raises(ConfigError, match="QuizBatch"):
        render_image(tokens, highlight="changes")
    with pytest.raises(ConfigError, match="one per quiz"):
        render_image(tokens, captions=["a"])
    with pytest.raises(ConfigError, match="cell size"):
        render_image(tokens, cell=2)
    with pytest.raises(ConfigError, match="too large"):
        render_image(torch.cat([tokens] * 100), cell=64, columns=1)


def test_png_is_written_atomically_and_never_half(tmp_path, mixed):
    path = render_png(mixed.subset([0, 1]), tmp_path / "sub" / "quiz.png", captions=["x", "y"])
    assert path.exists() and Image.open(path).format == "PNG"
    before = path.read_bytes()
    with pytest.raises(TokenError):
        render_png(mixed.tokens.float(), path)
    assert path.read_bytes() == before
    with pytest.raises(ConfigError, match=r"\.png"):
        render_png(mixed, tmp_path / "quiz.jpg")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["quiz.png", "sub"]


def test_plain_text_shows_labels_cells_and_marks(mixed):
    text = render_text(mixed.subset([0]), color=False, highlight="changes")
    lines = text.splitlines()
    assert lines[0] == f"replace_color · {mixed.structure[0]}"
    order = STRUCTURES[mixed.structure[0]].order
    names = {"A": "A", "f_A": "f(A)", "B": "B", "f_B": "f(B)"}
    for g in order:
        assert names[g] in lines[1]
    assert "?" in lines[1]  # the predicted grid
    stored = mixed.tokens[0].reshape(4, 101)[:, 1:].reshape(4, 10, 10).numpy()
    marks = mixed.token_annotations("changes")[0].reshape(4, 101)[:, 1:].reshape(4, 10, 10) > 0
    for r in range(10):
        row = lines[2 + r].ljust(4 * 20 + 3 * 2)
        for s in range(4):
            chunk = row[s * 22 : s * 22 + 20]
            assert chunk[0::2] == "".join(PLAIN_CHARS[v] for v in stored[s, r])
            assert chunk[1::2] == "".join("*" if m else " " for m in marks[s, r])
    assert "\x1b" not in text


def test_color_text_uses_24_bit_backgrounds(mixed):
    text = render_text(mixed.subset([0]), color=True, captions=None)
    colours = set(int(v) for v in mixed.tokens[0].reshape(4, 101)[:, 1:].unique())
    for c in colours:
        r, g, b = COLOR_RGB[c]
        assert f"\x1b[0;48;2;{r};{g};{b}m" in text
    assert text.count("\n") >= 11


def test_terminal_colour_follows_tty_and_no_color(monkeypatch, mixed):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert use_color(Tty()) and not use_color(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_color(Tty())
    out = Tty()
    print_quizzes(mixed.subset([0]), file=out)
    assert "\x1b" not in out.getvalue() and "f(B)" in out.getvalue()
    monkeypatch.delenv("NO_COLOR")
    out = Tty()
    print_quizzes(mixed.subset([0]), file=out)
    assert "\x1b[" in out.getvalue()
