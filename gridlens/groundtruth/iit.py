"""Interchange interventions, IIT / strict IIT (SIIT) training and the IIA / SIIA metrics.

Interventions are batched: every example of a batch carries its own boolean mask per node, and
a forward pass over the batch splices the source activations into the masked nodes with
``torch.where`` inside a hook (no Python loop over examples or nodes). A training step runs B
clean rows (behaviour loss; they also serve as the sources: each example's source is another
row of the batch, whose clean activations are spliced in, so no separate source pass is run),
B rows with one correspondence node per example patched (IIT loss, target = the high-level
model under the same interchange) and B rows with unused nodes patched (strict loss, target =
the base label). The gradient flows through the spliced source activations too (the gradient
of the interchange objective; ``source_grad=False`` treats them as a detached cache, as
TransformerLens-based IIT code does). A patched row starts from the clean row's activations
just before its first patched site instead of from the embedding. The three losses are
weighted once each and summed; one optimiser step is taken on the sum.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gridlens.errors import CheckpointError, ConfigError
from gridlens.groundtruth.spec import Benchmark, Site
from gridlens.integrity import (
    load_pickle,
    seal_payload,
    seal_safetensors,
    verify_payload,
    verify_safetensors,
)
from gridlens.io import atomic_write
from gridlens.training.checkpoint import restore

STRICT_MODES = ("one", "half", "all")


# ----------------------------------------------------------------------------- interventions


def _site_mask(entries: Sequence[tuple[Site, torch.Tensor]], act: torch.Tensor) -> torch.Tensor:
    """Boolean mask broadcastable to ``act`` [batch, pos, ...]: true on the activations of
    every (site, per-example mask) entry."""
    full = torch.zeros((act.shape[0], 1, *act.shape[2:]), dtype=torch.bool, device=act.device)
    for site, mask in entries:
        m = mask.to(act.device)
        if site.head is not None:
            if site.dims is None:
                full[:, 0, site.head, :] |= m[:, None]
            else:
                full[:, 0, site.head, site.dims[0] : site.dims[1]] |= m[:, None]
        elif site.dims is not None:
            full[:, 0, site.dims[0] : site.dims[1]] |= m[:, None]
        else:
            full |= m.view(-1, *([1] * (full.dim() - 1)))
    return full


def _by_hook(site_masks: Mapping[Site, torch.Tensor]) -> dict[str, list[tuple[Site, torch.Tensor]]]:
    by_hook: dict[str, list[tuple[Site, torch.Tensor]]] = {}
    for site, mask in site_masks.items():
        by_hook.setdefault(site.hook, []).append((site, mask))
    return by_hook


def patch_hooks(
    site_masks: Mapping[Site, torch.Tensor], source: Mapping[str, torch.Tensor]
) -> list[tuple[str, Callable]]:
    """Forward hooks that replace, for every example b with ``site_masks[site][b]`` true, the
    site's activation by ``source[site.hook][b]`` (a cached activation of the same shape as the
    hooked tensor). Sites on the same hook are combined into one ``torch.where``."""
    hooks = []
    for hook, entries in _by_hook(site_masks).items():
        src = source[hook]

        def fn(act: torch.Tensor, point, entries=entries, src=src) -> torch.Tensor:
            if act.shape != src.shape:
                raise ConfigError(
                    f"patching {point.name}: source activation of shape "
                    f"{tuple(src.shape)}, hooked tensor {tuple(act.shape)}"
                )
            return torch.where(_site_mask(entries, act), src, act)

        hooks.append((hook, fn))
    return hooks


def source_cache(model, source: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        _, cache = model.run_with_cache(source, names=list(names))
    return {k: cache[k] for k in names}


def hl_interchange(
    bench: Benchmark,
    base: torch.Tensor,
    source_values: Mapping[str, torch.Tensor],
    node_masks: Sequence[torch.Tensor],
) -> torch.Tensor:
    """High-level output of ``base`` with node i's variables taken from the source where
    ``node_masks[i]`` is true."""
    patches = {}
    for node, mask in zip(bench.nodes, node_masks, strict=True):
        if bool(mask.any()):
            for var in node.variables:
                patches[var] = (mask, source_values[var])
    return bench.run_high_level(base, patches)["output"]


# ----------------------------------------------------------------------------- training


@dataclass
class TrainConfig:
    batch_size: int = 256
    n_train_per_task: int = 5632  # 22 batches of 256 for one task
    n_val_per_task: int = 2000
    max_epochs: int = 200
    lr: float = 1e-3
    lr_end: float = 2e-4  # linear decay to this over max_epochs
    betas: tuple[float, float] = (0.9, 0.9)
    weight_behaviour: float = 0.4
    weight_iit: float = 1.0
    weight_strict: float = 0.4
    strict_mode: str = "half"
    informative: float = 0.0  # share of IIT sources chosen to change the output (choose_sources)
    candidates: int = 4  # sources drawn per example to choose from
    source_grad: bool = True  # differentiate through the sources too (docs/groundtruth.md)
    threshold_accuracy: float = 1.0
    threshold_iia: float = 0.993
    threshold_siia: float = 0.9995
    eval_every: int = 1
    extra_epochs: int = 0  # keep training this long after first meeting the thresholds
    seed: int = 0
    threads: int = 0  # 0: torch's default

    def __post_init__(self) -> None:
        if self.strict_mode not in STRICT_MODES:
            raise ConfigError(
                f"strict_mode must be one of {STRICT_MODES}, got {self.strict_mode!r}"
            )
        if self.batch_size < 2:
            raise ConfigError("batch_size must be >= 2 (sources are drawn from the batch)")
        if not 0.0 <= self.informative <= 1.0:
            raise ConfigError(f"informative must be in [0, 1], got {self.informative}")
        if self.candidates < 1:
            raise ConfigError(f"candidates must be >= 1, got {self.candidates}")
        self.betas = tuple(self.betas)
        self._check_numbers()

    def _check_numbers(self) -> None:
        """Counts >= 1, a positive learning rate, Adam betas in [0, 1), finite weights >= 0."""
        for name in ("max_epochs", "eval_every", "n_train_per_task", "n_val_per_task"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0 and math.isfinite(self.lr_end)):
            raise ConfigError(f"lr must be > 0 and lr_end finite, got {self.lr}, {self.lr_end}")
        if self.lr_end < 0:
            raise ConfigError(f"lr_end must be >= 0, got {self.lr_end}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"betas must be two numbers in [0, 1), got {self.betas}")
        weights = (self.weight_behaviour, self.weight_iit, self.weight_strict)
        if not all(math.isfinite(w) and w >= 0 for w in weights):
            raise ConfigError(f"loss weights must be finite and >= 0, got {weights}")
        if self.seed < 0 or self.threads < 0 or self.extra_epochs < 0:
            raise ConfigError("seed, threads and extra_epochs must be >= 0")


@dataclass
class StepLosses:
    behaviour: torch.Tensor
    iit: torch.Tensor
    strict: torch.Tensor
    total: torch.Tensor


def masked_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over positions whose target is not -1 (0 if there are none)."""
    flat = target.reshape(-1)
    if not bool((flat >= 0).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), flat, ignore_index=-1)


def sample_masks(
    bench: Benchmark, batch: int, mode: str, gen: torch.Generator
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-example masks: one correspondence node per example (IIT), and unused nodes per the
    strict mode: ``one`` (one per example), ``half`` (each with probability 0.5), ``all``."""
    n_nodes, n_unused = len(bench.nodes), len(bench.unused)
    pick = torch.randint(n_nodes, (batch,), generator=gen)
    iit = [pick == i for i in range(n_nodes)]
    if n_unused == 0:
        return iit, []
    if mode == "one":
        u = torch.randint(n_unused, (batch,), generator=gen)
        strict = [u == j for j in range(n_unused)]
    elif mode == "half":
        strict = list(torch.rand((n_unused, batch), generator=gen) < 0.5)
    else:
        strict = [torch.ones(batch, dtype=torch.bool) for _ in range(n_unused)]
    return iit, strict


def choose_sources(
    bench: Benchmark,
    base: torch.Tensor,
    values: Mapping[str, torch.Tensor],
    iit_masks: Sequence[torch.Tensor],
    first: torch.Tensor,
    informative: float,
    candidates: int,
    gen: torch.Generator,
) -> torch.Tensor:
    """Source of every example, as an index into the batch.

    Each example has ``candidates`` sources: ``first`` (a random permutation of the batch,
    drawn by the caller), then uniform rows. With probability ``informative`` it takes the
    candidate under which the high-level interchange of its node changes the most labels
    (ties: the earliest); otherwise ``first``'s. Why: for many (base, source) pairs an
    interchange leaves the high-level output unchanged (parenthesis: only positions at
    elevation 0 depend on ``dipped``), so a uniform source carries little signal about the
    patched variable. Re-weighting the pairs this way keeps every pair possible and the same
    exact solution (the model must match the counterfactual on all pairs), but makes the
    informative ones common."""
    b = len(base)
    if informative <= 0 or candidates < 2:
        return first
    cand = torch.cat([first[None], torch.randint(b, (candidates - 1, b), generator=gen)])
    flat = cand.reshape(-1)
    target = hl_interchange(
        bench,
        base.repeat(candidates, 1),
        {k: v[flat] for k, v in values.items()},
        [m.repeat(candidates) for m in iit_masks],
    ).view(candidates, b, -1)
    changed = (target != values["output"][None]).sum(-1)  # [candidates, b]
    best = changed.argmax(0)  # first maximum
    use = torch.rand(b, generator=gen) < informative
    pick = torch.where(use, best, torch.zeros_like(best))
    return cand.gather(0, pick[None])[0]


# Where a forward pass that patches a hook can start inside its block (see GridGPT.run_blocks):
# 0 = the block's input, 1 = its head outputs, 2 = its MLP activations, 3 = its MLP output.
_ENTRY_STAGE = {
    "hook_resid_pre": 0,
    "attn.hook_z": 1,
    "hook_attn_out": 1,
    "hook_resid_mid": 1,
    "mlp.hook_post": 2,
    "hook_mlp_out": 3,
    "hook_resid_post": 3,
}
# The clean activations a row entering at each stage starts from, and the run_blocks argument
# that takes the second one.
_ENTRY_TENSORS = {
    0: ("hook_resid_pre",),
    1: ("hook_resid_pre", "attn.hook_z"),
    2: ("hook_resid_mid", "mlp.hook_post"),
    3: ("hook_resid_mid", "hook_mlp_out"),
}
_ENTRY_ARGUMENT = {1: "head_outputs", 2: "mlp_post", 3: "mlp_out"}
_STAGES = 4
_UNPATCHED = 1 << 30


def _entry(site: Site) -> int:
    """_STAGES * layer + stage: rows whose earliest patched site has this code share every
    activation before it with their clean row."""
    return _STAGES * site.layer + _ENTRY_STAGE[site.hook.split(".", 2)[2]]


def patched_logits(
    model,
    base: torch.Tensor,
    site_masks: Mapping[Site, torch.Tensor],
    source_index: torch.Tensor,
    source_grad: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(clean logits of ``base`` [b, ...], patched logits [r, ...]): patched row i is base row
    ``i % b`` with every site whose mask (length r, a multiple of b) is true there taking the
    activation of base row ``source_index[i % b]``. The sources are detached (as if cached)
    unless ``source_grad``: then the gradient also flows into the source rows' activations,
    which makes it the gradient of the interchange objective itself.

    The patched rows are not recomputed from the embedding: they are grouped by their earliest
    patched site and continue from the clean pass's activations at that point (GridGPT.run_blocks
    entering at the block input, the head outputs, the MLP activations or the MLP output). The
    shared prefix is one node of the autograd graph, so values and gradients equal those of full
    forward passes."""
    b = len(base)
    sites = list(site_masks)
    if not sites:
        clean = model(base)
        return clean, clean[:0]
    masks = torch.stack([site_masks[s] for s in sites])  # [sites, rows]
    site_codes = torch.tensor([_entry(s) for s in sites])
    entry = torch.where(masks, site_codes[:, None], _UNPATCHED).amin(0)
    codes = sorted(set(entry.tolist()) - {_UNPATCHED})
    names = {site.hook for site in sites}
    for code in codes:
        layer, stage = divmod(code, _STAGES)
        names.update(f"blocks.{layer}.{rest}" for rest in _ENTRY_TENSORS[stage])
    store: dict[str, torch.Tensor] = {}

    def keep(x: torch.Tensor, point) -> None:
        store[point.name] = x

    clean = model.run_with_hooks(base, fwd_hooks=[(name, keep) for name in sorted(names)])
    hooks_patched = {s.hook for s in sites}
    sources = {h: store[h] if source_grad else store[h].detach() for h in hooks_patched}
    parts, rows_in_order = [], []
    untouched = torch.nonzero(entry == _UNPATCHED).squeeze(1)
    if len(untouched):
        parts.append(clean.index_select(0, untouched % b))
        rows_in_order.append(untouched)
    for code in codes:
        rows = torch.nonzero(entry == code).squeeze(1)
        at = rows % b
        group = masks[:, rows]
        present = group.any(1).tolist()
        group_masks = {s: group[i] for i, s in enumerate(sites) if present[i]}
        src_rows = source_index[at]
        group_sources = {s.hook: sources[s.hook].index_select(0, src_rows) for s in group_masks}
        hooks = patch_hooks(group_masks, group_sources)
        layer, stage = divmod(code, _STAGES)
        tensors = [
            store[f"blocks.{layer}.{rest}"].index_select(0, at) for rest in _ENTRY_TENSORS[stage]
        ]
        entry_point = {_ENTRY_ARGUMENT[stage]: tensors[1]} if stage else {}
        x = model.run_blocks(tensors[0], layer, fwd_hooks=hooks, **entry_point)
        parts.append(model.unembed(x))
        rows_in_order.append(rows)
    if not parts:
        return clean, clean[:0]
    # index_select, not [...]: its backward is index_add, much cheaper than index_put here
    return clean, torch.cat(parts).index_select(0, torch.argsort(torch.cat(rows_in_order)))


def siit_losses(
    model,
    bench: Benchmark,
    base: torch.Tensor,
    values: Mapping[str, torch.Tensor],
    source_index: torch.Tensor,
    iit_masks: Sequence[torch.Tensor],
    strict_masks: Sequence[torch.Tensor],
    weights: tuple[float, float, float],
    source_grad: bool = True,
) -> StepLosses:
    """The three losses on one batch; total = the weighted sum, each weight applied exactly
    once. ``values`` are the high-level variables of ``base`` (``values["output"]`` the
    labels); the sources are ``base[source_index]``, read from the clean pass (no separate
    source forward). The IIT rows (one node patched each) and the strict rows (unused nodes
    patched) share the clean pass's activations up to their first patch (:func:`patched_logits`)."""
    b = len(base)
    labels = values["output"]
    off = torch.zeros(b, dtype=torch.bool)
    masks: dict[Site, torch.Tensor] = {}
    for node, m in zip(bench.nodes, iit_masks, strict=True):
        masks[node.site] = torch.cat([m, off])
    for site, m in zip(bench.unused, strict_masks, strict=True):
        masks[site] = torch.cat([off, m])
    clean, patched = patched_logits(model, base, masks, source_index, source_grad)
    source_values = {k: v[source_index] for k, v in values.items()}
    iit_target = hl_interchange(bench, base, source_values, iit_masks)
    lb = masked_ce(clean, labels)
    li = masked_ce(patched[:b], iit_target)
    ls = masked_ce(patched[b:], labels) if strict_masks else clean.sum() * 0.0
    wb, wi, ws = weights
    return StepLosses(lb, li, ls, wb * lb + wi * li + ws * ls)


# ----------------------------------------------------------------------------- evaluation


def _acc(
    logits: torch.Tensor, target: torch.Tensor, task_ids: torch.Tensor, n_tasks: int
) -> tuple[float, list[float]]:
    ok = logits.argmax(-1) == target
    valid = target >= 0
    total = float((ok & valid).sum() / valid.sum().clamp(min=1))
    per = []
    for k in range(n_tasks):
        sel = task_ids == k
        v = valid[sel]
        per.append(float((ok[sel] & v).sum() / v.sum().clamp(min=1)))
    return total, per


def min_margin(logits: torch.Tensor, target: torch.Tensor) -> float:
    """The smallest (true-class logit - best other logit) over labelled positions: negative
    iff some label is wrong. Why: accuracy 1.0 on a validation set says nothing about how close
    the model is to the errors a fresh draw finds; the margin does."""
    valid = target >= 0
    if not bool(valid.any()):
        return float("inf")
    logits, target = logits[valid], target[valid]
    true = logits.gather(-1, target[:, None])[:, 0]
    other = logits.scatter(-1, target[:, None], float("-inf")).amax(-1)
    return float((true - other).min())


@torch.no_grad()
def evaluate(
    model,
    bench: Benchmark,
    tokens: torch.Tensor,
    source_perm: torch.Tensor | None = None,
    chunk: int = 1024,
) -> dict:
    """Accuracy, IIA per node (and mean over nodes), SIIA per unused node (mean, and with all
    unused nodes patched at once), each also per task. Sources are ``tokens[source_perm]``
    (a fixed derangement-like permutation by default)."""
    model.eval()
    n = len(tokens)
    if source_perm is None:
        source_perm = torch.roll(torch.arange(n), 1)
    source = tokens[source_perm]
    values = bench.run_high_level(tokens)
    src_values = {k: v[source_perm] for k, v in values.items()}
    labels = values["output"]
    task_ids = bench.task_ids(tokens)
    n_tasks = len(bench.tasks)
    task_names = [t.name for t in bench.tasks]

    # every intervention of the evaluation, as the sites it patches: each node, each unused
    # node, then all unused nodes at once
    variants = [[node.site] for node in bench.nodes] + [[site] for site in bench.unused]
    if bench.unused:
        variants.append(list(bench.unused))
    clean_parts: list[torch.Tensor] = []
    variant_parts: list[list[torch.Tensor]] = [[] for _ in variants]
    for a in range(0, n, chunk):
        base = tokens[a : a + chunk]
        c = len(base)
        # the chunk's sources ride along as extra rows, so every variant shares one clean pass
        # and starts at its first patched site (patched_logits)
        both = torch.cat([base, source[a : a + chunk]])
        source_index = torch.cat([torch.arange(c, 2 * c), torch.arange(c)])
        masks: dict[Site, torch.Tensor] = {}
        for v, sites in enumerate(variants):
            for site in sites:
                m = masks.setdefault(site, torch.zeros(len(variants) * 2 * c, dtype=torch.bool))
                m[v * 2 * c : v * 2 * c + c] = True
        clean, patched = patched_logits(model, both, masks, source_index, source_grad=False)
        clean_parts.append(clean[:c])
        for v in range(len(variants)):
            variant_parts[v].append(patched[v * 2 * c : v * 2 * c + c])
    logits = [torch.cat(parts) for parts in variant_parts]

    def score(logits: torch.Tensor, target: torch.Tensor) -> tuple[float, list[float]]:
        return _acc(logits, target, task_ids, n_tasks)

    clean = torch.cat(clean_parts)
    acc, acc_per = score(clean, labels)
    out: dict = {"accuracy": acc, "accuracy_per_task": dict(zip(task_names, acc_per, strict=True))}
    out["margin"] = min_margin(clean, labels)
    iia_nodes, iia_per_task = {}, np.zeros(n_tasks)
    for i, node in enumerate(bench.nodes):
        node_masks = [torch.full((n,), j == i) for j in range(len(bench.nodes))]
        target = hl_interchange(bench, tokens, src_values, node_masks)
        a, per = score(logits[i], target)
        iia_nodes[node.label] = a
        iia_per_task += np.array(per)
    out["iia"] = float(np.mean(list(iia_nodes.values())))
    out["iia_per_node"] = iia_nodes
    out["iia_per_task"] = dict(
        zip(task_names, (iia_per_task / len(bench.nodes)).tolist(), strict=True)
    )
    siia_nodes, siia_per_task = {}, np.zeros(n_tasks)
    for j, site in enumerate(bench.unused):
        a, per = score(logits[len(bench.nodes) + j], labels)
        siia_nodes[site.label] = a
        siia_per_task += np.array(per)
    if bench.unused:
        out["siia"] = float(np.mean(list(siia_nodes.values())))
        out["siia_per_task"] = dict(
            zip(task_names, (siia_per_task / len(bench.unused)).tolist(), strict=True)
        )
        out["siia_all_unused"] = score(logits[-1], labels)[0]
    else:
        out["siia"] = 1.0
        out["siia_per_task"] = dict.fromkeys(task_names, 1.0)
        out["siia_all_unused"] = 1.0
    out["siia_per_node"] = siia_nodes
    return out


def reached(metrics: Mapping, cfg: TrainConfig) -> bool:
    return (
        metrics["accuracy"] >= cfg.threshold_accuracy - 1e-12
        and metrics["iia"] >= cfg.threshold_iia
        and metrics["siia"] >= cfg.threshold_siia
    )


# ----------------------------------------------------------------------------- training loop


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)
    reached_epoch: int | None = None
    reached_seconds: float | None = None
    seconds_per_epoch: float = 0.0
    final: dict = field(default_factory=dict)
    best_epoch: int | None = None  # the kept epoch (the largest margin among those that pass)
    best_state: dict | None = field(default=None, repr=False)

    def consider(self, epoch: int, metrics: Mapping, model) -> None:
        """Keep ``model``'s weights if this evaluation passes and has the largest margin yet."""
        best = self.history[self.best_epoch - 1] if self.best_epoch else None
        if best is None or metrics["margin"] > best.get("margin", float("-inf")):
            self.best_epoch = epoch
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def finished(self, epoch: int, cfg: TrainConfig) -> bool:
        return self.reached_epoch is not None and epoch >= self.reached_epoch + cfg.extra_epochs


def make_model(bench: Benchmark, seed: int = 0):
    from gridlens.models import GridGPT

    return GridGPT(bench.config, seed=seed)


_STATE_TYPES = {"history": list, "epoch": int, "elapsed": float, "generator": torch.Tensor}


def _save_train_state(path: Path, state: dict) -> None:
    """Write the resumable training state atomically, with its checksum."""
    atomic_write(path, lambda handle: torch.save(seal_payload(state), handle))


def _load_train_state(path: Path) -> dict:
    """The training state written by `_save_train_state`: weights-only, checksum verified, and
    of the expected shape (a foreign or damaged file is a CheckpointError)."""
    state = load_pickle(path, "ground-truth training state")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a ground-truth training state")
    verify_payload(state, path)
    for key, kind in _STATE_TYPES.items():
        if not isinstance(state.get(key), kind):
            raise CheckpointError(f"{path}: field {key!r} is missing or not a {kind.__name__}")
    if state.get("reached_epoch") is not None and not state["history"]:
        raise CheckpointError(f"{path}: reached an epoch but records no history")
    return state


def train(
    bench: Benchmark,
    cfg: TrainConfig,
    model=None,
    progress: Callable[[dict], None] | None = None,
    checkpoint: Path | None = None,
    evaluate_last: bool = True,
) -> tuple[object, TrainResult]:
    """Train with SIIT until the validation thresholds are reached (then ``extra_epochs``
    more, keeping the passing evaluation with the largest margin) or ``max_epochs``.

    Data: ``n_train_per_task`` training and ``n_val_per_task`` validation inputs per task from
    seeded generators; sources are a fresh random permutation of each batch. With
    ``checkpoint`` (a directory) the model, optimiser and history are saved after every
    evaluation and training resumes from there if a checkpoint exists."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    train_tokens, _ = bench.generate(cfg.n_train_per_task, rng)
    val_tokens, _ = bench.generate(cfg.n_val_per_task, rng)
    train_values = bench.run_high_level(train_tokens)
    if model is None:
        model = make_model(bench, cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas)
    n = len(train_tokens)
    n_batches = n // cfg.batch_size
    if n_batches < 1:
        raise ConfigError(
            f"{n} training inputs make no batch of {cfg.batch_size}: raise n_train_per_task "
            "or lower batch_size"
        )
    total_steps = max(1, cfg.max_epochs * n_batches)

    def lr_at(step: int) -> float:
        return cfg.lr + (cfg.lr_end - cfg.lr) * min(1.0, step / total_steps)

    result = TrainResult()
    start_epoch, elapsed = 0, 0.0
    gen = torch.Generator().manual_seed(cfg.seed)
    if checkpoint is not None and (checkpoint / "train_state.pt").exists():
        state = _load_train_state(checkpoint / "train_state.pt")
        restore(model, opt, state, f"ground-truth model/optimiser ({checkpoint})")
        try:
            gen.set_state(state["generator"])
        except (RuntimeError, TypeError) as error:
            raise CheckpointError(f"{checkpoint}/train_state.pt: bad generator state") from error
        result.history = state["history"]
        start_epoch, elapsed = state["epoch"], state["elapsed"]
        result.reached_epoch = state.get("reached_epoch")
        result.reached_seconds = state.get("reached_seconds")
        result.best_epoch = state.get("best_epoch", result.reached_epoch)
        result.best_state = state.get("best_model", state["model"] if result.best_epoch else None)
        if result.finished(start_epoch, cfg):
            return _keep_best(model, result)
    weights = (cfg.weight_behaviour, cfg.weight_iit, cfg.weight_strict)
    train_seconds = 0.0
    epochs_run = 0
    for epoch in range(start_epoch, cfg.max_epochs):
        model.train()
        t0, c0 = time.perf_counter(), time.process_time()
        order = torch.randperm(n, generator=gen)
        sums = np.zeros(4)
        for i in range(n_batches):
            idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            base = train_tokens[idx]
            values = {k: v[idx] for k, v in train_values.items()}
            first = torch.randperm(len(idx), generator=gen)  # before the masks, as earlier runs did
            iit_m, strict_m = sample_masks(bench, len(idx), cfg.strict_mode, gen)
            src = choose_sources(
                bench, base, values, iit_m, first, cfg.informative, cfg.candidates, gen
            )
            for g in opt.param_groups:
                g["lr"] = lr_at(epoch * n_batches + i)
            losses = siit_losses(
                model, bench, base, values, src, iit_m, strict_m, weights, cfg.source_grad
            )
            opt.zero_grad(set_to_none=True)
            losses.total.backward()
            opt.step()
            sums += [
                losses.behaviour.item(),
                losses.iit.item(),
                losses.strict.item(),
                losses.total.item(),
            ]
        dt = time.perf_counter() - t0
        train_seconds += dt
        epochs_run += 1
        elapsed += dt
        row = {
            "epoch": epoch + 1,
            "train_seconds": elapsed,
            "epoch_seconds": dt,
            "epoch_cpu_seconds": time.process_time() - c0,
            **dict(
                zip(
                    ("loss_behaviour", "loss_iit", "loss_strict", "loss_total"),
                    (sums / n_batches).tolist(),
                    strict=True,
                )
            ),
        }
        done = False
        if (epoch + 1) % cfg.eval_every == 0 or (evaluate_last and epoch + 1 == cfg.max_epochs):
            t1 = time.perf_counter()
            metrics = evaluate(model, bench, val_tokens)
            row.update(metrics)
            row["eval_seconds"] = time.perf_counter() - t1
            result.history.append(row)
            if reached(metrics, cfg):
                if result.reached_epoch is None:
                    result.reached_epoch, result.reached_seconds = epoch + 1, elapsed
                result.consider(epoch + 1, metrics, model)
        else:
            result.history.append(row)
        done = result.finished(epoch + 1, cfg)
        if progress:
            progress(row)
        if checkpoint is not None and "accuracy" in row:
            _save_train_state(
                checkpoint / "train_state.pt",
                {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "generator": gen.get_state(),
                    "history": result.history,
                    "epoch": epoch + 1,
                    "elapsed": elapsed,
                    "reached_epoch": result.reached_epoch,
                    "reached_seconds": result.reached_seconds,
                    "best_epoch": result.best_epoch,
                    "best_model": result.best_state,
                },
            )
        if done:
            break
    result.seconds_per_epoch = train_seconds / max(1, epochs_run)
    return _keep_best(model, result)


def _keep_best(model, result: TrainResult) -> tuple[object, TrainResult]:
    """Load the kept epoch's weights (if any epoch passed); ``final`` is its evaluation, else
    the last one."""
    if result.best_epoch is not None:
        model.load_state_dict(result.best_state)
        result.final = result.history[result.best_epoch - 1]
    else:
        result.final = next((r for r in reversed(result.history) if "accuracy" in r), {})
    return model, result


# ----------------------------------------------------------------------------- saving


def save_run(
    path: Path,
    model,
    bench: Benchmark,
    cfg: TrainConfig,
    result: TrainResult,
    subspaces: bool,
    benchmark_name: str,
    model_overrides: dict[str, int] | None = None,
    init: str | None = None,
) -> None:
    blob = seal_safetensors({k: v.contiguous() for k, v in model.state_dict().items()})
    atomic_write(path / "model.safetensors", lambda handle: handle.write(blob))
    meta = {
        "format": "gridlens-groundtruth-1",
        "benchmark": benchmark_name,
        "subspaces": subspaces,
        "model_overrides": model_overrides or {},
        "init": init,
        "config": bench.config.to_dict(),
        "train": asdict(cfg),
        "describe": bench.describe(),
    }
    (path / "run.json").write_text(json.dumps(meta, indent=1))
    (path / "history.json").write_text(json.dumps(_jsonable(result.history), indent=1))
    summary = {
        "reached_epoch": result.reached_epoch,
        "reached_seconds": result.reached_seconds,
        "kept_epoch": result.best_epoch,
        "seconds_per_epoch": result.seconds_per_epoch,
        "final": result.final,
    }
    (path / "summary.json").write_text(json.dumps(_jsonable(summary), indent=1))


def _check_run_fields(meta: dict, meta_file: Path) -> None:
    """Raise CheckpointError unless run.json's fields have the types save_run writes."""
    required = {"benchmark": str, "config": dict}
    optional = {"subspaces": bool, "model_overrides": dict}
    for key, kind in {**required, **optional}.items():
        if (key in required or key in meta) and not isinstance(meta.get(key), kind):
            raise CheckpointError(f"{meta_file}: field {key!r} is missing or not a {kind.__name__}")


def load_run(path: Path):
    """(model, benchmark, meta) from a directory written by :func:`save_run`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from gridlens.groundtruth.spec import get_benchmark
    from gridlens.models import GridGPT, GridGPTConfig

    meta_file = Path(path) / "run.json"
    if not meta_file.exists():
        raise CheckpointError(
            f"{meta_file}: not found (expected a `gridlens groundtruth train` output directory)"
        )
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{meta_file}: not valid JSON ({error})") from None
    if not isinstance(meta, dict) or meta.get("format") != "gridlens-groundtruth-1":
        meta = meta if isinstance(meta, dict) else {}
        raise CheckpointError(
            f"{meta_file}: field 'format' is {meta.get('format')!r}, expected "
            "'gridlens-groundtruth-1'"
        )
    _check_run_fields(meta, meta_file)
    bench = get_benchmark(
        meta["benchmark"], subspaces=meta.get("subspaces", False), **meta.get("model_overrides", {})
    )
    cfg = GridGPTConfig.from_dict(meta["config"], source=str(meta_file))
    model = GridGPT(cfg, seed=None)
    weights = Path(path) / "model.safetensors"
    try:
        model.load_state_dict(load_file(str(weights)))
    except (RuntimeError, OSError, SafetensorError) as error:
        raise CheckpointError(f"{weights}: {error}") from None
    verify_safetensors(weights)
    model.eval()
    return model, bench, meta


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, np.generic):
        return x.item()
    return x
