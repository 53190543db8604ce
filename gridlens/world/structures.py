"""Quiz structures (the order of the four grids) and prompt noise, as in Fleuret's quiz machine."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gridlens.errors import TokenError, unknown_name
from gridlens.world.tokens import GRID_NAMES, MARKER_TOKENS, N_COLORS, validate_tokens


@dataclass(frozen=True)
class Structure:
    """An ordering of the four grids; `predicted` flags the grids a model must produce."""

    name: str
    order: tuple[str, str, str, str]
    predicted: tuple[int, int, int, int]
    noise_mask: tuple[int, int, int, int]

    @property
    def permutation(self) -> list[int]:
        """Canonical grid index (A, f_A, B, f_B) stored in each slot of this structure."""
        return [GRID_NAMES.index(g) for g in self.order]


STRUCTURES: dict[str, Structure] = {
    s.name: s
    for s in (
        Structure("forward", ("A", "f_A", "B", "f_B"), (0, 0, 0, 1), (0, 0, 1, 0)),
        Structure("inverse", ("f_A", "A", "f_B", "B"), (0, 0, 0, 1), (0, 0, 1, 0)),
        Structure("backward", ("B", "f_B", "A", "f_A"), (0, 0, 0, 1), (0, 0, 0, 0)),
        Structure("backward_inverse", ("f_B", "B", "f_A", "A"), (0, 0, 0, 1), (0, 0, 0, 0)),
        Structure("generation", ("f_B", "f_A", "A", "B"), (0, 1, 1, 1), (0, 0, 0, 0)),
    )
}
STRUCTURE_NAMES: tuple[str, ...] = tuple(STRUCTURES)
TRAINING_STRUCTURES: tuple[str, ...] = STRUCTURE_NAMES
"""The original training mixes all five structures uniformly."""


def get_structure(name: str) -> Structure:
    if name not in STRUCTURES:
        raise unknown_name("structure", name, STRUCTURE_NAMES)
    return STRUCTURES[name]


def structure_of_order(order: tuple[str, ...]) -> Structure:
    """The structure whose grid order is `order` (markers read from tokens)."""
    for s in STRUCTURES.values():
        if s.order == tuple(order):
            return s
    raise unknown_name(
        "structure order", "/".join(order), ["/".join(s.order) for s in STRUCTURES.values()]
    )


def reorder(grids: np.ndarray, structure: Structure) -> np.ndarray:
    """Canonical grids [n, 4, H, W] (A, f_A, B, f_B) to the slot order of `structure`."""
    return grids[:, structure.permutation]


def to_canonical(grids: np.ndarray, structure: Structure) -> np.ndarray:
    """Inverse of `reorder`: grids stored in `structure` order back to (A, f_A, B, f_B)."""
    out = np.empty_like(grids)
    out[:, structure.permutation] = grids
    return out


def noise_cells(
    rng: np.random.Generator, n: int, structure: Structure, height: int, width: int, p: float
) -> tuple[np.ndarray, np.ndarray]:
    """Which slot cells get prompt noise and their random colours, both [n, 4, H, W].

    With probability p each cell of a noise-masked slot (the third grid of the forward and
    inverse structures) is replaced by a uniformly random colour 0..10, which may equal the
    original colour, exactly as the original code does.
    """
    slots = np.asarray(structure.noise_mask, dtype=bool)[None, :, None, None]
    hit = (rng.random((n, 4, height, width)) < p) & slots
    colours = rng.integers(0, N_COLORS, size=(n, 4, height, width))
    return hit, colours


def to_forward_tokens(tokens: torch.Tensor, height: int = 10, width: int = 10) -> torch.Tensor:
    """Reorder each quiz's grids to (A, f_A, B, f_B) using its own markers (quizzes of a batch
    may have different structures), like the original `reconfigure`."""
    validate_tokens(tokens, height, width)
    t = torch.as_tensor(tokens).long().reshape(len(tokens), 4, 1 + height * width)
    markers = t[:, :, 0]
    want = torch.tensor([MARKER_TOKENS[g] for g in GRID_NAMES], device=t.device)
    if not (markers.sort(dim=1).values == want).all():
        raise TokenError("every quiz must hold the four markers A, f_A, B, f_B once each")
    slot = (markers[:, None, :] == want[None, :, None]).float().argmax(-1)  # [n, 4]
    return torch.gather(t, 1, slot[:, :, None].expand_as(t)).reshape(len(tokens), -1)
