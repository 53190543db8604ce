"""Light-weight hook points with TransformerLens names and conventions.

A hook function has TransformerLens's signature `fn(tensor, hook)`: it returns a replacement
tensor or None (keep the tensor), and `hook.name` / `hook.layer()` say where it runs. The model
looks hooks up in one dict per forward pass, so sites without hooks cost a dict lookup and
nothing else; gradients flow through every hook (nothing is detached unless asked).

We keep our own module instead of TransformerLens's `HookPoint`/`HookedRootModule` (one
nn.Module per site, with PyTorch forward hooks): a `HookPoint` costs about 10x our
site per forward pass with no hook attached, and TransformerLens would become a hard
dependency (the measurement: docs/design.md).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from gridlens.errors import UnknownNameError, unknown_name

HookFn = Callable[[torch.Tensor, "HookPoint"], torch.Tensor | None]
NameFilter = str | Iterable[str] | Callable[[str], bool] | None

#: Sites of one block, in the order they run. hook_result is optional (computed on demand).
BLOCK_SITES: tuple[str, ...] = (
    "hook_resid_pre",
    "ln1.hook_scale",
    "ln1.hook_normalized",
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_v",
    "attn.hook_attn_scores",
    "attn.hook_pattern",
    "attn.hook_z",
    "attn.hook_result",
    "hook_attn_out",
    "hook_resid_mid",
    "ln2.hook_scale",
    "ln2.hook_normalized",
    "mlp.hook_pre",
    "mlp.hook_post",
    "hook_mlp_out",
    "hook_resid_post",
)
#: Sites that force the explicit attention pattern (no fused kernel).
PATTERN_SITES: tuple[str, ...] = ("attn.hook_attn_scores", "attn.hook_pattern")

_LAYER = re.compile(r"^blocks\.(\d+)\.")


def hook_names(n_layers: int) -> list[str]:
    """Every hook name of a model with `n_layers` blocks, in execution order."""
    names = ["hook_embed", "hook_pos_embed"]
    for layer in range(n_layers):
        names += [f"blocks.{layer}.{site}" for site in BLOCK_SITES]
    return names


@dataclass
class HookPoint:
    """What a hook function receives as its second argument (TransformerLens-compatible)."""

    name: str
    ctx: dict[str, Any] = field(default_factory=dict)
    #: absolute position of the activation's first position: 0 for a full forward, the decoded
    #: position when generating through the KV cache (so position-aware hooks stay correct)
    start: int = 0

    def layer(self) -> int:
        match = _LAYER.match(self.name)
        if match is None:
            raise ValueError(f"hook {self.name!r} is not inside a block")
        return int(match.group(1))

    def __repr__(self) -> str:
        return f"HookPoint({self.name!r})"


def resolve_names(selector: NameFilter, known: list[str], what: str = "hook name") -> list[str]:
    """The known names a selector picks: None (all), a name, a list of names, or a predicate.

    Unknown explicit names raise UnknownNameError with the closest known names.
    """
    if selector is None:
        return list(known)
    if callable(selector):
        return [name for name in known if selector(name)]
    if isinstance(selector, str):
        selector = [selector]
    known_set = set(known)
    out = []
    for name in selector:
        if not isinstance(name, str):
            raise UnknownNameError(f"{what}s must be strings, got {name!r}")
        if name not in known_set:
            raise unknown_name(what, name, known)
        out.append(name)
    return out


class ActivationCache(Mapping[str, torch.Tensor]):
    """A read-only mapping hook name -> tensor, with a few TransformerLens-style helpers."""

    def __init__(self, data: dict[str, torch.Tensor], known: list[str]):
        self._data = data
        self._known = known

    def __getitem__(self, name: str) -> torch.Tensor:
        try:
            return self._data[name]
        except KeyError:
            if name in self._known:
                raise UnknownNameError(
                    f"hook {name!r} exists but was not cached in this run "
                    f"(cached: {', '.join(self._data) or 'nothing'})"
                ) from None
            raise unknown_name("hook name", name, self._data or self._known) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"ActivationCache({len(self._data)} tensors: {', '.join(list(self._data)[:6])}...)"

    def stack(self, site: str, layers: Iterable[int] | None = None) -> torch.Tensor:
        """Stack `blocks.{l}.{site}` over layers (dim 0)."""
        if layers is None:
            layers = sorted(
                int(_LAYER.match(k).group(1))
                for k in self._data
                if _LAYER.match(k) and k.split(".", 2)[2] == site
            )
        return torch.stack([self[f"blocks.{layer}.{site}"] for layer in layers])

    def to(self, device: str | torch.device) -> ActivationCache:
        return ActivationCache({k: v.to(device) for k, v in self._data.items()}, self._known)


def read_site(act: torch.Tensor, head: int | None) -> torch.Tensor:
    """[batch, pos, width] from a hook's activation: one head or all heads flattened for
    per-head hooks ([batch, pos, head, d])."""
    if act.dim() == 3:
        return act
    return act[:, :, head] if head is not None else act.flatten(2)


def write_site(act: torch.Tensor, head: int | None, new: torch.Tensor) -> torch.Tensor:
    """The hook's activation with :func:`read_site`'s view replaced by ``new``."""
    if act.dim() == 3:
        return new
    if head is None:
        return new.reshape(act.shape)
    out = act.clone()
    out[:, :, head] = new
    return out
