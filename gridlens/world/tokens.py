"""The token layout of a quiz: colours, grid markers, and conversions between grids and tokens."""

from __future__ import annotations

import numpy as np
import torch

from gridlens.errors import TokenError

N_COLORS = 11
"""Colours are tokens 0..10; 0 is the white background."""

GRID_NAMES: tuple[str, ...] = ("A", "f_A", "B", "f_B")
MARKER_TOKENS: dict[str, int] = {"A": 11, "f_A": 12, "B": 13, "f_B": 14}
TOKEN_TO_GRID: dict[int, str] = {t: g for g, t in MARKER_TOKENS.items()}
VOCAB_SIZE = 15

COLOR_NAMES: tuple[str, ...] = (
    "white", "red", "green", "blue", "yellow", "cyan",
    "violet", "lightgreen", "brown", "lightblue", "gray",
)  # fmt: skip
COLOR_RGB = np.array(
    [
        [255, 255, 255], [255, 0, 0], [0, 192, 0], [0, 0, 255], [255, 224, 0], [0, 255, 255],
        [224, 128, 255], [192, 255, 192], [165, 42, 42], [192, 192, 255], [128, 128, 128],
    ],
    dtype=np.uint8,
)  # fmt: skip


def quiz_length(height: int = 10, width: int = 10) -> int:
    """Tokens in a quiz: four grids, each preceded by its marker."""
    return 4 * (1 + height * width)


def grid_size_from_length(length: int) -> tuple[int, int]:
    """Infer a square grid size from a quiz length (404 -> 10 x 10)."""
    cells = length // 4 - 1
    side = round(cells**0.5)
    if length % 4 or side * side != cells:
        raise TokenError(
            f"a quiz of {length} tokens is not 4 x (1 + H*W) for a square grid; "
            "pass height and width explicitly"
        )
    return side, side


def grids_to_tokens(grids: np.ndarray | torch.Tensor, order: tuple[str, ...]) -> torch.Tensor:
    """[n, 4, H, W] colour grids, already in `order`, to long tokens [n, 4 * (1 + H*W)]."""
    g = torch.as_tensor(np.asarray(grids), dtype=torch.long)
    n, four, h, w = g.shape
    markers = torch.tensor([MARKER_TOKENS[name] for name in order], dtype=torch.long)
    out = torch.empty(n, four, 1 + h * w, dtype=torch.long)
    out[:, :, 0] = markers
    out[:, :, 1:] = g.reshape(n, four, h * w)
    return out.reshape(n, -1)


def validate_tokens(tokens: torch.Tensor | np.ndarray, height: int = 10, width: int = 10) -> None:
    """Raise TokenError unless `tokens` is an integer [n, 4 * (1 + H*W)] batch of valid tokens."""
    shape = tuple(tokens.shape)
    expected = quiz_length(height, width)
    if len(shape) != 2 or shape[1] != expected:
        raise TokenError(
            f"tokens must have shape [n, {expected}] for {height}x{width} grids, got {list(shape)}"
        )
    t = torch.as_tensor(tokens)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TokenError(f"tokens must be integers, got dtype {t.dtype}")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= VOCAB_SIZE):
        raise TokenError(
            f"tokens must lie in 0..{VOCAB_SIZE - 1}, "
            f"got values from {int(t.min())} to {int(t.max())}"
        )
    body = t.reshape(shape[0], 4, 1 + height * width)
    if body.numel() and int(body[:, :, 1:].max()) >= N_COLORS:
        raise TokenError("grid cells must be colours 0..10; a marker token (11..14) sits in a grid")
    if body.numel() and int(body[:, :, 0].min()) < N_COLORS:
        raise TokenError("every grid must start with a marker token (11..14)")


def tokens_to_grids(
    tokens: torch.Tensor | np.ndarray, height: int = 10, width: int = 10
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Split tokens [n, L] into grids [n, 4, H, W] (as stored) and the order of the first quiz.

    Raises TokenError when the quizzes of the batch do not all share one order.
    """
    validate_tokens(tokens, height, width)
    t = torch.as_tensor(tokens).cpu().numpy().reshape(len(tokens), 4, 1 + height * width)
    markers = t[:, :, 0]
    if len(t) and (markers != markers[:1]).any():
        raise TokenError("the quizzes of a batch use different structures (marker orders)")
    order = tuple(TOKEN_TO_GRID[int(m)] for m in markers[0]) if len(t) else GRID_NAMES
    return t[:, :, 1:].reshape(len(t), 4, height, width).astype(np.int64), order
