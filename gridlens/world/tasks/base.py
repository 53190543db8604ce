"""What a task is: a vectorised generator of (A, f_A, B, f_B) grids with ground truth, and a
checker that decides whether given grids are a valid instance of the rule."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from gridlens.errors import GridSizeError
from gridlens.world import shapes


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
    room_for: int = 0
    """Disjoint 3x3 rectangles every grid must hold (0: no such check); see shapes.check_room."""

    def validate_size(self, height: int, width: int) -> None:
        if height < self.min_height or width < self.min_width:
            raise GridSizeError(
                f"task {self.name!r} needs grids of at least {self.min_height}x{self.min_width}, "
                f"got {height}x{width}"
            )
        if self.room_for:
            shapes.check_room(self.name, height, width, self.room_for)

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


def recolour_unused(
    sample: TaskSample, rng: np.random.Generator, grid: int, colour: int
) -> np.ndarray:
    """[n, H, W] grid `grid` of each quiz with its colour `params["colors"][:, colour]` replaced
    by a random colour the quiz does not use: an other_parameters answer for tasks whose only
    shared parameter a wrong f(B) can change is a colour."""
    colours = sample.params["colors"]
    n = len(colours)
    unused = np.ones((n, 11), dtype=bool)
    unused[:, 0] = False
    unused[np.arange(n)[:, None], colours] = False
    pick = np.argmax(rng.random((n, 11)) * unused, axis=1)
    g = sample.grids[:, grid]
    return np.where(g == colours[:, colour, None, None], pick[:, None, None], g)


RECTANGLE_LABELS = (np.array([0, 1, 1, 2], dtype=np.int8), np.array([-1, 0, 1, 2], dtype=np.int8))
"""(roles, objects) of labels 0..3 when rectangles 1 and 2 are static and the last changes."""


def labelled_sample(
    labels: np.ndarray,
    colours: np.ndarray,
    luts: tuple[np.ndarray, np.ndarray],
    rects: np.ndarray,
    **params: np.ndarray,
) -> TaskSample:
    """The TaskSample of a rectangle task drawn as uint8 labels [n, 4, H, W] (0 background,
    k + 1 colours[:, k]): roles and objects looked up per label in luts, params `colors`, the
    given ones, then `rects_A` / `rects_B` from each pair's rectangles rects [n, 2, k, 4]."""
    role_of_label, object_of_label = luts
    return TaskSample(
        grids=shapes.colour_labels(labels, colours),
        params={"colors": colours, **params, "rects_A": rects[:, 0], "rects_B": rects[:, 1]},
        objects=object_of_label[labels],
        roles=role_of_label[labels],
    )
