"""GridGPT configuration and presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from gridlens.errors import ConfigError, unknown_name


@dataclass
class GridGPTConfig:
    """Shape of a GridGPT (a MyGPT-compatible GPT).

    d_head is the size of the query/key vectors per head (MyGPT's `dim_keys`); the value
    vectors have size d_model // n_heads as in MyGPT (see `d_value`).
    shift_input=True is MyGPT's BOS shift (`F.pad(x, (1, -1))`): logits at position p predict
    token p from tokens < p. shift_input=False is a plain causal model: the output at p reads
    tokens <= p.
    n_ctx is the longest accepted sequence; MyGPT's positions have no hard limit, so raising
    n_ctx on a loaded model is harmless (see `with_n_ctx`).
    """

    vocab_size: int = 15
    n_ctx: int = 404
    d_model: int = 512
    n_layers: int = 12
    n_heads: int = 8
    d_head: int = 64
    d_mlp: int = 2048
    d_vocab_out: int | None = None
    shift_input: bool = True
    pos_scale: float = 1e5
    ln_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.d_vocab_out is None:
            self.d_vocab_out = self.vocab_size
        for name in (
            "vocab_size",
            "n_ctx",
            "d_model",
            "n_layers",
            "n_heads",
            "d_head",
            "d_mlp",
            "d_vocab_out",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"GridGPTConfig.{name} must be a positive integer, got {value!r}")
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"GridGPTConfig.d_model ({self.d_model}) must be divisible by n_heads "
                f"({self.n_heads}): MyGPT's value vectors have size d_model // n_heads"
            )
        if not isinstance(self.shift_input, bool):
            raise ConfigError(f"GridGPTConfig.shift_input must be a bool, got {self.shift_input!r}")
        if not self.pos_scale > 0 or not self.ln_eps > 0:
            raise ConfigError("GridGPTConfig.pos_scale and ln_eps must be positive")

    @property
    def d_value(self) -> int:
        """Size of a head's value vector (MyGPT: d_model // n_heads)."""
        return self.d_model // self.n_heads

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> GridGPTConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"{source}: unknown config field(s) {unknown} (known: {sorted(known)})"
            )
        try:
            return cls(**data)
        except TypeError as error:
            raise ConfigError(f"{source}: {error}") from None

    def replace(self, **changes: Any) -> GridGPTConfig:
        return dataclasses.replace(self, **changes)

    def n_params(self) -> int:
        d, v = self.d_model, self.vocab_size
        attn = self.n_heads * (2 * self.d_head + self.d_value) * d + d * d
        mlp = 2 * d * self.d_mlp + self.d_mlp + d
        return v * d + self.n_layers * (attn + mlp + 4 * d) + self.d_vocab_out * (d + 1)


PRESETS: dict[str, GridGPTConfig] = {
    # The released culture models (Fleuret's 37M: dim_model 512, dim_keys 64, dim_hidden 2048).
    "37m": GridGPTConfig(d_model=512, n_layers=12, n_heads=8, d_head=64, d_mlp=2048),
    # Smaller ones that train and run comfortably on a CPU.
    "small": GridGPTConfig(d_model=128, n_layers=4, n_heads=4, d_head=32, d_mlp=512),
    "tiny": GridGPTConfig(d_model=64, n_layers=2, n_heads=4, d_head=16, d_mlp=128),
}


def get_preset(name: str, **overrides: Any) -> GridGPTConfig:
    """A preset by name, with optional field overrides (e.g. n_ctx=, shift_input=)."""
    if name not in PRESETS:
        raise unknown_name("model preset", name, PRESETS)
    return PRESETS[name].replace(**overrides)
