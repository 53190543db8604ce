"""What a task is: a vectorised generator of (A, f_A, B, f_B) grids with ground truth, and a
checker that decides whether given grids are a valid instance of the rule."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from gridlens.errors import GridSizeError


@dataclass
class TaskSample:
    """A batch of quizzes of one task, in canonical order (A, f_A, B, f_B).

    grids:   [n, 4, H, W] int64 colours.
    params:  transform parameters and colour choices, each array with leading dimension n.
             Parameters shared by both pairs (the rule) and per-pair ones are both included.
    objects: [n, 4, H, W] int8; -1 for background, else the index of the object the cell
             belongs to (the same object keeps its index in X and f(X)).
    roles:   [n, 4, H, W] int8; index into the task's `roles` (0 is always "background").
    """

    grids: np.ndarray
    params: dict[str, np.ndarray] = field(default_factory=dict)
    objects: np.ndarray | None = None
    roles: np.ndarray | None = None


class Task(ABC):
    """A grid-world task. Subclasses set the class attributes and implement generate/check."""

    name: str
    roles: tuple[str, ...] = ("background",)
    min_height: int = 10
    min_width: int = 10
    description: str = ""

    def validate_size(self, height: int, width: int) -> None:
        if height < self.min_height or width < self.min_width:
            raise GridSizeError(
                f"task {self.name!r} needs grids of at least {self.min_height}x{self.min_width}, "
                f"got {height}x{width}"
            )

    @abstractmethod
    def generate(
        self, n: int, rng: np.random.Generator, height: int = 10, width: int = 10
    ) -> TaskSample:
        """n quizzes drawn with `rng`; must never loop forever (use shapes.rejection_sample)."""

    @abstractmethod
    def check(self, grids: np.ndarray) -> np.ndarray:
        """[n] bool: is each quiz [n, 4, H, W] (A, f_A, B, f_B) a valid instance of this task,
        both pairs following the rule with shared parameters?"""

    @abstractmethod
    def other_parameters(self, sample: TaskSample, rng: np.random.Generator) -> np.ndarray:
        """[n, H, W] a wrong f(B) for each quiz of `sample`: B transformed by the same rule with
        other shared parameters than the worked example's (another colour, direction, side,
        ...). Tests use it to show the checker enforces shared parameters; rows where the
        result equals the true f(B) are ignored."""
