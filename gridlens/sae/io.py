"""Saving and loading SAEs in SAELens 6's on-disk format, so either library reads the other's.

A saved SAE is a directory with `cfg.json` and `sae_weights.safetensors` (W_enc [d_in, d_sae],
b_enc, W_dec [d_sae, d_in], b_dec, and `threshold` [d_sae] for JumpReLU), exactly what
`sae_lens.SAE.load_from_disk` reads. Architectures map as SAELens names them:

    relu -> "standard"; topk -> "topk" (with k); jumprelu -> "jumprelu"; gated -> "gated"
                 (W_enc, W_dec, b_dec, b_gate, b_mag, r_mag; no b_enc);
    batchtopk -> "jumprelu" with every latent's threshold set to the global one, which is how
                 SAELens itself saves a trained BatchTopK SAE (`metadata.training_architecture`
                 is then "batchtopk" and `training_architecture_details.k` holds k)

Semantics that had to be matched (checked in the SAELens 6.54 source):
- SAELens's JumpReLU computes relu(pre) * (pre > threshold); ours pre * (pre > threshold). They
  agree iff threshold >= 0: saving refuses negative thresholds, loading clamps them at 0 (which
  reproduces SAELens's output exactly).
- `apply_b_dec_to_input=False` (encoder without the b_dec shift) is folded into b_enc;
  `rescale_acts_by_decoder_norm=True` (TopK) is folded into W_enc, b_enc and W_dec;
  `normalize_activations="expected_average_only_in"` with SAELens's `activation_scaler.json`
  beside the weights (a training checkpoint) is folded like SAELens's trainer folds it at the
  end. Per-input normalisations (layer_norm, constant_norm_rescale, whitening) are refused.
- Our fields without a SAELens equivalent live in `metadata.gridlens` (the full SAEConfig, the
  training record, a folded activation scale); SAELens keeps metadata as it is.
"""

from __future__ import annotations

import json
import math
import os
import re
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import torch

from gridlens.errors import CheckpointError, ConfigError
from gridlens.integrity import seal_safetensors, verify_safetensors
from gridlens.io import atomic_directory, atomic_write
from gridlens.sae.gated import build_sae, weight_names
from gridlens.sae.model import SAEConfig, SparseAutoencoder

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
SCALER_FILE = "activation_scaler.json"
FORMAT_NAME = "gridlens.sae"
FORMAT_VERSION = 1
MIN_SAE_LENS_VERSION = 6
DEFAULT_SAE_DIR = Path(__file__).resolve().parents[1] / "data" / "default_sae"
"""The SAE shipped inside the package (trained on the default model), if any."""

TO_SAE_LENS = {
    "relu": "standard",
    "topk": "topk",
    "batchtopk": "jumprelu",
    "jumprelu": "jumprelu",
    "gated": "gated",
}
_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def _sae_lens_version() -> str:
    """The SAELens version the files claim compatibility with (the installed one, if any)."""
    try:
        version = importlib_metadata.version("sae-lens")
    except importlib_metadata.PackageNotFoundError:
        return "6.0.0"
    return version if _major(version) >= MIN_SAE_LENS_VERSION else "6.0.0"


def _major(version: Any) -> int:
    match = re.match(r"\s*v?(\d+)", str(version))
    return int(match.group(1)) if match else -1


def _dtype_name(dtype: torch.dtype) -> str:
    for name, value in _DTYPES.items():
        if value == dtype:
            return name
    raise ConfigError(f"SAE dtype {dtype} cannot be saved (one of {sorted(_DTYPES)})")


# ---------------------------------------------------------------------------- writing


def save_sae(
    sae: SparseAutoencoder,
    path: str | os.PathLike,
    training: dict[str, Any] | None = None,
    *,
    model_name: str = "gridlens-gridgpt",
    activation_scale: float | None = None,
) -> Path:
    """Write `sae` as a SAELens 6 directory (cfg.json + sae_weights.safetensors), atomically: a
    new directory appears whole; in an existing one each file is replaced whole (weights first)
    and other files are left alone.

    training: a JSON-able record (training config, tokens seen, ...) kept in
    `metadata.gridlens.training`. activation_scale: if the SAE was trained on activations
    multiplied by s, pass s: it is folded into the weights (the saved SAE takes raw activations,
    as SAELens's trainer does at the end) and recorded in `metadata.gridlens.activation_scale`.
    """
    cfg = sae.cfg
    arch = cfg.architecture
    weights = {name: getattr(sae, name).detach().to("cpu").clone() for name in weight_names(cfg)}
    dtype = weights["W_enc"].dtype
    if arch in ("jumprelu", "batchtopk"):
        threshold = sae.threshold.detach().to("cpu", dtype).clone()
        if (threshold < 0).any():
            raise ConfigError(
                f"{int((threshold < 0).sum())} JumpReLU/BatchTopK threshold(s) are negative; "
                "SAELens computes relu(pre) * (pre > threshold), which differs from ours below 0 "
                "(clamp the threshold at 0 during training, as SAELens does)"
            )
        weights["threshold"] = threshold.expand(cfg.d_sae).clone()
    if activation_scale is not None:
        if not (math.isfinite(activation_scale) and activation_scale > 0):
            raise ConfigError(f"activation_scale must be a positive number, got {activation_scale}")
        weights["W_enc"] *= activation_scale
        weights["W_dec"] /= activation_scale
        weights["b_dec"] /= activation_scale
    for name, value in weights.items():
        if not torch.isfinite(value).all():
            raise ConfigError(f"SAE parameter {name!r} contains NaN or infinite values")

    gridlens_meta: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config": cfg.to_dict(),
        "training": training or {},
    }
    if activation_scale is not None:
        gridlens_meta["activation_scale"] = float(activation_scale)
    meta: dict[str, Any] = {
        "sae_lens_version": _sae_lens_version(),
        "sae_lens_training_version": None,
        "model_name": model_name,
        "hook_name": cfg.hook_name,
        "hook_head_index": None,
        "context_size": 404,
        "prepend_bos": False,
        "gridlens": gridlens_meta,
    }
    if arch == "batchtopk":
        meta["training_architecture"] = "batchtopk"
        meta["training_architecture_details"] = {"k": cfg.k}
    out: dict[str, Any] = {
        "architecture": TO_SAE_LENS[arch],
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": _dtype_name(dtype),
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "hook_z" if cfg.hook_name.endswith("hook_z") else "none",
        "metadata": meta,
    }
    if arch == "topk":
        out.update(k=cfg.k, rescale_acts_by_decoder_norm=False)
    if arch == "jumprelu":  # training fields SAELens's JumpReLU training config also has
        out.update(
            jumprelu_bandwidth=cfg.jumprelu_bandwidth,
            jumprelu_init_threshold=cfg.jumprelu_init_threshold,
        )
    try:
        text = json.dumps(out, indent=2, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"the training record is not plain JSON: {error}") from None
    state = {name: value.contiguous() for name, value in weights.items()}

    blob, cfg_text = seal_safetensors(state), (text + "\n").encode()
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"{path}: exists and is not a directory")
    if path.exists():  # e.g. a training run's folder: replace our two files, keep the others
        atomic_write(path / WEIGHTS_FILE, lambda handle: handle.write(blob))
        atomic_write(path / CFG_FILE, lambda handle: handle.write(cfg_text))
    else:

        def fill(staging: Path) -> None:
            (staging / WEIGHTS_FILE).write_bytes(blob)
            (staging / CFG_FILE).write_bytes(cfg_text)

        atomic_directory(path, fill)
    return path


# ---------------------------------------------------------------------------- reading


def resolve_sae_path(path: str | os.PathLike) -> Path:
    """`path`, or the shipped SAE's directory for "default"."""
    if str(path) != "default":
        return Path(path)
    if not (DEFAULT_SAE_DIR / CFG_FILE).is_file():
        raise CheckpointError(
            f"{DEFAULT_SAE_DIR}: the default SAE is not installed (train one with "
            "`gridlens sae train` and save it there)"
        )
    return DEFAULT_SAE_DIR


def read_sae_cfg(path: str | os.PathLike) -> dict[str, Any]:
    """The parsed cfg.json of a saved SAE (SAELens fields and `metadata`)."""
    directory = resolve_sae_path(path)
    cfg_path = directory / CFG_FILE
    if not directory.exists():
        raise CheckpointError(f"{directory}: no such SAE directory")
    if not directory.is_dir():
        raise CheckpointError(
            f"{directory}: an SAE is a directory with {CFG_FILE} and {WEIGHTS_FILE}"
        )
    try:
        data = json.loads(cfg_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{cfg_path}: missing (an SAE directory needs {CFG_FILE})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{cfg_path}: not valid JSON (truncated?): {error}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{cfg_path}: expected a JSON object, got {type(data).__name__}")
    if data.get("metadata") is not None and not isinstance(data["metadata"], dict):
        raise CheckpointError(f"{cfg_path}: field 'metadata' must be an object")
    return data


def load_sae(
    path: str | os.PathLike,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    hook_name: str | None = None,
) -> SparseAutoencoder:
    """An SAE (eval mode) from a SAELens 6 directory (ours or SAELens's); "default" is the
    SAE shipped with the package. Malformed files raise CheckpointError naming file and field.

    hook_name: the site, for SAELens files whose metadata does not name one."""
    directory = resolve_sae_path(path)
    data = read_sae_cfg(directory)
    cfg_path = directory / CFG_FILE
    meta = data.get("metadata") or {}

    def field(name: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        if name not in data:
            if default is ...:
                raise CheckpointError(f"{cfg_path}: missing field {name!r}")
            return default
        value = data[name]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float)):
            raise CheckpointError(
                f"{cfg_path}: field {name!r} is {value!r}, expected {_kind_name(kind)}"
            )
        return value

    version = data.get("sae_lens_version") or meta.get("sae_lens_version")
    if version is None:
        raise CheckpointError(
            f"{cfg_path}: no 'metadata.sae_lens_version': written by SAELens < 6 (load and save "
            "it with SAELens 6 to convert it)"
        )
    if _major(version) < MIN_SAE_LENS_VERSION:
        raise CheckpointError(
            f"{cfg_path}: field 'metadata.sae_lens_version' is {version!r}; gridlens reads the "
            f"SAELens >= {MIN_SAE_LENS_VERSION}.0 format (load and save it with SAELens 6)"
        )
    arch = field("architecture", str)
    if arch not in ("standard", "topk", "jumprelu", "batchtopk", "gated"):
        raise CheckpointError(
            f"{cfg_path}: field 'architecture' is {arch!r}; gridlens reads standard, topk, "
            "jumprelu, batchtopk and gated SAEs (transcoders: gridlens.sae.load_transcoder)"
        )
    d_in, d_sae = field("d_in", int), field("d_sae", int)
    dtype_name = str(field("dtype", str, "float32")).removeprefix("torch.")
    if dtype_name not in _DTYPES:
        raise CheckpointError(
            f"{cfg_path}: field 'dtype' is {data['dtype']!r}, expected one of {sorted(_DTYPES)}"
        )
    normalize = field("normalize_activations", str, "none")
    if normalize not in ("none", "expected_average_only_in"):
        raise CheckpointError(
            f"{cfg_path}: field 'normalize_activations' is {normalize!r}; only 'none' (or a "
            "scaling factor to fold) can be expressed by a gridlens SAE"
        )
    reshape = field("reshape_activations", str, "none")
    if reshape not in ("none", "hook_z"):
        raise CheckpointError(
            f"{cfg_path}: field 'reshape_activations' is {reshape!r}, expected 'none' or 'hook_z'"
        )
    hook_name = meta.get("hook_name") or data.get("hook_name") or hook_name
    if not isinstance(hook_name, str):
        raise CheckpointError(
            f"{cfg_path}: missing field 'metadata.hook_name' (pass hook_name=... to load_sae)"
        )

    state = _read_weights(directory / WEIGHTS_FILE)
    shapes = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    biases = ("b_gate", "b_mag", "r_mag") if arch == "gated" else ("b_enc",)
    shapes.update({name: (d_sae,) for name in biases})
    if "log_threshold" in state and "threshold" not in state:  # SAELens < 6.x JumpReLU training
        state["threshold"] = state.pop("log_threshold").double().exp()
    scaling = state.pop("scaling_factor", None)  # SAELens 5 era; all ones means unused
    if scaling is not None and not torch.equal(scaling, torch.ones_like(scaling)):
        raise CheckpointError(
            f"{directory / WEIGHTS_FILE}: key 'scaling_factor' is not all ones (a finetuning "
            "scale gridlens cannot express)"
        )
    if arch == "jumprelu":
        shapes["threshold"] = (d_sae,)
    if arch == "batchtopk":
        shapes["topk_threshold"] = ()
    _check_state(state, shapes, directory / WEIGHTS_FILE)
    state = {name: value.double() for name, value in state.items()}

    # fold SAELens options into the plain encoder/decoder
    if not field("apply_b_dec_to_input", bool, True):
        shift = state["b_dec"] @ state["W_enc"]
        if arch == "gated":  # the magnitude path's encoder is W_enc * exp(r_mag)
            state["b_gate"] = state["b_gate"] + shift
            state["b_mag"] = state["b_mag"] + shift * state["r_mag"].exp()
        else:
            state["b_enc"] = state["b_enc"] + shift
    if arch in ("topk", "batchtopk") and field("rescale_acts_by_decoder_norm", bool, False):
        norms = state["W_dec"].norm(dim=1).clamp_min(1e-8)
        state["W_enc"], state["b_enc"] = state["W_enc"] * norms, state["b_enc"] * norms
        state["W_dec"] = state["W_dec"] / norms[:, None]
    scale = _activation_scale(directory, normalize)
    if scale is not None:
        state["W_enc"], state["W_dec"], state["b_dec"] = (
            state["W_enc"] * scale,
            state["W_dec"] / scale,
            state["b_dec"] / scale,
        )

    cfg = _our_config(data, meta, arch, d_in, d_sae, hook_name, state, cfg_path)
    sae = build_sae(cfg)
    with torch.no_grad():
        for name in weight_names(cfg):
            getattr(sae, name).copy_(state[name])
        if cfg.architecture == "jumprelu":
            sae.threshold.copy_(state["threshold"].clamp_min(0.0))
        elif cfg.architecture == "batchtopk":
            sae.threshold.copy_(state["threshold"].reshape(-1)[0].clamp_min(0.0))
    sae.to(dtype=dtype or _DTYPES[dtype_name])
    if device is not None:
        sae.to(device)
    return sae.eval()


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(
        {int: "an integer", str: "a string", bool: "true/false"}.get(k, k.__name__) for k in kinds
    )


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (an SAE directory needs {WEIGHTS_FILE})") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(
            f"{path}: cannot read safetensors (truncated or corrupt file?): {error}"
        ) from None
    verify_safetensors(path)
    return state


def _check_state(
    state: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]], path: Path
) -> None:
    missing = [key for key in shapes if key not in state]
    if missing:
        raise CheckpointError(f"{path}: missing key(s) {missing} (expected {sorted(shapes)})")
    unexpected = [key for key in state if key not in shapes]
    if unexpected:
        raise CheckpointError(f"{path}: unexpected key(s) {unexpected} (expected {sorted(shapes)})")
    for key, want in shapes.items():
        value = state[key]
        if tuple(value.shape) != want:
            raise CheckpointError(
                f"{path}: key {key!r} has shape {tuple(value.shape)}, expected {want} "
                "(from d_in and d_sae in cfg.json)"
            )
        if not value.dtype.is_floating_point:
            raise CheckpointError(f"{path}: key {key!r} has dtype {value.dtype}, expected float")
        if not torch.isfinite(value).all():
            raise CheckpointError(f"{path}: key {key!r} contains NaN or infinite values")


def _activation_scale(directory: Path, normalize: str) -> float | None:
    """The scaling factor of an unfolded `expected_average_only_in` SAELens checkpoint."""
    if normalize != "expected_average_only_in":
        return None
    path = directory / SCALER_FILE
    if not path.is_file():
        return None  # SAELens's load_from_disk then applies no scaling either
    try:
        factor = json.loads(path.read_text()).get("scaling_factor")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as error:
        raise CheckpointError(f"{path}: not a valid activation scaler file: {error}") from None
    if factor is None:
        return None
    if isinstance(factor, bool) or not isinstance(factor, int | float) or not factor > 0:
        raise CheckpointError(f"{path}: field 'scaling_factor' is {factor!r}, expected > 0")
    return float(factor)


def _our_config(data, meta, arch, d_in, d_sae, hook_name, state, cfg_path) -> SAEConfig:
    """Our SAEConfig: from metadata.gridlens when we wrote the file, else from SAELens fields."""
    ours = meta.get("gridlens")
    if ours is not None:
        if not isinstance(ours, dict) or not isinstance(ours.get("config"), dict):
            raise CheckpointError(f"{cfg_path}: field 'metadata.gridlens.config' is missing")
        if ours.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(
                f"{cfg_path}: field 'metadata.gridlens.format_version' is "
                f"{ours.get('format_version')!r}; this gridlens reads version {FORMAT_VERSION}"
            )
        try:
            cfg = SAEConfig.from_dict(ours["config"])
        except (ConfigError, TypeError) as error:
            raise CheckpointError(
                f"{cfg_path}: field 'metadata.gridlens.config': {error}"
            ) from None
        for name, value in (("d_in", d_in), ("d_sae", d_sae), ("hook_name", hook_name)):
            if getattr(cfg, name) != value:
                raise CheckpointError(
                    f"{cfg_path}: metadata.gridlens.config {name}={getattr(cfg, name)!r} "
                    f"disagrees with the SAELens field ({value!r})"
                )
        if TO_SAE_LENS[cfg.architecture] != arch:
            raise CheckpointError(
                f"{cfg_path}: metadata.gridlens.config architecture {cfg.architecture!r} "
                f"disagrees with field 'architecture' ({arch!r})"
            )
        if cfg.architecture == "topk" and data.get("k") != cfg.k:
            raise CheckpointError(
                f"{cfg_path}: field 'k' is {data.get('k')!r} but metadata.gridlens says {cfg.k}"
            )
    else:
        cfg = _config_from_sae_lens(data, meta, arch, d_in, d_sae, hook_name, state, cfg_path)
    if cfg.architecture == "batchtopk":
        if arch == "batchtopk":  # a SAELens training checkpoint: the running threshold
            state["threshold"] = state.pop("topk_threshold").reshape(1)
        threshold = state["threshold"]
        if not torch.all(threshold == threshold.reshape(-1)[0]):
            raise CheckpointError(
                f"{cfg_path.parent / WEIGHTS_FILE}: key 'threshold' is not one value for every "
                "latent, as a BatchTopK SAE's global threshold must be"
            )
    return cfg


def _config_from_sae_lens(data, meta, arch, d_in, d_sae, hook_name, state, cfg_path) -> SAEConfig:
    def k_of(value: Any, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
            raise CheckpointError(f"{cfg_path}: field {where!r} is {value!r}, expected an integer")
        return int(value)

    fields: dict[str, Any] = {"d_in": d_in, "d_sae": d_sae, "hook_name": hook_name}
    details = meta.get("training_architecture_details") or {}
    if arch in ("standard", "gated"):
        fields["architecture"] = "relu" if arch == "standard" else "gated"
    elif arch == "topk":
        fields.update(architecture="topk", k=k_of(data.get("k"), "k"))
    elif arch == "batchtopk":
        fields.update(architecture="batchtopk", k=k_of(data.get("k"), "k"))
    elif (
        meta.get("training_architecture") == "batchtopk"
        and isinstance(details, dict)
        and "k" in details
        and torch.all(state["threshold"] == state["threshold"][0])
    ):
        fields.update(architecture="batchtopk", k=k_of(details["k"], "metadata.k"))
    else:
        fields["architecture"] = "jumprelu"
        for name in ("jumprelu_bandwidth", "jumprelu_init_threshold"):
            value = data.get(name, details.get(name) if isinstance(details, dict) else None)
            if isinstance(value, int | float) and not isinstance(value, bool):
                fields[name] = float(value)
    try:
        return SAEConfig(**fields)
    except ConfigError as error:
        raise CheckpointError(f"{cfg_path}: {error}") from None


__all__ = ["DEFAULT_SAE_DIR", "load_sae", "read_sae_cfg", "resolve_sae_path", "save_sae"]
