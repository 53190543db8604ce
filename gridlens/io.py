"""File-system helpers shared by every writer of checkpoints, datasets, figures and reports."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import click

from gridlens.errors import OutputError

T = TypeVar("T")

#: Less free space than this where an output goes is treated as a full disk.
MIN_FREE_BYTES = 16 * 2**20


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Write a file through `write(binary_handle)` into a temporary file beside it, then rename
    it into place: readers see the old file or the whole new one, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_directory(path: str | os.PathLike, fill: Callable[[Path], object]) -> Path:
    """Build a directory through `fill(staging_dir)` beside `path`, then swap it into place with
    renames: readers see the old directory or the whole new one, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700; give the usual permissions
        fill(staging)
        for f in staging.iterdir():
            if f.is_file():
                os.chmod(f, 0o666 & ~_umask())
                with open(f, "rb") as handle:
                    os.fsync(handle.fileno())
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            old.rmdir()
            os.replace(path, old)
            os.replace(staging, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor or ".")


def check_writable(path: str | os.PathLike, kind: str = "file") -> Path:
    """Raise OutputError now, before any long work, if `path` (a "file", a "dir" or "any" of
    the two, that a command will write) cannot be created: a non-folder on the way, a folder
    we may not write in, a full disk. Creates nothing (a probe file is made and removed)."""
    if str(path).strip() == "":
        raise OutputError("an empty output path; name a file or folder")
    path = Path(path).absolute()
    if path.exists() and kind != "any" and path.is_dir() != (kind == "dir"):
        raise OutputError(f"{path}: exists and is not a {'folder' if kind == 'dir' else 'file'}")
    where = path if kind == "dir" and path.is_dir() else _nearest_existing(path.parent)
    if not where.is_dir():
        raise OutputError(f"{path}: cannot be created, {where} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".gridlens-probe.", dir=where)
        os.close(fd)
        os.unlink(probe)
        free = shutil.disk_usage(where).free
    except OSError as error:
        raise OutputError(f"{path}: cannot write in {where} ({error.strerror or error})") from None
    if free < MIN_FREE_BYTES:
        raise OutputError(f"{path}: the disk is full ({free // 2**20} MiB free in {where})")
    return path


class OutputPath(click.ParamType):
    """A click parameter for a file or folder a command writes: checked by `check_writable`
    when the command line is parsed, so a bad location fails before any work."""

    name = "path"

    def __init__(self, kind: str = "file"):
        self.kind = kind

    def convert(self, value: Any, param: Any, ctx: Any) -> str:
        try:
            check_writable(value, self.kind)
        except OutputError as error:
            self.fail(str(error), param, ctx)
        return str(value)


def save_or_rescue(write: Callable[[Callable[[Path], Path]], T], what: str) -> T:
    """Run `write(place)`, which writes each of its outputs to `place(path)`, with `place` the
    identity; if that fails (a disk that filled up, a folder removed meanwhile), write the
    outputs again into one new temporary folder and raise OutputError naming it, so finished
    results are never lost."""
    try:
        return write(Path)
    except OSError as error:
        spare = Path(tempfile.mkdtemp(prefix="gridlens-rescued-"))
        write(lambda path: spare / Path(path).name)
        where = f"{error.filename}: " if error.filename else ""
        raise OutputError(
            f"could not write the {what} ({where}{error.strerror or error}); "
            f"they were saved to {spare} instead"
        ) from None
