"""Lazy package exports (PEP 562): a package's `__init__` names what it exports and where each
name lives, and a submodule is imported only when one of its names is first used. So
`import gridlens.analysis` (and every `gridlens ... --help`) stays fast and never imports torch
or an optional dependency that the caller does not use."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from types import ModuleType


class LazyPackage(ModuleType):
    """A package whose exported function may share its name with the submodule defining it
    (`gridlens.world.generate`): importing that submodule must not replace the function, as it
    would not in an `__init__` that imported the function eagerly."""

    def __setattr__(self, name: str, value) -> None:
        exported = self.__dict__.get("_EXPORTS", {})
        if isinstance(value, ModuleType) and exported.get(name) == name:
            return
        super().__setattr__(name, value)


def lazy_exports(package: str, names: dict[str, str]) -> tuple[Callable, Callable]:
    """The module-level `__getattr__` and `__dir__` of `package`, whose public `names` map
    each exported name to the submodule (relative to `package`) that defines it."""
    sys.modules[package].__class__ = LazyPackage

    def __getattr__(name: str):
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{names[name]}"), name)
        setattr(sys.modules[package], name, value)  # later look-ups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(names))

    return __getattr__, __dir__
