"""The registry of the 15 tasks of Fleuret's grid world; task modules load on first use."""

from __future__ import annotations

import importlib
from functools import cache

from gridlens.errors import unknown_name
from gridlens.world.tasks.base import Task, TaskSample

TASKS: tuple[str, ...] = (
    "replace_color",
    "translate",
    "grow",
    "half_fill",
    "frame",
    "detect",
    "scale",
    "symbols",
    "corners",
    "contact",
    "path",
    "fill",
    "isometry",
    "trajectory",
    "bounce",
)
"""All tasks, in the order of the original `Grids.all_tasks`."""

DEFAULT_TASKS: tuple[str, ...] = (
    "replace_color",
    "translate",
    "grow",
    "half_fill",
    "frame",
    "detect",
    "corners",
    "contact",
)
"""The eight tasks the released culture models were trained on."""


@cache
def get_task(name: str) -> Task:
    """The task object for `name` (module gridlens.world.tasks.<name>, attribute TASK)."""
    if name not in TASKS:
        raise unknown_name("task", name, TASKS)
    return importlib.import_module(f"gridlens.world.tasks.{name}").TASK


def resolve_tasks(tasks: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """Normalise a task selection: None or "all" -> every task, "default" -> the eight, a
    comma-separated string or a sequence of names -> those, validated."""
    if tasks is None or tasks == "all":
        return TASKS
    if tasks == "default":
        return DEFAULT_TASKS
    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else list(tasks)
    names = [t for t in names if t]
    if not names:
        raise unknown_name("task", "", TASKS)
    for t in names:
        if t not in TASKS:
            raise unknown_name("task", t, TASKS)
    return tuple(dict.fromkeys(names))


__all__ = ["DEFAULT_TASKS", "TASKS", "Task", "TaskSample", "get_task", "resolve_tasks"]
