"""Correspondences (high-level variable -> low-level site) and benchmarks (one task, or several
tasks combined into one polysemantic model).

A :class:`Site` is an attention head's output (``blocks.{l}.attn.hook_z`` with a head index),
an MLP (``blocks.{l}.hook_mlp_out``), or a subspace of one (``blocks.{l}.mlp.hook_post`` with a
range of neurons, or any residual-width hook with a range of dimensions). Variables mapped to the
same site form one *node*: an interchange intervention swaps the whole node. Sites of the model
that hold no variable are the *unused* nodes that the strict (SIIT) loss and SIIA intervene on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from gridlens.errors import ConfigError, unknown_name
from gridlens.groundtruth.tasks import PAD, Task, get_task


@dataclass(frozen=True, order=True)
class Site:
    """A place in the low-level model: ``hook`` plus an optional ``head`` and ``dims`` range."""

    hook: str
    head: int | None = None
    dims: tuple[int, int] | None = None

    @property
    def label(self) -> str:
        m = re.fullmatch(r"blocks\.(\d+)\.(.+)", self.hook)
        layer, rest = (m.group(1), m.group(2)) if m else ("", self.hook)
        if rest == "attn.hook_z" and self.head is not None:
            base = f"L{layer}H{self.head}"
        elif rest in ("hook_mlp_out", "mlp.hook_post"):
            base = f"MLP{layer}"
        else:
            base = self.hook
        return base + (f"[{self.dims[0]}:{self.dims[1]}]" if self.dims else "")

    @property
    def layer(self) -> int:
        m = re.match(r"blocks\.(\d+)\.", self.hook)
        return int(m.group(1)) if m else -1

    def overlaps(self, other: Site) -> bool:
        """Do two sites touch the same activations (so they cannot be separate nodes)?"""
        if self == other:
            return True
        a, b = _mlp_group(self), _mlp_group(other)
        if a is not None and a == b and self.hook != other.hook:
            return True  # hook_post and hook_mlp_out of the same MLP
        if self.hook != other.hook:
            return False
        if self.head is not None and other.head is not None and self.head != other.head:
            return False
        if self.dims is None or other.dims is None:
            return True
        return self.dims[0] < other.dims[1] and other.dims[0] < self.dims[1]


def _mlp_group(site: Site) -> int | None:
    m = re.fullmatch(r"blocks\.(\d+)\.(hook_mlp_out|mlp\.hook_post)", site.hook)
    return int(m.group(1)) if m else None


def _site_key(site: Site) -> tuple:
    return (site.layer, site.head is None, site.head or 0, site.dims or (0, 0), site.hook)


def head_site(layer: int, head: int) -> Site:
    return Site(f"blocks.{layer}.attn.hook_z", head)


def mlp_site(layer: int, dims: tuple[int, int] | None = None) -> Site:
    if dims is None:
        return Site(f"blocks.{layer}.hook_mlp_out")
    return Site(f"blocks.{layer}.mlp.hook_post", None, dims)


def site_shape(site: Site, config) -> int:
    """Validate ``site`` against a GridGPTConfig; return the width of its last dimension."""
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", site.hook)
    if not m:
        raise ConfigError(f"correspondence site {site.hook!r}: expected 'blocks.<layer>.<hook>'")
    layer, rest = int(m.group(1)), m.group(2)
    if layer >= config.n_layers:
        raise ConfigError(
            f"correspondence site {site.hook!r}: layer {layer} does not exist "
            f"(the model has {config.n_layers} layers)"
        )
    widths = {
        "attn.hook_z": config.d_model // config.n_heads,
        "hook_mlp_out": config.d_model,
        "mlp.hook_post": config.d_mlp,
        "hook_resid_pre": config.d_model,
        "hook_resid_mid": config.d_model,
        "hook_resid_post": config.d_model,
        "hook_attn_out": config.d_model,
    }
    if rest not in widths:
        raise unknown_name("correspondence hook", rest, widths)
    if rest == "attn.hook_z":
        if site.head is None:
            raise ConfigError(f"correspondence site {site.hook!r}: a per-head hook needs a head")
        if not 0 <= site.head < config.n_heads:
            raise ConfigError(
                f"correspondence site {site.hook!r}: head {site.head} does not "
                f"exist (the model has {config.n_heads} heads)"
            )
    elif site.head is not None:
        raise ConfigError(f"correspondence site {site.hook!r} has no heads, got head {site.head}")
    width = widths[rest]
    if site.dims is not None:
        a, b = site.dims
        if not 0 <= a < b <= width:
            raise ConfigError(
                f"correspondence site {site.label}: dims [{a}:{b}] outside the hook's width {width}"
            )
    return width


@dataclass
class Node:
    site: Site
    variables: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.site.label


def all_component_sites(config) -> list[Site]:
    """Every attention head and MLP of the model, in order (the candidate nodes)."""
    out: list[Site] = []
    for layer in range(config.n_layers):
        out += [head_site(layer, h) for h in range(config.n_heads)]
        out.append(mlp_site(layer))
    return out


class Benchmark:
    """One or several tasks, a low-level model shape, and a correspondence.

    With one task the inputs are the task's own sequences. With several, every input starts
    with a task-id token, then the task's sequence (BOS, content), padded with PAD to the
    longest context; the output classes of the tasks are concatenated (task k owns classes
    ``offsets[k] : offsets[k] + n_classes_k``); a ``task`` variable (read by one head) selects
    which task's output is the label. Every task's high-level model is run on every input
    (foreign tokens mapped deterministically by :meth:`Task.to_vocab`), so interchanges across
    tasks are well defined. Labels are -1 (masked) at the task-id and BOS positions and on
    padding.
    """

    def __init__(
        self,
        name: str,
        tasks: Sequence[Task],
        correspondence: Mapping[str, Site],
        model_kwargs: Mapping[str, int],
    ):
        if not tasks:
            raise ConfigError("a benchmark needs at least one task")
        self.name = name
        self.tasks = list(tasks)
        self.multi = len(self.tasks) > 1
        n_content = max(len(t.tokens) for t in self.tasks)
        self.task_token0 = 2 + n_content
        self.vocab_size = self.task_token0 + (len(self.tasks) if self.multi else 0)
        self.n_ctx = max(t.n_ctx for t in self.tasks) + (1 if self.multi else 0)
        self.shift = 1 if self.multi else 0
        self.offsets = np.cumsum([0] + [t.n_classes for t in self.tasks]).tolist()
        self.n_classes = self.offsets[-1]
        self.variable_names = [
            f"{t.name}.{v}" for t in self.tasks for v in t.high_level.variable_names
        ]
        if self.multi:
            self.variable_names.append("task")
        self.model_kwargs = dict(model_kwargs)
        self.correspondence = dict(correspondence)
        from gridlens.models import GridGPTConfig  # deferred: models may be imported lazily

        self.config = GridGPTConfig(
            vocab_size=self.vocab_size,
            n_ctx=self.n_ctx,
            d_vocab_out=self.n_classes,
            shift_input=False,
            **self.model_kwargs,
        )
        self._validate()

    # ------------------------------------------------------------------ correspondence
    def _validate(self) -> None:
        for var, site in self.correspondence.items():
            if var not in self.variable_names:
                raise unknown_name(
                    f"high-level variable in the correspondence of {self.name!r}",
                    var,
                    self.variable_names,
                )
            if not isinstance(site, Site):
                raise ConfigError(
                    f"correspondence of {self.name!r}: {var!r} maps to {site!r}, expected a Site"
                )
            site_shape(site, self.config)
        missing = [v for v in self.variable_names if v not in self.correspondence]
        if missing:
            raise ConfigError(
                f"correspondence of {self.name!r}: variable(s) {missing} are not mapped to any site"
            )
        nodes: dict[Site, Node] = {}
        for var, site in self.correspondence.items():
            nodes.setdefault(site, Node(site)).variables.append(var)
        sites = list(nodes)
        for i, a in enumerate(sites):
            for b in sites[i + 1 :]:
                if a.overlaps(b):
                    raise ConfigError(
                        f"correspondence of {self.name!r}: sites {a.label} and "
                        f"{b.label} overlap; map the variables to one site or to "
                        "disjoint subspaces"
                    )
        self.nodes = sorted(nodes.values(), key=lambda n: _site_key(n.site))
        self.unused = self._unused_sites(sites)

    def _unused_sites(self, used: list[Site]) -> list[Site]:
        out: list[Site] = []
        for cand in all_component_sites(self.config):
            group = _mlp_group(cand)
            if group is not None:
                parts = [s for s in used if _mlp_group(s) == group]
                if not parts:
                    out.append(cand)
                    continue
                if any(s.dims is None for s in parts):
                    continue
                # the neurons of this MLP that no variable uses form one unused node
                width = self.config.d_mlp
                taken = np.zeros(width, bool)
                for s in parts:
                    taken[s.dims[0] : s.dims[1]] = True
                free = np.flatnonzero(~taken)
                # contiguous runs
                if len(free):
                    runs = np.split(free, np.flatnonzero(np.diff(free) > 1) + 1)
                    out += [
                        Site(f"blocks.{group}.mlp.hook_post", None, (int(r[0]), int(r[-1]) + 1))
                        for r in runs
                    ]
                continue
            if not any(cand.overlaps(s) for s in used):
                out.append(cand)
        return out

    def task_variables(self, k: int) -> list[str]:
        t = self.tasks[k]
        return [f"{t.name}.{v}" for v in t.high_level.variable_names]

    def circuit_sites(self, k: int | None = None) -> set[Site]:
        """Sites holding task k's variables (and the task head), or all used sites."""
        names = set(self.variable_names if k is None else self.task_variables(k))
        if self.multi and k is not None:
            names.add("task")
        return {self.correspondence[v] for v in names}

    # ------------------------------------------------------------------ data
    def generate(
        self, n_per_task: int, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n_per_task`` inputs per task, shuffled: (tokens [N, n_ctx], task ids [N])."""
        seqs, ids = [], []
        for k, task in enumerate(self.tasks):
            s = task.generate(n_per_task, rng)
            if self.multi:
                full = torch.full((n_per_task, self.n_ctx), PAD, dtype=torch.long)
                full[:, 0] = self.task_token0 + k
                full[:, 1 : 1 + task.n_ctx] = s
                s = full
            seqs.append(s)
            ids.append(torch.full((n_per_task,), k, dtype=torch.long))
        perm = torch.from_numpy(rng.permutation(n_per_task * len(self.tasks)))
        return torch.cat(seqs)[perm], torch.cat(ids)[perm]

    def task_ids(self, tokens: torch.Tensor) -> torch.Tensor:
        if not self.multi:
            return torch.zeros(len(tokens), dtype=torch.long)
        return (tokens[:, 0] - self.task_token0).clamp(0, len(self.tasks) - 1)

    def run_high_level(
        self,
        tokens: torch.Tensor,
        patches: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Every variable (namespaced ``task.var``) [batch, n_ctx] and ``output`` (global class,
        -1 where there is no label). ``patches[var] = (mask [batch], values [batch, n_ctx])``."""
        patches = dict(patches or {})
        batch, n_ctx = tokens.shape
        out: dict[str, torch.Tensor] = {}
        outputs = []
        for k, task in enumerate(self.tasks):
            prefix = f"{task.name}."
            seq = tokens[:, self.shift : self.shift + task.n_ctx]
            local = {
                name[len(prefix) :]: (mask, vals[:, self.shift : self.shift + task.n_ctx])
                for name, (mask, vals) in patches.items()
                if name.startswith(prefix)
            }
            values = task.high_level.run(task.to_vocab(seq), local)
            for v in task.high_level.variable_names:
                full = torch.zeros((batch, n_ctx), dtype=torch.long)
                full[:, self.shift : self.shift + task.n_ctx] = values[v]
                out[prefix + v] = full
            o = torch.full((batch, n_ctx), -1, dtype=torch.long)
            o[:, self.shift + 1 : self.shift + task.n_ctx] = (
                values[task.high_level.output][:, 1:] + self.offsets[k]
            )
            outputs.append(o)
        if self.multi:
            task_var = self.task_ids(tokens)[:, None].expand(batch, n_ctx).clone()
            if "task" in patches:
                mask, vals = patches["task"]
                task_var = torch.where(mask[:, None], vals, task_var)
            out["task"] = task_var
            out["output"] = torch.gather(torch.stack(outputs, -1), -1, task_var[..., None])[..., 0]
        else:
            out["output"] = outputs[0]
        return out

    def labels(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.run_high_level(tokens)["output"]

    def describe(self) -> dict:
        return {
            "name": self.name,
            "tasks": [t.name for t in self.tasks],
            "n_ctx": self.n_ctx,
            "vocab_size": self.vocab_size,
            "n_classes": self.n_classes,
            "model": self.config.to_dict(),
            "nodes": {n.label: n.variables for n in self.nodes},
            "unused": [s.label for s in self.unused],
        }


# ---------------------------------------------------------------------- predefined benchmarks

# single-task circuits on a 2-layer model: (layer, head) or ("mlp", layer)
_SINGLE: dict[str, dict[str, tuple]] = {
    "parenthesis": {
        "elevation": ("head", 0),
        "below": ("mlp", 0),
        "dipped": ("head", 1),
        "balanced": ("mlp", 1),
    },
    "left_greater": {"elevation": ("head", 0), "greater": ("mlp", 0)},
    "duplicate_remover": {"prev": ("head", 0), "is_dup": ("mlp", 0), "out": ("mlp", 1)},
    "unique_extractor": {"seen": ("head", 0), "is_repeat": ("mlp", 0), "out": ("mlp", 1)},
    "histogram": {"count": ("head", 0), "out": ("mlp", 0)},
    "reversal": {"mirror": ("head", 0), "out": ("mlp", 0)},
    "sort": {"n_a": ("head", 0), "n_ab": ("head", 0), "out": ("mlp", 0)},
    "modular_sum": {"prev": ("head", 0), "out": ("mlp", 0)},
}

SINGLE_MODEL = {"d_model": 64, "n_layers": 2, "n_heads": 4, "d_head": 16, "d_mlp": 128}
MULTI_MODEL = {"d_model": 128, "n_layers": 2, "n_heads": 4, "d_head": 16, "d_mlp": 256}
ALL8_MODEL = {**MULTI_MODEL, "n_heads": 8, "d_mlp": 512}  # eight layer-0 heads, one per task


def single_benchmark(name: str, n_ctx: int = 15, **model: int) -> Benchmark:
    task = get_task(name, n_ctx)
    corr = {}
    for var, (kind, layer) in _SINGLE[task.name].items():
        corr[f"{task.name}.{var}"] = head_site(layer, 0) if kind == "head" else mlp_site(layer)
    return Benchmark(name, [task], corr, {**SINGLE_MODEL, **model})


def combined_benchmark(
    names: Sequence[str], n_ctx: int = 15, subspaces: bool = False, **model: int
) -> Benchmark:
    """Several tasks in one model: each task's heads get their own head index per layer, the
    task-id variable gets the next free head of the last layer, and the MLPs are shared (or,
    with ``subspaces``, each task gets an equal slice of each MLP's neurons)."""
    if len(set(names)) != len(names):
        raise ConfigError(f"combined benchmark: duplicate tasks in {list(names)}")
    tasks = [get_task(n, n_ctx) for n in names]
    kwargs = {**MULTI_MODEL, **model}
    n_layers = kwargs["n_layers"]
    next_head = [0] * n_layers
    corr: dict[str, Site] = {}
    d_mlp = kwargs["d_mlp"]
    width = d_mlp // len(tasks)
    for k, task in enumerate(tasks):
        heads_here: dict[int, int] = {}
        for var, (kind, layer) in _SINGLE[task.name].items():
            if layer >= n_layers:
                raise ConfigError(
                    f"task {task.name!r} needs layer {layer}; the model has {n_layers}"
                )
            if kind == "head":
                if layer not in heads_here:
                    heads_here[layer] = next_head[layer]
                    next_head[layer] += 1
                corr[f"{task.name}.{var}"] = head_site(layer, heads_here[layer])
            else:
                dims = (k * width, (k + 1) * width) if subspaces else None
                corr[f"{task.name}.{var}"] = mlp_site(layer, dims)
    last = n_layers - 1
    corr["task"] = head_site(last, next_head[last])
    next_head[last] += 1
    need = max(next_head)
    if need > kwargs["n_heads"]:
        raise ConfigError(
            f"combined benchmark needs {need} heads per layer, model has {kwargs['n_heads']}"
        )
    name = "+".join(names) + ("/subspaces" if subspaces else "")
    return Benchmark(name, tasks, corr, kwargs)


ALL_TASKS = ("parenthesis", "left_greater", "duplicate_remover", "unique_extractor")
ALL8_TASKS = (*ALL_TASKS, "histogram", "reversal", "sort", "modular_sum")


def get_benchmark(name: str, subspaces: bool = False, **model: int) -> Benchmark:
    """``parenthesis`` etc. for one task, ``all4`` / ``all8`` for the 4- and 8-task models, or
    ``a+b`` tasks; ``model`` overrides the low-level model's shape (e.g. d_model=128)."""
    if name == "all4":
        return combined_benchmark(ALL_TASKS, subspaces=subspaces, **model)
    if name == "all8":
        return combined_benchmark(ALL8_TASKS, subspaces=subspaces, **{**ALL8_MODEL, **model})
    parts = name.split("+")
    if len(parts) > 1:
        return combined_benchmark(parts, subspaces=subspaces, **model)
    if name not in _SINGLE:
        raise unknown_name("benchmark", name, [*_SINGLE, "all4", "all8", "<task>+<task>..."])
    return single_benchmark(name, **model)
