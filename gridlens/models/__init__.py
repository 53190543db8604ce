"""GridGPT: a MyGPT-compatible hooked GPT, its checkpoints, generation and TransformerLens export.

from gridlens.models import GridGPT, GridGPTConfig, load, save, PRESETS
model = load("gpt_000.pth")                 # original, fork or our format
logits = model(tokens)                      # [n, 404, 15]; logits at p predict token p
logits, cache = model.run_with_cache(tokens, names=["blocks.0.attn.hook_pattern"])
done = model.complete(tokens, temperature=0.0, seed=0)   # regenerate the last grid (KV cache)
"""

from gridlens.lazy import lazy_exports

_EXPORTS = {
    "ActivationCache": "hooks",
    "BLOCK_SITES": "hooks",
    "DEFAULT_MODEL_DIR": "checkpoints",
    "GridGPT": "gpt",
    "GridGPTConfig": "config",
    "HookPoint": "hooks",
    "KVCache": "gpt",
    "PRESETS": "config",
    "complete": "generate",
    "convert_state_dict": "checkpoints",
    "detect_layout": "checkpoints",
    "from_state_dict": "checkpoints",
    "generate": "generate",
    "get_preset": "config",
    "hook_names": "hooks",
    "infer_config": "checkpoints",
    "last_grid_positions": "generate",
    "load": "checkpoints",
    "positions_mask": "generate",
    "save": "checkpoints",
    "shift_tokens": "gpt",
    "sinusoidal_positions": "gpt",
    "to_original_state_dict": "checkpoints",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
