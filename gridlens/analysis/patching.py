"""Activation patching (denoising): run the CORRUPTED prompt with one component's activation
taken from the CLEAN run, and measure how much of the clean answer's log-probability returns.

Metric: the log-probability of the clean answer grid (the sum over its 100 cells, teacher
forced). Both runs score the same answer: the corrupted run is the corrupted prompt followed by
the clean answer grid (`pairs.as_tokens`). A component's score for a task is
(mean patched - mean corrupted) / (mean clean - mean corrupted) over that task's pairs: 0 = no
restoration, 1 = the clean metric; "all" pools every pair the same way.

Components: "layers" (every L{l}.attn and L{l}.mlp), "heads" (L{l}H{h}, hook_z), "neurons"
(L{l}N{n}, mlp.hook_post), "resid" (the residual stream entering block l, l = n_layers being
the final residual, restricted to a block of positions: `resid_block` "grid" -> L{l}.resid[f_A],
"row" -> L{l}.resid[f_A.r3] and the marker L{l}.resid[f_A.m], "cell" -> L{l}.resid[f_A.c37]),
or a list of such names.

The sweep is exact patching computed efficiently: a head's patch changes the residual stream by
(z_clean - z_corrupted)_h W_O[h], a neuron's by (post_clean - post_corrupted)_n W_out[:, n]; those
rank-one deltas are added to the cached corrupted residual stream and only the rest of the
network runs (from the component's own layer, the last block's queries restricted to the answer
grid), many patched copies stacked per forward. `patched_logprob` patches components together
through ordinary hooks, the plain way (tests check one against the other).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from gridlens.analysis.core import (
    ComponentError,
    component_names,
    parse_component,
    predicted_cells,
)
from gridlens.analysis.pairs import PAIR_KINDS, PairError, PairSet, as_tokens, make_pairs
from gridlens.errors import ConfigError, unknown_name
from gridlens.io import atomic_write
from gridlens.notebook import Tabular, result_html
from gridlens.plotting import finish, pyplot
from gridlens.world.tokens import GRID_NAMES

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "PAIR_KINDS",
    "PairSet",
    "PatchingResult",
    "activation_patching",
    "expand_components",
    "make_pairs",
    "patched_logprob",
]

RESID_BLOCKS = ("grid", "row", "cell")
_RESID = re.compile(r"^L(\d+)\.resid\[(A|f_A|B|f_B)(?:\.(m|r\d+|c\d+))?\]$")


# ---------------------------------------------------------------- components


@dataclass(frozen=True)
class Site:
    """Where a component lives for patching: kind, layer, index (head / neuron) and, for the
    residual stream, the positions [start, stop)."""

    name: str
    kind: str  # attn | mlp | head | neuron | resid
    layer: int
    index: int | None = None
    start: int = 0
    stop: int = 0
    n_layers: int = 0

    @property
    def hook_name(self) -> str:
        return _hook_name(self.kind, self.layer, self.n_layers)


def _hook_name(kind: str, layer: int, n_layers: int) -> str:
    if kind == "resid":
        if layer == n_layers:
            return f"blocks.{layer - 1}.hook_resid_post"
        return f"blocks.{layer}.hook_resid_pre"
    return {
        "attn": f"blocks.{layer}.hook_attn_out",
        "mlp": f"blocks.{layer}.hook_mlp_out",
        "head": f"blocks.{layer}.attn.hook_z",
        "neuron": f"blocks.{layer}.mlp.hook_post",
    }[kind]


def resid_names(cfg, block: str = "row") -> list[str]:
    """Residual-stream components: every layer boundary 0..n_layers x every position block."""
    if block not in RESID_BLOCKS:
        raise unknown_name("resid block", block, RESID_BLOCKS)
    labels: list[str] = []
    for g in GRID_NAMES:
        if block == "grid":
            labels.append(g)
        elif block == "row":
            labels += [f"{g}.m"] + [f"{g}.r{r}" for r in range(10)]
        else:
            labels += [f"{g}.m"] + [f"{g}.c{c}" for c in range(100)]
    return [f"L{layer}.resid[{b}]" for layer in range(cfg.n_layers + 1) for b in labels]


def parse_site(name: str, cfg, width: int = 10) -> Site:
    """A component name (core's names or a resid block) -> Site."""
    match = _RESID.match(name.strip())
    if match is None:
        if ".resid" in name:
            raise ComponentError(
                f"resid component {name!r}: expected L{{l}}.resid[G] or L{{l}}.resid[G.m|G.rR|"
                f"G.cC] with G one of {', '.join(GRID_NAMES)}"
            )
        c = parse_component(name, cfg)
        return Site(c.name, c.kind, c.layer, c.index, n_layers=cfg.n_layers)
    layer = int(match.group(1))
    if layer > cfg.n_layers:
        raise ComponentError(f"component {name!r}: layer {layer} > n_layers {cfg.n_layers}")
    grid = 1 + width * width
    base = GRID_NAMES.index(match.group(2)) * grid
    part = match.group(3)
    if part is None:
        start, stop = base, base + grid
    elif part == "m":
        start, stop = base, base + 1
    elif part[0] == "r":
        row = int(part[1:])
        if row >= width:
            raise ComponentError(f"component {name!r}: row {row} >= {width}")
        start, stop = base + 1 + row * width, base + 1 + (row + 1) * width
    else:
        cell = int(part[1:])
        if cell >= width * width:
            raise ComponentError(f"component {name!r}: cell {cell} >= {width * width}")
        start, stop = base + 1 + cell, base + 2 + cell
    return Site(name, "resid", layer, None, start, stop, cfg.n_layers)


def expand_components(cfg, components: str | Sequence[str], resid_block: str = "row") -> list[str]:
    """Component names from groups ("layers", "heads", "neurons", "resid") and/or names, given
    as a list or a comma-separated string ("heads,neurons", "L0.attn,L2H1")."""
    groups = {"layers": ("attn", "mlp"), "heads": ("head",), "neurons": ("neuron",)}
    if isinstance(components, str):
        components = components.split(",")
    names: list[str] = []
    for c in (c.strip() for c in components):
        if c in groups:
            names += component_names(cfg, groups[c])
        elif c == "resid":
            names += resid_names(cfg, resid_block)
        elif c:
            names.append(c)
    if not names:
        raise ConfigError(
            "no components selected (expected 'layers', 'heads', 'neurons', "
            "'resid' or component names)"
        )
    for name in names:
        parse_site(name, cfg)
    if len(set(names)) != len(names):
        raise ConfigError("component names must be distinct")
    return names


# ---------------------------------------------------------------- result


def _nan_to_none(values) -> list:
    return [None if not np.isfinite(v) else float(v) for v in values]


@dataclass
class PatchingResult(Tabular):
    """Per-component restoration scores per task ("all" pools every pair), for activation
    patching ("activation") and its gradient estimates ("atp", "atp*")."""

    method: str
    pair_kind: str
    components: list[str]
    scores: dict[str, np.ndarray]  # task -> [n_components]
    clean_logprob: dict[str, float]  # mean clean-answer log-prob per task, clean run
    corrupted_logprob: dict[str, float]  # the same on the corrupted run
    n_pairs: dict[str, int]
    seconds: float
    n_layers: int
    n_heads: int
    skipped: dict[str, str] = field(default_factory=dict)

    def select(self, names: str | Sequence[str]) -> PatchingResult:
        """The result restricted to some components: names, or a kind ("heads", "neurons",
        "layers", "resid")."""
        if isinstance(names, str):
            kinds = {
                "heads": {"head"},
                "neurons": {"neuron"},
                "layers": {"attn", "mlp"},
                "resid": {"resid"},
            }
            if names not in kinds:
                raise unknown_name("component kind", names, kinds)
            names = [c for c in self.components if _kind(c) in kinds[names]]
        index = {c: i for i, c in enumerate(self.components)}
        missing = [c for c in names if c not in index]
        if missing or not names:
            raise ConfigError(f"components not in this result: {missing or 'none selected'}")
        rows = [index[c] for c in names]
        return replace(
            self, components=list(names), scores={t: v[rows] for t, v in self.scores.items()}
        )

    def score(self, name: str, task: str = "all") -> float:
        return float(self.scores[task][self.components.index(name)])

    def top(self, n: int = 10, task: str = "all") -> list[tuple[str, float]]:
        """The n components of largest |score|, with their scores."""
        s = np.nan_to_num(self.scores[task])
        order = np.argsort(-np.abs(s), kind="stable")[:n]
        return [(self.components[i], float(s[i])) for i in order]

    def to_json(self) -> dict:
        return {
            "method": self.method,
            "pair_kind": self.pair_kind,
            "components": list(self.components),
            "scores": {t: _nan_to_none(v) for t, v in self.scores.items()},
            "clean_logprob": dict(self.clean_logprob),
            "corrupted_logprob": dict(self.corrupted_logprob),
            "n_pairs": dict(self.n_pairs),
            "seconds": self.seconds,
            "skipped": dict(self.skipped),
            "top": [[name, value] for name, value in self.top(10)],
        }

    def to_records(self) -> list[dict]:
        """One row per (component, task): the restored fraction (None where undefined)."""
        return [
            {"component": c, "task": t, "score": None if np.isnan(v[i]) else float(v[i])}
            for i, c in enumerate(self.components)
            for t, v in self.scores.items()
        ]

    def _repr_html_(self) -> str:
        title = f"{self.method} patching of {len(self.components)} components ({self.pair_kind})"
        return result_html(title, self.findings(), self.plot(), self.to_records())

    def save_json(self, path) -> Path:
        data = json.dumps(self.to_json(), indent=1).encode()
        return atomic_write(path, lambda handle: handle.write(data))

    def findings(self) -> list[str]:
        label = {"activation": "Activation patching", "atp": "AtP", "atp*": "AtP*"}[self.method]
        top = self.top(3)
        gap = self.clean_logprob["all"] - self.corrupted_logprob["all"]
        out = [
            f"{label} on {sum(v for k, v in self.n_pairs.items() if k != 'all')} "
            f"{self.pair_kind} pairs: the clean answer's log-prob drops by {gap:.1f} nats "
            f"when the prompt is corrupted."
        ]
        if top:
            parts = ", ".join(f"{n} {v:+.2f}" for n, v in top)
            out.append(f"Largest restorations (fraction of the gap): {parts}.")
        heads = [c for c in self.components if _kind(c) == "head"]
        if heads and len(heads) < len(self.components):
            s = {c: self.score(c) for c in heads}
            best = max(s, key=lambda c: abs(s[c]))
            out.append(f"Strongest head: {best} ({s[best]:+.2f}).")
        tasks = [t for t in self.scores if t != "all"]
        if top and len(tasks) > 1:
            name = top[0][0]
            per = {t: self.score(name, t) for t in tasks}
            hi = max(per, key=lambda t: np.nan_to_num(per[t], nan=-np.inf))
            lo = min(per, key=lambda t: np.nan_to_num(per[t], nan=np.inf))
            out.append(
                f"{name} restores most on {hi} ({per[hi]:+.2f}), least on {lo} ({per[lo]:+.2f})."
            )
        return out[:4]

    def plot(self, path: str | Path | None = None, limit: float | None = None) -> Figure:
        """Heat map layer x head (heads), layer x position block (resid), else the top bars.
        `limit`: the colour scale's +- bound (default: this result's largest |score|), so that
        several results can share one scale."""
        plt = pyplot()
        s = self.scores["all"]
        kinds = {_kind(c) for c in self.components}
        title = f"{self.method} ({self.pair_kind} pairs): restored fraction, all tasks"
        if kinds == {"head"}:
            grid = np.full((self.n_layers, self.n_heads), np.nan)
            for name, v in zip(self.components, s, strict=True):
                layer, head = map(int, re.match(r"L(\d+)H(\d+)", name).groups())
                grid[layer, head] = v
            fig, ax = plt.subplots(figsize=(1.2 + 0.9 * self.n_heads, 1.0 + 0.7 * self.n_layers))
            _heat(fig, ax, grid, "head", "layer", list(range(self.n_heads)), limit)
            for (i, j), v in np.ndenumerate(grid):
                if np.isfinite(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8)
        elif kinds == {"resid"}:
            blocks = list(
                dict.fromkeys(_RESID.match(c).group(0).split("[")[1] for c in self.components)
            )
            layers = sorted({int(c[1:].split(".")[0]) for c in self.components})
            grid = np.full((len(layers), len(blocks)), np.nan)
            for name, v in zip(self.components, s, strict=True):
                layer, block = int(name[1:].split(".")[0]), name.split("[")[1]
                grid[layers.index(layer), blocks.index(block)] = v
            fig, ax = plt.subplots(
                figsize=(max(6.0, 0.16 * len(blocks) + 2), 1.2 + 0.5 * len(layers))
            )
            _heat(fig, ax, grid, "position block", "resid entering layer", None, limit)
            ax.set_yticks(range(len(layers)), [str(x) for x in layers])
            step = max(1, len(blocks) // 24)
            ax.set_xticks(
                range(0, len(blocks), step),
                [b.rstrip("]") for b in blocks[::step]],
                rotation=90,
                fontsize=7,
            )
        else:
            top = self.top(20)
            fig, ax = plt.subplots(figsize=(7, 0.8 + 0.28 * len(top)))
            ax.barh([n for n, _ in top][::-1], [v for _, v in top][::-1], color="tab:blue")
            ax.axvline(0, color="k", lw=0.6)
            ax.set_xlabel("restored fraction of the clean log-prob")
        ax.set_title(title, fontsize=9)
        fig.tight_layout()
        return finish(fig, path)


def _kind(name: str) -> str:
    if ".resid[" in name:
        return "resid"
    m = re.match(r"^L\d+(?:\.(attn|mlp)|(H)\d+|(N)\d+)$", name)
    if m is None:
        return "other"
    return m.group(1) or ("head" if m.group(2) else "neuron")


def _heat(fig, ax, grid, xlabel, ylabel, xticks, limit: float | None = None):
    lim = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
    lim = lim if limit is None else limit
    im = ax.imshow(grid, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    fig.colorbar(im, ax=ax, fraction=0.05, label="restored fraction of the clean log-prob")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if xticks is not None:
        ax.set_xticks(range(len(xticks)), [str(x) for x in xticks])
    ax.set_yticks(range(grid.shape[0]))


# ---------------------------------------------------------------- metric and scoring


def answer_logprob(logits: torch.Tensor, answer: torch.Tensor) -> torch.Tensor:
    """[b] summed log-prob of answer [b, cells] under logits [b, cells, vocab] (same cells)."""
    logp = F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    return logp.gather(-1, answer[..., None]).squeeze(-1).sum(-1)


def normalised_scores(
    patched: np.ndarray, clean: np.ndarray, corrupted: np.ndarray, tasks: np.ndarray
) -> dict[str, np.ndarray]:
    """patched [C, n] metric (or corrupted + an estimated change) -> task -> [C] restoration:
    (mean patched - mean corrupted) / (mean clean - mean corrupted), per task and pooled."""
    out = {}
    groups = {str(t): tasks == t for t in dict.fromkeys(tasks.tolist())}
    groups["all"] = np.ones(len(tasks), dtype=bool)
    for t, rows in groups.items():
        gap = clean[rows].mean() - corrupted[rows].mean()
        change = patched[:, rows].mean(1) - corrupted[rows].mean()
        out[t] = change / gap if abs(gap) > 1e-6 else np.full(len(patched), np.nan)
    return out


def per_task_mean(values: np.ndarray, tasks: np.ndarray) -> dict[str, float]:
    out = {str(t): float(values[tasks == t].mean()) for t in dict.fromkeys(tasks.tolist())}
    out["all"] = float(values.mean())
    return out


def task_counts(tasks: np.ndarray) -> dict[str, int]:
    out = {str(t): int((tasks == t).sum()) for t in dict.fromkeys(tasks.tolist())}
    out["all"] = len(tasks)
    return out


def check_pairs(model, pairs: PairSet) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated (clean, corrupted) run tokens on the model's device."""
    if not isinstance(pairs, PairSet):
        raise PairError(f"expected a PairSet (from make_pairs), got {type(pairs).__name__}")
    clean, corrupted = as_tokens(pairs)
    if clean.shape != corrupted.shape:
        raise PairError(f"clean {list(clean.shape)} and corrupted {list(corrupted.shape)} differ")
    clean = model.check_tokens(clean.to(model.device))
    corrupted = model.check_tokens(corrupted.to(model.device))
    return clean, corrupted


# ---------------------------------------------------------------- patching through hooks


@torch.no_grad()
def patched_logprob(
    model, pairs: PairSet, components: str | Sequence[str] = (), batch_size: int = 32
) -> torch.Tensor:
    """[n] clean-answer log-prob of the corrupted run with ALL `components` patched in together
    from the clean run, through ordinary forward hooks (no components: the corrupted run)."""
    clean, corrupted = check_pairs(model, pairs)
    names = expand_components(model.cfg, components) if components else []
    sites = [parse_site(n, model.cfg) for n in names]
    by_hook: dict[str, list[Site]] = {}
    for s in sites:
        by_hook.setdefault(s.hook_name, []).append(s)
    cells = predicted_cells(clean)
    out = []
    for lo in range(0, len(clean), batch_size):
        c, x = clean[lo : lo + batch_size], corrupted[lo : lo + batch_size]
        _, cache = model.run_with_cache(c, names=list(by_hook))
        hooks = [(h, _patch_hook(cache[h], group)) for h, group in by_hook.items()]
        logits = model.run_with_hooks(x, fwd_hooks=hooks)
        out.append(answer_logprob(logits[:, cells], c[:, cells]).cpu())
    return torch.cat(out)


def _patch_hook(clean_act: torch.Tensor, group: list[Site]):
    def hook(act, point):
        out = act.clone()
        for s in group:
            if s.kind in ("head", "neuron"):
                out[:, :, s.index] = clean_act[:, :, s.index]
            elif s.kind == "resid":
                out[:, s.start : s.stop] = clean_act[:, s.start : s.stop]
            else:
                out[...] = clean_act
        return out

    return hook


# ---------------------------------------------------------------- the sweep


def _ln(ln, x):
    return F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)


def _mlp_half(block, x):
    y = _ln(block.ln2, x)
    return x + block.mlp.fc_out(F.relu(block.mlp.fc_in(y), inplace=True))


def _last_block(model, block, x, qf: int):
    """The block on x [b, t, d] with queries only at positions >= qf: returns [b, t - qf, d]."""
    cfg = model.cfg
    n, t, d = x.shape
    h, dk, dv = cfg.n_heads, cfg.d_head, cfg.d_value
    a = block.attn
    y = _ln(block.ln1, x)
    k = F.linear(y, a.w_k.reshape(h * dk, d)).view(n, t, h, dk).transpose(1, 2)
    v = F.linear(y, a.w_v.reshape(h * dv, d)).view(n, t, h, dv).transpose(1, 2)
    q = F.linear(y[:, qf:], a.w_q.reshape(h * dk, d)).view(n, t - qf, h, dk).transpose(1, 2)
    mask = (
        torch.arange(t, device=x.device)[None, :] <= torch.arange(qf, t, device=x.device)[:, None]
    )
    z = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    x = x[:, qf:] + z.transpose(1, 2).reshape(n, t - qf, h * dv) @ a.w_o
    return _mlp_half(block, x)


def _tail(model, x: torch.Tensor, layer: int, part: str, qf: int) -> torch.Tensor:
    """Logits at positions >= qf from the residual stream x at (layer, part): "pre" enters the
    block, "mid" is after its attention, "post" after its MLP."""
    n_layers = model.cfg.n_layers
    sliced = False
    if part == "mid":
        if layer == n_layers - 1:
            x, sliced = x[:, qf:], True
        x = _mlp_half(model.blocks[layer], x)
        layer += 1
    elif part == "post":
        layer += 1
    for j in range(layer, n_layers):
        if j == n_layers - 1:
            x, sliced = _last_block(model, model.blocks[j], x, qf), True
        else:
            x = model.run_blocks(x, j, j + 1)
    return model.unembed(x if sliced else x[:, qf:])


_PART = {"attn": "mid", "head": "mid", "mlp": "post", "neuron": "post", "resid": "pre"}


def _caches(model, tokens: torch.Tensor, sites: list[Site]) -> tuple[torch.Tensor, dict]:
    """Logits and the activations the sweep needs: the sites' hooks and their start points."""
    names = {s.hook_name for s in sites}
    for s in sites:
        layer, part = _start(s, model.cfg.n_layers)
        names.add(_resid_name(layer, part))
    logits, cache = model.run_with_cache(tokens, names=sorted(names))
    return logits, dict(cache.items())


def _start(s: Site, n_layers: int) -> tuple[int, str]:
    if s.kind == "resid" and s.layer == n_layers:
        return n_layers - 1, "post"
    return s.layer, _PART[s.kind]


def _resid_name(layer: int, part: str) -> str:
    return f"blocks.{layer}.hook_resid_{part}"


def _deltas(model, sites: list[Site], clean: dict, corrupt: dict) -> torch.Tensor:
    """[k, b, t, d] the patched residual stream minus the corrupted one at the sites' start."""
    cfg = model.cfg
    s0 = sites[0]
    diff = clean[s0.hook_name] - corrupt[s0.hook_name]
    if s0.kind == "head":
        w_o = model.blocks[s0.layer].attn.w_o.view(cfg.n_heads, cfg.d_value, cfg.d_model)
        idx = torch.tensor([s.index for s in sites], device=diff.device)
        return torch.einsum("btkv,kvd->kbtd", diff[:, :, idx], w_o[idx])
    if s0.kind == "neuron":
        w_out = model.blocks[s0.layer].mlp.fc_out.weight  # [d, d_mlp]
        idx = torch.tensor([s.index for s in sites], device=diff.device)
        return torch.einsum("btk,dk->kbtd", diff[:, :, idx], w_out[:, idx])
    if s0.kind == "resid":
        out = torch.zeros((len(sites), *diff.shape), dtype=diff.dtype, device=diff.device)
        for i, s in enumerate(sites):
            out[i, :, s.start : s.stop] = diff[:, s.start : s.stop]
        return out
    return diff[None].expand(len(sites), *diff.shape)


def _moves(sites: list[Site], clean: dict, corrupt: dict) -> list[bool]:
    """Whether each site's activation differs between the runs anywhere in this chunk."""
    s0 = sites[0]
    differs = clean[s0.hook_name] != corrupt[s0.hook_name]
    if s0.kind in ("head", "neuron"):
        per_index = differs.flatten(3).any(-1) if differs.dim() > 3 else differs
        per_index = per_index.any(1).any(0)
        return [bool(per_index[s.index]) for s in sites]
    if s0.kind == "resid":
        per_pos = differs.any(-1).any(0)
        return [bool(per_pos[s.start : s.stop].any()) for s in sites]
    return [bool(differs.any())] * len(sites)


@torch.no_grad()
def _sweep(model, sites: list[Site], clean_tok, corrupt_tok, batch_size: int, chunk: int):
    """[C, n] clean-answer log-prob with each site patched alone, and [n] clean / corrupted."""
    n_layers = model.cfg.n_layers
    qf = predicted_cells(clean_tok).start
    groups: dict[tuple, list[int]] = {}
    for i, s in enumerate(sites):
        groups.setdefault((*_start(s, n_layers), s.kind, s.hook_name), []).append(i)
    patched = torch.empty(len(sites), len(clean_tok))
    base_c, base_x = [], []
    for lo in range(0, len(clean_tok), chunk):
        c, x = clean_tok[lo : lo + chunk], corrupt_tok[lo : lo + chunk]
        b = len(c)
        answer = c[:, qf:]
        logits_c, cache_c = _caches(model, c, sites)
        logits_x, cache_x = _caches(model, x, sites)
        base_c.append(answer_logprob(logits_c[:, qf:], answer).cpu())
        base_x.append(answer_logprob(logits_x[:, qf:], answer).cpu())
        per = max(1, batch_size // b)
        for (layer, part, _, _), group in groups.items():
            resid = cache_x[_resid_name(layer, part)]
            moved = _moves([sites[i] for i in group], cache_c, cache_x)
            members = [i for i, keep in zip(group, moved, strict=True) if keep]
            for i in group:  # patching an unchanged activation is the identity
                patched[i, lo : lo + b] = base_x[-1]
            for k in range(0, len(members), per):
                ids = members[k : k + per]
                delta = _deltas(model, [sites[i] for i in ids], cache_c, cache_x)
                stacked = (resid[None] + delta).reshape(-1, *resid.shape[1:])
                logits = _tail(model, stacked, layer, part, qf)
                m = answer_logprob(logits, answer.repeat(len(ids), 1)).view(len(ids), b)
                patched[ids, lo : lo + b] = m.cpu()
    return patched.numpy(), torch.cat(base_c).numpy(), torch.cat(base_x).numpy()


def activation_patching(
    model,
    pairs: PairSet,
    components: str | Sequence[str] = "heads",
    resid_block: str = "row",
    batch_size: int = 256,
    chunk: int = 16,
) -> PatchingResult:
    """Patch each component alone from the clean run into the corrupted run (denoising) and
    score the restored share of the clean answer's log-prob, per task.

    batch_size: sequences per forward (patched copies x quizzes); chunk: quizzes whose caches
    are held at once.
    """
    if batch_size < 1 or chunk < 1:
        raise ConfigError(f"batch_size and chunk must be >= 1, got {batch_size}, {chunk}")
    clean, corrupted = check_pairs(model, pairs)
    names = expand_components(model.cfg, components, resid_block)
    sites = [parse_site(n, model.cfg) for n in names]
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        patched, m_c, m_x = _sweep(model, sites, clean, corrupted, batch_size, chunk)
    finally:
        model.train(was_training)
    tasks = pairs.tasks
    return PatchingResult(
        method="activation",
        pair_kind=pairs.kind,
        components=names,
        scores=normalised_scores(patched, m_c, m_x, tasks),
        clean_logprob=per_task_mean(m_c, tasks),
        corrupted_logprob=per_task_mean(m_x, tasks),
        n_pairs=task_counts(tasks),
        seconds=time.perf_counter() - t0,
        n_layers=model.cfg.n_layers,
        n_heads=model.cfg.n_heads,
        skipped=dict(pairs.skipped),
    )
