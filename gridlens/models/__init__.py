"""GridGPT: a MyGPT-compatible hooked GPT, its checkpoints, generation and TransformerLens export.

from gridlens.models import GridGPT, GridGPTConfig, load, save, PRESETS
model = load("gpt_000.pth")                 # original, fork or our format
logits = model(tokens)                      # [n, 404, 15]; logits at p predict token p
logits, cache = model.run_with_cache(tokens, names=["blocks.0.attn.hook_pattern"])
done = model.complete(tokens, temperature=0.0, seed=0)   # regenerate the last grid (KV cache)
"""

from gridlens.models.checkpoints import (
    DEFAULT_MODEL_DIR,
    convert_state_dict,
    detect_layout,
    from_state_dict,
    infer_config,
    load,
    save,
    to_original_state_dict,
)
from gridlens.models.config import PRESETS, GridGPTConfig, get_preset
from gridlens.models.generate import complete, generate, last_grid_positions, positions_mask
from gridlens.models.gpt import GridGPT, KVCache, shift_tokens, sinusoidal_positions
from gridlens.models.hooks import BLOCK_SITES, ActivationCache, HookPoint, hook_names

__all__ = [
    "BLOCK_SITES",
    "DEFAULT_MODEL_DIR",
    "PRESETS",
    "ActivationCache",
    "GridGPT",
    "GridGPTConfig",
    "HookPoint",
    "KVCache",
    "complete",
    "convert_state_dict",
    "detect_layout",
    "from_state_dict",
    "generate",
    "get_preset",
    "hook_names",
    "infer_config",
    "last_grid_positions",
    "load",
    "positions_mask",
    "save",
    "shift_tokens",
    "sinusoidal_positions",
    "to_original_state_dict",
]
