"""Reading files that may be damaged or hostile: weights-only unpickling and sha256 checksums.

Every `.pt`/`.pth` file is read with `torch.load(weights_only=True)` through `load_pickle`, so a
pickle can never run code; a refused or unreadable one is a one-line `GridlensError`.

Tensor files gridlens writes carry a sha256 of their tensor data, checked on every load:
- safetensors files (models, SAEs, culture rounds, ground-truth runs): the sha256 of the data
  section (everything after the JSON header) in the header's metadata, key `sha256`;
- pickled training states (`.pt`): the sha256 of the whole payload (`payload_digest`) in the
  payload's own `sha256` entry.
Files written before checksums existed (or by other tools) have none and load unchecked.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

from gridlens.errors import CheckpointError, GridlensError

CHECKSUM_KEY = "sha256"


# ----------------------------------------------------------------------------- unpickling


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0][:200] if lines else type(error).__name__


def _refusal(error: pickle.UnpicklingError) -> tuple[str, str]:
    """(the global the pickle wanted, or "", the opcode torch's weights-only unpickler refused):
    what it objected to, without its advice on how to load the file unsafely."""
    text = str(error)
    wanted = re.search(r"GLOBAL ([\w.]+)", text)
    opcode = re.search(r"Unsupported operand \d+", text)
    return (wanted.group(1) if wanted else "", opcode.group(0) if opcode else "a foreign pickle")


def load_pickle(
    path: str | Path, what: str = "checkpoint", error: type[GridlensError] = CheckpointError
) -> Any:
    """`torch.load(path, weights_only=True)` on the CPU; a pickle that would run code or build
    arbitrary objects, and a garbage, truncated or missing file, raise `error` in one line."""
    import torch

    p = Path(path)
    if not p.is_file():
        found = "a directory" if p.is_dir() else "no such file"
        raise error(f"{p}: {found} (expected a {what})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about unusual pickle protocols
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as refused:
        if "Weights only load failed" not in str(refused):
            raise error(f"{p}: corrupted or unreadable {what} ({_first_line(refused)})") from None
        wanted, opcode = _refusal(refused)
        if not wanted:  # an opcode the safe unpickler does not know: garbage
            raise error(f"{p}: corrupted or unreadable {what} (refused: {opcode})") from None
        raise error(
            f"{p}: refused to load: the pickle would call or build {wanted}, not only tensors "
            "(it may be an attempt to run code); gridlens reads pickles weights-only"
        ) from None
    except (EOFError, RuntimeError, zipfile.BadZipFile, ValueError, OSError, LookupError,
            AttributeError, TypeError, UnicodeDecodeError) as damaged:  # fmt: skip
        raise error(
            f"{p}: corrupted or unreadable {what} (truncated or corrupt file? "
            f"{type(damaged).__name__}: {_first_line(damaged)})"
        ) from None


# ----------------------------------------------------------------------------- pickled payloads


def _feed(digest: Any, obj: Any) -> None:
    import torch

    if isinstance(obj, torch.Tensor):
        t = obj.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"T{t.dtype}{tuple(obj.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        digest.update(f"D{len(obj)}".encode())
        for key, value in obj.items():
            _feed(digest, key)
            _feed(digest, value)
    elif isinstance(obj, list | tuple):
        digest.update(f"L{len(obj)}".encode())
        for value in obj:
            _feed(digest, value)
    else:
        digest.update(f"V{obj!r};".encode())


def payload_digest(payload: dict[str, Any]) -> str:
    """sha256 of every tensor and plain value in `payload` but its own checksum entry."""
    digest = hashlib.sha256()
    _feed(digest, {k: v for k, v in payload.items() if k != CHECKSUM_KEY})
    return digest.hexdigest()


def seal_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """`payload` with its checksum added (write it with torch.save)."""
    return {**payload, CHECKSUM_KEY: payload_digest(payload)}


def verify_payload(payload: dict[str, Any], source: str | Path) -> None:
    """Raise CheckpointError if `payload` carries a checksum its contents no longer match."""
    expected = payload.get(CHECKSUM_KEY)
    if expected is not None and payload_digest(payload) != expected:
        raise CheckpointError(
            f"{source}: checksum mismatch: the file was damaged after it was written"
        )


# ----------------------------------------------------------------------------- safetensors


def _split(blob: bytes | memoryview, source: str | Path) -> tuple[dict[str, Any], int]:
    """(header, start of the data section) of a safetensors blob."""
    n = int.from_bytes(bytes(blob[:8]), "little") if len(blob) >= 8 else -1
    try:
        if n < 2 or 8 + n > len(blob):
            raise ValueError("bad header length")
        header = json.loads(bytes(blob[8 : 8 + n]))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
    except (ValueError, UnicodeDecodeError) as error:
        raise CheckpointError(
            f"{source}: not a readable safetensors file (truncated or damaged: {error})"
        ) from None
    return header, 8 + n


def seal_safetensors(state: dict[str, Any], metadata: dict[str, str] | None = None) -> bytes:
    """The safetensors serialisation of `state`, with the sha256 of its data in the metadata."""
    from safetensors.torch import save

    blob = save(state, metadata=metadata)
    header, start = _split(blob, "<memory>")
    data = memoryview(blob)[start:]
    header.setdefault("__metadata__", {})[CHECKSUM_KEY] = hashlib.sha256(data).hexdigest()
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # safetensors keeps the data 8-byte aligned
    return len(text).to_bytes(8, "little") + text + data


def _mismatch(source: str | Path) -> CheckpointError:
    return CheckpointError(
        f"{source}: checksum mismatch: the tensor data were damaged after the file was written"
    )


def verify_safetensors_bytes(blob: bytes, source: str | Path) -> None:
    """Raise CheckpointError if the safetensors `blob` records a checksum it does not match."""
    header, start = _split(blob, source)
    expected = (header.get("__metadata__") or {}).get(CHECKSUM_KEY)
    if expected is not None and hashlib.sha256(memoryview(blob)[start:]).hexdigest() != expected:
        raise _mismatch(source)


def verify_safetensors(path: str | Path) -> None:
    """Raise CheckpointError if the safetensors file at `path` records a checksum it does not
    match (streamed: the file is not held in memory)."""
    with open(path, "rb") as handle:
        head = handle.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else 0
        header, _ = _split(head + handle.read(n if 0 < n < 100_000_000 else 0), path)
        expected = (header.get("__metadata__") or {}).get(CHECKSUM_KEY)
        if expected is not None and hashlib.file_digest(handle, "sha256").hexdigest() != expected:
            raise _mismatch(path)
