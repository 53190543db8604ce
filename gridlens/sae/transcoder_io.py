"""Saving and loading transcoders: SAELens 6's format where SAELens has the architecture.

A saved transcoder is a directory with `cfg.json` and `sae_weights.safetensors`, like an SAE
(gridlens.sae.io). ReLU and JumpReLU transcoders, with or without the skip connection, are
written as SAELens 6 writes its own, so `sae_lens.SAE.load_from_disk` reads them and we read
SAELens's:

    relu -> "transcoder", relu + skip -> "skip_transcoder",
    jumprelu -> "jumprelu_transcoder", jumprelu + skip -> "jumprelu_skip_transcoder";
    weights W_enc [d_in, d_sae], b_enc, W_dec [d_sae, d_out], b_dec [d_out], threshold [d_sae]
    (jumprelu), W_skip [d_out, d_in] (SAELens's orientation: ours is its transpose);
    apply_b_dec_to_input false (b_dec is in output space); the sites in `metadata.hook_name`
    and `metadata.hook_name_out`; our full config and training record in `metadata.gridlens`.

SAELens's JumpReLU is relu(pre) * (pre > threshold), ours pre * (pre > threshold): they agree
iff threshold >= 0, so saving refuses negative thresholds and loading clamps them at 0 (which
reproduces SAELens's output exactly). SAELens 6 has no TopK or BatchTopK transcoder: those are
written in our own format (`format` "gridlens.transcoder" at the top of cfg.json, with a note
saying so), which only gridlens reads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from gridlens.errors import CheckpointError, ConfigError
from gridlens.integrity import seal_safetensors
from gridlens.io import atomic_directory, atomic_write
from gridlens.sae.io import (
    _DTYPES,
    _check_state,
    _dtype_name,
    _major,
    _read_weights,
    _sae_lens_version,
    read_sae_cfg,
)
from gridlens.sae.transcoder import Transcoder, TranscoderConfig

FORMAT_NAME = "gridlens.transcoder"
FORMAT_VERSION = 1
CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
OWN_FORMAT_NOTE = (
    "gridlens's own transcoder format: SAELens 6 has no TopK/BatchTopK transcoder, so this "
    "file is read by gridlens.sae.load_transcoder only"
)
TO_SAE_LENS = {
    ("relu", False): "transcoder",
    ("relu", True): "skip_transcoder",
    ("jumprelu", False): "jumprelu_transcoder",
    ("jumprelu", True): "jumprelu_skip_transcoder",
}
FROM_SAE_LENS = {name: key for key, name in TO_SAE_LENS.items()}


def save_transcoder(
    tc: Transcoder,
    path: str | os.PathLike,
    training: dict[str, Any] | None = None,
    *,
    model_name: str = "gridlens-gridgpt",
) -> Path:
    """Write cfg.json and sae_weights.safetensors into `path` (SAELens's format for relu and
    jumprelu, ours for topk and batchtopk), atomically as save_sae does: a new directory appears
    whole; in an existing one each file is replaced whole, weights first."""
    cfg = tc.cfg
    names = ["W_enc", "b_enc", "W_dec", "b_dec"] + (["W_skip"] if cfg.skip else [])
    if cfg.architecture in ("jumprelu", "batchtopk"):
        names.append("threshold")
    state = {name: getattr(tc, name).detach().cpu().clone() for name in names}
    for name, value in state.items():
        if not torch.isfinite(value).all():
            raise ConfigError(f"transcoder parameter {name!r} contains NaN or infinite values")
    ours = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "config": cfg.to_dict()}
    ours["training"] = training or {}
    if (cfg.architecture, cfg.skip) in TO_SAE_LENS:
        meta = _sae_lens_cfg(cfg, state, ours, model_name)
    else:
        meta = {**ours, "note": OWN_FORMAT_NOTE}
    try:
        text = (json.dumps(meta, indent=2, allow_nan=False) + "\n").encode()
    except (TypeError, ValueError) as error:
        raise ConfigError(f"the training record is not plain JSON: {error}") from None
    blob = seal_safetensors({name: value.contiguous() for name, value in state.items()})
    return _write(Path(path), blob, text)


def _sae_lens_cfg(
    cfg: TranscoderConfig, state: dict[str, torch.Tensor], ours: dict[str, Any], model_name: str
) -> dict[str, Any]:
    """SAELens's cfg.json fields; turns `state` into SAELens's weights (W_skip transposed)."""
    if cfg.architecture == "jumprelu" and (state["threshold"] < 0).any():
        raise ConfigError(
            f"{int((state['threshold'] < 0).sum())} JumpReLU threshold(s) are negative; SAELens "
            "computes relu(pre) * (pre > threshold), which differs from ours below 0"
        )
    if cfg.skip:
        state["W_skip"] = state["W_skip"].T
    metadata = {
        "sae_lens_version": _sae_lens_version(),
        "sae_lens_training_version": None,
        "model_name": model_name,
        "hook_name": cfg.hook_name,
        "hook_name_out": cfg.target_hook_name,
        "hook_head_index": None,
        "hook_head_index_out": None,
        "context_size": 404,
        "prepend_bos": False,
        "gridlens": ours,
    }
    return {
        "architecture": TO_SAE_LENS[cfg.architecture, cfg.skip],
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "d_out": cfg.d_out,
        "dtype": _dtype_name(state["W_enc"].dtype),
        "device": "cpu",
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": metadata,
    }


def _write(path: Path, blob: bytes, text: bytes) -> Path:
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"{path}: exists and is not a directory")
    if path.exists():  # a training run's folder: replace our two files, keep the others
        atomic_write(path / WEIGHTS_FILE, lambda handle: handle.write(blob))
        atomic_write(path / CFG_FILE, lambda handle: handle.write(text))
        return path

    def fill(staging: Path) -> None:
        (staging / WEIGHTS_FILE).write_bytes(blob)
        (staging / CFG_FILE).write_bytes(text)

    atomic_directory(path, fill)
    return path


def is_transcoder_dir(path: str | os.PathLike) -> bool:
    """Whether `path` holds a saved transcoder (ours or SAELens's), not an SAE."""
    try:
        data = json.loads((Path(path) / CFG_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and (
        data.get("format") == FORMAT_NAME or data.get("architecture") in FROM_SAE_LENS
    )


def load_transcoder(
    path: str | os.PathLike,
    device: str | torch.device | None = None,
    *,
    hook_name: str | None = None,
    target_hook_name: str | None = None,
) -> Transcoder:
    """A transcoder (eval mode) from a directory written by `save_transcoder` or by SAELens 6.

    hook_name, target_hook_name: the sites, for SAELens files whose metadata names none."""
    directory = Path(path)
    data = read_sae_cfg(directory)
    if data.get("format") == FORMAT_NAME:
        tc = _load_own(data, directory)
    elif data.get("architecture") in FROM_SAE_LENS:
        tc = _load_sae_lens(data, directory, hook_name, target_hook_name)
    else:
        raise CheckpointError(
            f"{directory / CFG_FILE}: not a transcoder (field 'format' is not {FORMAT_NAME!r} "
            f"and field 'architecture' is not one of {sorted(FROM_SAE_LENS)})"
        )
    if device is not None:
        tc.to(device)
    return tc.eval()


def _load_own(meta: dict[str, Any], directory: Path) -> Transcoder:
    cfg_path = directory / CFG_FILE
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{cfg_path}: field 'format_version' is {meta.get('format_version')!r}, "
            f"this gridlens reads {FORMAT_VERSION}"
        )
    try:
        cfg = TranscoderConfig.from_dict(meta.get("config") or {})
    except (ConfigError, TypeError) as error:
        raise CheckpointError(f"{cfg_path}: field 'config': {error}") from None
    tc = Transcoder(cfg)
    state = _read_weights(directory / WEIGHTS_FILE)
    shapes = {name: tuple(p.shape) for name, p in tc.state_dict().items()}
    _check_state(state, shapes, directory / WEIGHTS_FILE)
    tc.load_state_dict(state)
    return tc


def _load_sae_lens(
    data: dict[str, Any], directory: Path, hook_name: str | None, target_hook_name: str | None
) -> Transcoder:
    cfg_path = directory / CFG_FILE
    meta = data.get("metadata") or {}
    version = meta.get("sae_lens_version") or data.get("sae_lens_version")
    if _major(version) < 6:
        raise CheckpointError(
            f"{cfg_path}: field 'metadata.sae_lens_version' is {version!r}; transcoders are "
            "read in the SAELens >= 6.0 format"
        )
    for name, want in (("apply_b_dec_to_input", False), ("normalize_activations", "none"),
                       ("reshape_activations", "none")):  # fmt: skip
        if data.get(name, want) != want:
            raise CheckpointError(
                f"{cfg_path}: field {name!r} is {data[name]!r}; gridlens transcoders need {want!r}"
            )
    dtype = str(data.get("dtype", "float32")).removeprefix("torch.")
    if dtype not in _DTYPES:
        raise CheckpointError(f"{cfg_path}: field 'dtype' is {dtype!r}, one of {sorted(_DTYPES)}")
    cfg = _sae_lens_config(data, meta, cfg_path, hook_name, target_hook_name)
    state = _read_weights(directory / WEIGHTS_FILE)
    shapes = {"W_enc": (cfg.d_in, cfg.d_sae), "b_enc": (cfg.d_sae,),
              "W_dec": (cfg.d_sae, cfg.d_out), "b_dec": (cfg.d_out,)}  # fmt: skip
    if cfg.skip:
        shapes["W_skip"] = (cfg.d_out, cfg.d_in)
    if cfg.architecture == "jumprelu":
        shapes["threshold"] = (cfg.d_sae,)
    _check_state(state, shapes, directory / WEIGHTS_FILE)
    if cfg.skip:
        state["W_skip"] = state["W_skip"].T.contiguous()
    if cfg.architecture == "jumprelu":
        state["threshold"] = state["threshold"].clamp_min(0.0)
    tc = Transcoder(cfg).to(_DTYPES[dtype])
    tc.load_state_dict(state)
    return tc


def _sae_lens_config(
    data: dict[str, Any],
    meta: dict[str, Any],
    cfg_path: Path,
    hook_name: str | None,
    target_hook_name: str | None,
) -> TranscoderConfig:
    """Our config: SAELens's fields, checked against metadata.gridlens.config when we wrote it."""
    architecture, skip = FROM_SAE_LENS[data["architecture"]]
    sizes = {}
    for name in ("d_in", "d_sae", "d_out"):
        value = data.get(name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise CheckpointError(f"{cfg_path}: field {name!r} is {value!r}, expected an integer")
        sizes[name] = value
    source = meta.get("hook_name") or hook_name
    target = meta.get("hook_name_out") or target_hook_name
    if not isinstance(source, str) or not isinstance(target, str):
        raise CheckpointError(
            f"{cfg_path}: missing field 'metadata.hook_name' or 'metadata.hook_name_out' "
            "(pass hook_name=... and target_hook_name=... to load_transcoder)"
        )
    fields = {"architecture": architecture, "skip": skip, "hook_name": source,
              "target_hook_name": target, **sizes}  # fmt: skip
    ours = (meta.get("gridlens") or {}).get("config")
    try:
        if ours is None:
            return TranscoderConfig(**fields)
        cfg = TranscoderConfig.from_dict(ours)
    except (ConfigError, TypeError) as error:
        raise CheckpointError(f"{cfg_path}: {error}") from None
    for name, value in fields.items():
        if getattr(cfg, name) != value:
            raise CheckpointError(
                f"{cfg_path}: metadata.gridlens.config {name}={getattr(cfg, name)!r} disagrees "
                f"with the SAELens fields ({value!r})"
            )
    return cfg


def layer_dir(root: str | os.PathLike, layer: int) -> Path:
    """Where `gridlens sae transcoder` keeps the transcoder of block `layer`."""
    return Path(root) / f"layer_{layer}"


def load_transcoders(
    root: str | os.PathLike, device: str | torch.device | None = None
) -> dict[int, Transcoder]:
    """The transcoders in `root`'s layer_L folders, by layer."""
    root = Path(root)
    if not root.is_dir():
        raise CheckpointError(f"{root}: no such transcoder folder")
    found = {}
    for folder in sorted(root.glob("layer_*")):
        suffix = folder.name.removeprefix("layer_")
        if suffix.isdigit() and is_transcoder_dir(folder):
            found[int(suffix)] = load_transcoder(folder, device)
    if not found:
        raise CheckpointError(f"{root}: holds no layer_L transcoder folders")
    return found
