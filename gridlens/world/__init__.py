"""The culture grid world: tokens, tasks, quiz structures, generation, checking and rendering."""

from gridlens.lazy import lazy_exports

_EXPORTS = {
    "DEFAULT_TASKS": "tasks",
    "GRID_NAMES": "tokens",
    "MARKER_TOKENS": "tokens",
    "N_COLORS": "tokens",
    "QuizBatch": "generate",
    "STRUCTURES": "structures",
    "STRUCTURE_NAMES": "structures",
    "Structure": "structures",
    "TASKS": "tasks",
    "VOCAB_SIZE": "tokens",
    "check": "generate",
    "generate": "generate",
    "get_task": "tasks",
    "grids_to_tokens": "tokens",
    "quiz_length": "tokens",
    "tokens_to_grids": "tokens",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
