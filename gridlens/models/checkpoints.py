"""Loading and saving GridGPT weights.

Formats read by `load(path)`:
- Fleuret's original `gpt_NNN.pth`: `torch.save((state_dict, accuracy))`, keys such as
  `embedding.0.f.0.weight`, `trunk.{2l}.f.1.w_q`, `trunk.{2l+1}.f.f.2.weight`, `readout.f.weight`
  (a bare state dict is accepted too);
- the interpretability fork's layout (one more `.f.` after the first component, e.g.
  `embedding.f.0.f.0.weight`, `trunk.{2l}.f.f.1.w_q`, `readout.f.f.weight`);
- a GridGPT state dict saved with torch.save (keys `embed.weight`, `blocks.{l}.attn.w_q`, ...);
- our format: a directory with `config.json` (format name and version, the config) and
  `model.safetensors`, or a lone `.safetensors` file whose metadata holds the same config.

Pickles are read with torch.load(weights_only=True): a checkpoint can never run code.
The configuration of pickled checkpoints is inferred from the tensor shapes.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from gridlens.errors import CheckpointError, ConfigError, GridlensError
from gridlens.integrity import load_pickle, seal_safetensors, verify_safetensors
from gridlens.io import atomic_directory, atomic_write
from gridlens.models.config import GridGPTConfig

FORMAT_NAME = "gridlens.gridgpt"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
_HUB_ID = re.compile(r"^(hf://)?[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


# ---------------------------------------------------------------------------- key layouts


def _original_to_ours(key: str) -> str | None:
    """Map one original-layout MyGPT key to ours (None when it is not a MyGPT key)."""
    if key == "embedding.0.f.0.weight":
        return "embed.weight"
    m = re.fullmatch(r"readout\.f\.(weight|bias)", key)
    if m:
        return f"unembed.{m.group(1)}"
    m = re.fullmatch(r"trunk\.(\d+)\.(.*)", key)
    if not m:
        return None
    index, rest = int(m.group(1)), m.group(2)
    layer = index // 2
    if index % 2 == 0:
        m2 = re.fullmatch(r"f\.0\.f\.0\.(weight|bias)", rest)
        if m2:
            return f"blocks.{layer}.ln1.{m2.group(1)}"
        m2 = re.fullmatch(r"f\.1\.(w_q|w_k|w_v|w_o)", rest)
        if m2:
            return f"blocks.{layer}.attn.{m2.group(1)}"
        return None
    m2 = re.fullmatch(r"f\.f\.(0|2|4)\.(weight|bias)", rest)
    if m2:
        part = {"0": "ln2", "2": "mlp.fc_in", "4": "mlp.fc_out"}[m2.group(1)]
        return f"blocks.{layer}.{part}.{m2.group(2)}"
    return None


def _fork_to_original(key: str) -> str:
    """Remove the fork's extra `.f` after the first component (embedding, trunk.N, readout)."""
    m = re.fullmatch(r"(embedding|readout|trunk\.\d+)\.f\.(.*)", key)
    return f"{m.group(1)}.{m.group(2)}" if m else key


def detect_layout(state: dict[str, torch.Tensor]) -> str:
    """'gridgpt', 'original' or 'fork'."""
    keys = set(state)
    if "embed.weight" in keys:
        return "gridgpt"
    if "embedding.0.f.0.weight" in keys:
        return "original"
    if "embedding.f.0.f.0.weight" in keys:
        return "fork"
    sample = ", ".join(sorted(keys)[:5])
    raise CheckpointError(
        "not a MyGPT/GridGPT state dict: no embedding key (expected 'embed.weight', "
        f"'embedding.0.f.0.weight' or 'embedding.f.0.f.0.weight'; found {sample}...)"
    )


def convert_state_dict(
    state: dict[str, torch.Tensor], source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """A MyGPT state dict (original or fork layout) in GridGPT's key layout."""
    layout = detect_layout(state)
    if layout == "gridgpt":
        return dict(state)
    out, unexpected = {}, []
    for key, value in state.items():
        if key.startswith(("encoder.", "decoder.")):  # MyGPT's optional autoencoder shares trunk
            continue
        original = _fork_to_original(key) if layout == "fork" else key
        ours = _original_to_ours(original)
        if ours is None:
            unexpected.append(key)
        else:
            out[ours] = value
    if unexpected:
        raise CheckpointError(
            f"{source}: unexpected keys for the {layout} MyGPT layout: {unexpected[:8]}"
        )
    return out


def to_original_state_dict(model, layout: str = "original") -> dict[str, torch.Tensor]:
    """GridGPT weights in MyGPT's key layout ("original" or the interpretability "fork"), e.g.
    to run them with Fleuret's code: `torch.save((to_original_state_dict(m), acc), path)`."""
    if layout not in ("original", "fork"):
        raise ConfigError(f"layout must be 'original' or 'fork', got {layout!r}")
    out = {}
    names = {
        "embed.weight": "embedding.0.f.0.weight",
        "unembed.weight": "readout.f.weight",
        "unembed.bias": "readout.f.bias",
    }
    for key, value in model.state_dict().items():
        m = re.fullmatch(r"blocks\.(\d+)\.(.*)", key)
        if m is None:
            new = names[key]
        else:
            layer, rest = int(m.group(1)), m.group(2)
            attn, mlp = f"trunk.{2 * layer}.f.", f"trunk.{2 * layer + 1}.f.f."
            new = {
                "ln1.weight": attn + "0.f.0.weight",
                "ln1.bias": attn + "0.f.0.bias",
                "attn.w_q": attn + "1.w_q",
                "attn.w_k": attn + "1.w_k",
                "attn.w_v": attn + "1.w_v",
                "attn.w_o": attn + "1.w_o",
                "ln2.weight": mlp + "0.weight",
                "ln2.bias": mlp + "0.bias",
                "mlp.fc_in.weight": mlp + "2.weight",
                "mlp.fc_in.bias": mlp + "2.bias",
                "mlp.fc_out.weight": mlp + "4.weight",
                "mlp.fc_out.bias": mlp + "4.bias",
            }[rest]
        if layout == "fork":
            head, _, tail = (
                new.partition(".")
                if not new.startswith("trunk")
                else (".".join(new.split(".")[:2]), ".", ".".join(new.split(".")[2:]))
            )
            new = f"{head}.f.{tail}"
        out[new] = value.detach().clone()
    return out


def infer_config(
    state: dict[str, torch.Tensor], source: str = "checkpoint", **overrides: Any
) -> GridGPTConfig:
    """The configuration implied by the shapes of a GridGPT-layout state dict."""

    def shape(key: str) -> tuple[int, ...]:
        if key not in state:
            raise CheckpointError(f"{source}: missing key {key!r}")
        return tuple(state[key].shape)

    vocab, d_model = shape("embed.weight")
    layers = sorted({int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
    n_layers = len(layers)
    if layers != list(range(n_layers)):
        raise CheckpointError(f"{source}: block indices are not contiguous: {layers}")
    if n_layers == 0:
        raise CheckpointError(f"{source}: no transformer blocks found")
    n_heads, d_head, _ = shape("blocks.0.attn.w_q")
    d_mlp = shape("blocks.0.mlp.fc_in.weight")[0]
    d_vocab_out = shape("unembed.weight")[0]
    fields = dict(
        vocab_size=vocab,
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        d_head=d_head,
        d_mlp=d_mlp,
        d_vocab_out=d_vocab_out,
    )
    fields.update(overrides)
    try:
        return GridGPTConfig(**fields)
    except ConfigError as error:
        raise CheckpointError(f"{source}: inconsistent shapes: {error}") from None


def expected_shapes(cfg: GridGPTConfig) -> dict[str, tuple[int, ...]]:
    shapes = {
        "embed.weight": (cfg.vocab_size, cfg.d_model),
        "unembed.weight": (cfg.d_vocab_out, cfg.d_model),
        "unembed.bias": (cfg.d_vocab_out,),
    }
    for layer in range(cfg.n_layers):
        b = f"blocks.{layer}."
        shapes.update(
            {
                b + "ln1.weight": (cfg.d_model,),
                b + "ln1.bias": (cfg.d_model,),
                b + "attn.w_q": (cfg.n_heads, cfg.d_head, cfg.d_model),
                b + "attn.w_k": (cfg.n_heads, cfg.d_head, cfg.d_model),
                b + "attn.w_v": (cfg.n_heads, cfg.d_value, cfg.d_model),
                b + "attn.w_o": (cfg.n_heads * cfg.d_value, cfg.d_model),
                b + "ln2.weight": (cfg.d_model,),
                b + "ln2.bias": (cfg.d_model,),
                b + "mlp.fc_in.weight": (cfg.d_mlp, cfg.d_model),
                b + "mlp.fc_in.bias": (cfg.d_mlp,),
                b + "mlp.fc_out.weight": (cfg.d_model, cfg.d_mlp),
                b + "mlp.fc_out.bias": (cfg.d_model,),
            }
        )
    return shapes


def validate_state_dict(state: dict[str, torch.Tensor], cfg: GridGPTConfig, source: str) -> None:
    """Raise CheckpointError naming every missing/unexpected key and the first wrong shape/dtype."""
    shapes = expected_shapes(cfg)
    missing = [k for k in shapes if k not in state]
    unexpected = [k for k in state if k not in shapes]
    if missing:
        raise CheckpointError(
            f"{source}: missing key(s) {missing[:8]}{' ...' if len(missing) > 8 else ''}"
        )
    if unexpected:
        raise CheckpointError(f"{source}: unexpected key(s) {unexpected[:8]}")
    for key, want in shapes.items():
        value = state[key]
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{source}: {key!r} is a {type(value).__name__}, not a tensor")
        if tuple(value.shape) != want:
            raise CheckpointError(
                f"{source}: {key!r} has shape {tuple(value.shape)}, expected {want}"
            )
        if not value.dtype.is_floating_point:
            raise CheckpointError(
                f"{source}: {key!r} has dtype {value.dtype}, expected floating point"
            )
        if not torch.isfinite(value).all():
            raise CheckpointError(f"{source}: {key!r} contains NaN or infinite values")


def from_state_dict(state: dict[str, torch.Tensor], source: str = "state dict", **overrides: Any):
    """A GridGPT from a state dict of any supported layout (config inferred from shapes)."""
    state = convert_state_dict(state, source)
    cfg = infer_config(state, source, **overrides)
    return _build(state, cfg, source)


def _build(state, cfg: GridGPTConfig, source: str):
    from gridlens.models.gpt import GridGPT

    validate_state_dict(state, cfg, source)
    model = GridGPT(cfg, seed=0)
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)
    return model.eval()


# ---------------------------------------------------------------------------- reading


def _state_from_pickle(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, tuple | list) and obj and isinstance(obj[0], dict):
        obj = obj[0]  # (state_dict, accuracy)
    elif isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    elif isinstance(obj, dict) and "model_state" in obj and isinstance(obj["model_state"], dict):
        obj = obj["model_state"]
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise CheckpointError(
            f"{path}: expected a state dict or (state_dict, accuracy), got {type(obj).__name__}"
        )
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entries {bad[:5]} are not tensors")
    return obj


def _read_config_json(path: Path) -> GridGPTConfig:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(
            f"{path}: missing (our format needs {CONFIG_FILE} beside {WEIGHTS_FILE})"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: not valid JSON (truncated?): {error}") from None
    return _config_from_meta(data, str(path))


def _config_from_meta(data: Any, source: str) -> GridGPTConfig:
    if not isinstance(data, dict):
        raise CheckpointError(f"{source}: expected a JSON object")
    if data.get("format") != FORMAT_NAME:
        raise CheckpointError(
            f"{source}: field 'format' is {data.get('format')!r}, expected {FORMAT_NAME!r}"
        )
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{source}: field 'format_version' is {version!r}; this gridlens reads version "
            f"{FORMAT_VERSION}"
        )
    if "config" not in data:
        raise CheckpointError(f"{source}: missing field 'config'")
    try:
        return GridGPTConfig.from_dict(data["config"], f"{source}: field 'config'")
    except ConfigError as error:
        raise CheckpointError(str(error)) from None


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(
            f"{path}: cannot read safetensors (truncated or corrupt file?): {error}"
        ) from None
    verify_safetensors(path)
    return state, meta


def _load_ours(weights: Path, config_path: Path | None):
    state, meta = _read_safetensors(weights)
    meta_cfg = None
    if "gridlens" in meta:
        try:
            meta_cfg = _config_from_meta(json.loads(meta["gridlens"]), f"{weights} (metadata)")
        except json.JSONDecodeError as error:
            raise CheckpointError(
                f"{weights}: metadata 'gridlens' is not valid JSON: {error}"
            ) from None
    if config_path is not None and config_path.exists():
        cfg = _read_config_json(config_path)
        if meta_cfg is not None and meta_cfg != cfg:
            raise CheckpointError(
                f"{config_path} and {weights} disagree ({cfg} vs {meta_cfg}): the directory mixes "
                "two saves"
            )
    elif meta_cfg is not None:
        cfg = meta_cfg
    else:
        raise CheckpointError(
            f"{weights}: no {CONFIG_FILE} beside it and no config in its metadata"
        )
    return _build(state, cfg, str(weights))


def _hub(identifier: str):
    repo = identifier.removeprefix("hf://")
    offline = any(
        os.environ.get(v, "").lower() in ("1", "true", "yes")
        for v in ("HF_HUB_OFFLINE", "GRIDLENS_OFFLINE", "TRANSFORMERS_OFFLINE")
    )
    hint = (
        "download the files (config.json + model.safetensors, or a .pth) and pass the local "
        "directory or file"
    )
    if offline:
        raise CheckpointError(
            f"{identifier!r} is not a local file or directory and looks like a hub identifier; "
            f"the hub cannot be reached (offline mode is set): {hint}"
        )
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(repo, allow_patterns=["*.json", "*.safetensors", "*.pth"])
    except ImportError:
        raise CheckpointError(
            f"{identifier!r} is not a local path and huggingface_hub is not installed: {hint}"
        ) from None
    except Exception as error:  # network, auth, missing repo: one clear line
        raise CheckpointError(
            f"{identifier!r} is not a local path and the hub cannot be reached "
            f"({type(error).__name__}: {(str(error).splitlines() or [''])[0][:160]}): {hint}"
        ) from None
    return load(local)


DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "data" / "default_model"
"""The model shipped inside the package (how it was trained: docs/training.md)."""


def resolve_default(path: str | os.PathLike) -> str | os.PathLike:
    """`path` itself, or the shipped model's directory for "default" (a clear error if the
    package was installed without it)."""
    if str(path) != "default":
        return path
    if not (DEFAULT_MODEL_DIR / WEIGHTS_FILE).is_file():
        raise CheckpointError(
            f"{DEFAULT_MODEL_DIR}: the default model is not installed (train one with "
            "`gridlens train --preset cpu --out runs/cpu` and copy runs/cpu/model there)"
        )
    return DEFAULT_MODEL_DIR


def load(path: str | os.PathLike, n_ctx: int | None = None, device: Any = None, dtype: Any = None):
    """A GridGPT (in eval mode) from a supported file or directory (see the module docstring);
    "default" is the model shipped with the package.

    n_ctx: context length for pickled checkpoints (they do not record one; default 404).
    """
    from gridlens.models.gpt import GridGPT

    p = Path(resolve_default(path))
    if not p.exists():
        looks_local = p.suffix in (".pth", ".pt", ".safetensors", ".json") or str(path).startswith(
            (".", "/", "~")
        )
        if isinstance(path, str) and _HUB_ID.match(path) and not looks_local:
            model = _hub(path)
        else:
            raise CheckpointError(f"{p}: no such file or directory")
    elif p.is_dir():
        if (p / WEIGHTS_FILE).exists() or (p / CONFIG_FILE).exists():
            model = _load_ours(p / WEIGHTS_FILE, p / CONFIG_FILE)
        else:
            candidates = (
                sorted(p.glob("*.safetensors")) + sorted(p.glob("*.pth")) + sorted(p.glob("*.pt"))
            )
            if len(candidates) != 1:
                raise CheckpointError(
                    f"{p}: expected {CONFIG_FILE} + {WEIGHTS_FILE}, or exactly one "
                    ".safetensors/.pth "
                    f"file, found {[c.name for c in candidates]}"
                )
            return load(candidates[0], n_ctx=n_ctx, device=device, dtype=dtype)
    elif p.suffix == ".safetensors":
        model = _load_ours(p, p.parent / CONFIG_FILE if (p.parent / CONFIG_FILE).exists() else None)
    else:
        obj = load_pickle(p)
        state = _state_from_pickle(obj, p)
        model = from_state_dict(state, str(p), **({"n_ctx": n_ctx} if n_ctx else {}))
    if not isinstance(model, GridGPT):
        raise CheckpointError(f"{p}: did not produce a GridGPT")
    if n_ctx is not None and model.cfg.n_ctx != n_ctx:
        model.set_n_ctx(n_ctx)
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model


# ---------------------------------------------------------------------------- writing


def save(model, path: str | os.PathLike, overwrite: bool = True) -> Path:
    """Write `model` in our format: a directory with config.json and model.safetensors.

    The directory is assembled beside the target and swapped in with renames, so a reader
    never sees a half-written checkpoint. A path ending in .safetensors writes one file whose
    metadata holds the config.
    """
    path = Path(path)
    header = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config": model.cfg.to_dict(),
    }
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta = {"gridlens": json.dumps(header)}
    if path.suffix == ".safetensors":
        atomic_write(path, lambda handle: handle.write(seal_safetensors(state, meta)))
        return path
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"{path}: exists and is not a directory")
    if path.exists() and not overwrite:
        raise CheckpointError(f"{path}: exists (overwrite=False)")

    def fill(staging: Path) -> None:
        (staging / WEIGHTS_FILE).write_bytes(seal_safetensors(state, meta))
        (staging / CONFIG_FILE).write_text(json.dumps(header, indent=2) + "\n")

    atomic_directory(path, fill)
    return path


def describe(path: str | os.PathLike) -> dict[str, Any]:
    """Config and parameter count of a checkpoint (for `gridlens model info`)."""
    model = load(path)
    return {
        "path": str(path),
        "config": model.cfg.to_dict(),
        "n_params": sum(p.numel() for p in model.parameters()),
    }


__all__ = [
    "CheckpointError",
    "GridlensError",
    "convert_state_dict",
    "describe",
    "detect_layout",
    "from_state_dict",
    "infer_config",
    "load",
    "save",
    "to_original_state_dict",
    "validate_state_dict",
]
