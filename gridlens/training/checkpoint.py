"""Training checkpoints: atomic, loadable with torch.load(weights_only=True), the last K kept.

A checkpoint `RUN/checkpoints/step_00001234.pt` holds a dict of tensors and plain values:
format/version, the training config (a dict), step (= data position: the next batch to draw),
model and optimiser state dicts, the scheduler state, RNG states and the metrics so far.

The payload carries the sha256 of its contents (`gridlens.integrity.seal_payload`), checked on
load. Writing goes to a temporary file beside the target, is fsynced, then renamed into place, so a
crash or a full disk (OSError) never leaves a partial checkpoint and never touches the older
ones; old checkpoints are pruned only after the new one is safely in place.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from gridlens.errors import CheckpointError
from gridlens.integrity import load_pickle, seal_payload, verify_payload
from gridlens.io import atomic_write

FORMAT = "gridlens.train_state"
VERSION = 1
_NAME = re.compile(r"^step_(\d{8})\.pt$")


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return checkpoint_dir(run_dir) / f"step_{step:08d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoints of a run, oldest first."""
    d = checkpoint_dir(run_dir)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if _NAME.match(p.name))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def save_checkpoint(state: dict[str, Any], run_dir: str | Path, step: int, keep: int = 3) -> Path:
    """Write `state` as the checkpoint of `step` atomically, then keep only the newest `keep`."""
    path = checkpoint_path(run_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = seal_payload({"format": FORMAT, "version": VERSION, **state})
    try:
        atomic_write(path, lambda handle: torch.save(payload, handle))
    except OSError as error:
        last = [p for p in list_checkpoints(run_dir) if p != path]
        kept = f"; the last good checkpoint {last[-1]} is intact" if last else ""
        raise CheckpointError(
            f"{path}: could not write the checkpoint ({error.strerror or error}){kept}"
        ) from error
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def restore(module: torch.nn.Module, optimizer: Any, state: dict[str, Any], what: str) -> None:
    """Load a checkpoint's "model" and "optimizer" entries; a mismatch is a CheckpointError."""
    try:
        module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as error:
        raise CheckpointError(f"checkpoint does not fit the {what}: {error}") from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint safely (weights-only, to the CPU, checksum verified); a damaged or
    foreign file is a clear error."""
    p = Path(path)
    try:
        state = load_pickle(p, "checkpoint")
    except CheckpointError as error:
        others = [q for q in list_checkpoints(p.parent.parent) if q != p] if p.is_file() else []
        hint = f"; an older one is {others[-1]} (pass it to --resume-from)" if others else ""
        raise CheckpointError(f"{error}{hint}") from None
    check_checkpoint(state, p)
    return state


def is_checkpoint(obj: Any) -> bool:
    """Whether a loaded pickle is (or claims to be) a gridlens training checkpoint."""
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def check_checkpoint(state: Any, p: Path) -> None:
    """Raise CheckpointError unless `state` is an intact training checkpoint of this version."""
    if not is_checkpoint(state):
        raise CheckpointError(
            f"{p}: not a gridlens training checkpoint (format {FORMAT!r} expected)"
        )
    if state.get("version") != VERSION:
        raise CheckpointError(
            f"{p}: training checkpoint version {state.get('version')!r}; "
            f"this gridlens reads {VERSION}"
        )
    for key in ("config", "step", "model", "optimizer"):
        if key not in state:
            raise CheckpointError(f"{p}: checkpoint lacks the field {key!r}")
    verify_payload(state, p)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
