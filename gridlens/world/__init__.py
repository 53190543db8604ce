"""The culture grid world: tokens, tasks, quiz structures, generation, checking and rendering."""

from gridlens.world.generate import QuizBatch, check, generate
from gridlens.world.structures import STRUCTURE_NAMES, STRUCTURES, Structure
from gridlens.world.tasks import DEFAULT_TASKS, TASKS, get_task
from gridlens.world.tokens import (
    GRID_NAMES,
    MARKER_TOKENS,
    N_COLORS,
    VOCAB_SIZE,
    grids_to_tokens,
    quiz_length,
    tokens_to_grids,
)

__all__ = [
    "DEFAULT_TASKS",
    "GRID_NAMES",
    "MARKER_TOKENS",
    "N_COLORS",
    "STRUCTURES",
    "STRUCTURE_NAMES",
    "TASKS",
    "VOCAB_SIZE",
    "QuizBatch",
    "Structure",
    "check",
    "generate",
    "get_task",
    "grids_to_tokens",
    "quiz_length",
    "tokens_to_grids",
]
