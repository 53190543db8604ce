"""Scoring interpretability methods against the known ground truth.

SAEs (and the baselines: raw neurons, linear-probe directions) on an MLP's neurons
(``blocks.{l}.mlp.hook_post``), against the high-level variables the correspondence puts in
that MLP:

- per variable value, the best unit's detection F1 (a unit "detects" value v when it is active,
  > 0, on exactly the positions where the variable equals v; positions of other tasks count as
  negatives, so a unit shared across tasks loses precision);
- a Hungarian one-to-one matching of values to units, scored by the mean matched F1;
- task purity of units (share of a unit's firings that come from its most frequent task);
- reconstruction fidelity (fraction of variance unexplained, and accuracy with the SAE's
  reconstruction spliced into the model);
- IIA when the units matched to a variable are interchanged between a base and a source input
  (everything else kept), against the high-level model with only that variable interchanged;
  next to it, the subspace of the probes' directions and the subspace of the variable's class
  means (supervised references), or (``subspace="das"`` / ``"both"``) the subspace that
  Distributed Alignment Search learns from interchanges on the fitting inputs.

Circuit discovery: activation patching and attribution patching (AtP) rank every head and MLP;
the ranking is scored by ROC AUC against the sites the correspondence uses.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from gridlens.analysis.das import DASFit, train_das
from gridlens.errors import ConfigError, unknown_name
from gridlens.groundtruth.iit import _acc, patch_hooks, source_cache
from gridlens.groundtruth.spec import Benchmark, Site, _mlp_group, all_component_sites
from gridlens.models.hooks import read_site, write_site

# ----------------------------------------------------------------------------- assignment


def linear_assignment(score: np.ndarray, maximize: bool = True) -> list[tuple[int, int]]:
    """Optimal one-to-one assignment of rows to columns (scipy's Hungarian solver), as sorted
    (row, col) pairs: one per row if rows <= cols, else one per column."""
    a = np.asarray(score, dtype=float)
    if a.ndim != 2:
        raise ConfigError(f"linear_assignment needs a 2-d matrix, got shape {a.shape}")
    if a.size == 0:
        return []
    rows, cols = linear_sum_assignment(a, maximize=maximize)
    return sorted(zip(rows.tolist(), cols.tolist(), strict=True))


# ----------------------------------------------------------------------------- F1 and AUC


def f1_matrix(y: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """F1 of every unit (columns of ``active`` [N, U], bool) as a detector of every target
    (columns of ``y`` [N, V], bool): [V, U]. 0 where both are never true."""
    yf, af = y.float(), active.float()
    tp = yf.t() @ af
    denom = yf.sum(0)[:, None] + af.sum(0)[None, :]
    return torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.zeros_like(tp))


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve (Mann-Whitney U with ties counted half); nan if one class is
    empty."""
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels, dtype=bool)
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    gt = (pos[:, None] > neg[None, :]).sum()
    eq = (pos[:, None] == neg[None, :]).sum()
    return float((gt + 0.5 * eq) / (len(pos) * len(neg)))


# ----------------------------------------------------------------------------- activations


def mlp_variables(bench: Benchmark, layer: int) -> list[str]:
    """High-level variables that the correspondence puts in MLP ``layer``."""
    return [v for n in bench.nodes if _mlp_group(n.site) == layer for v in n.variables]


def collect(model, bench: Benchmark, tokens: torch.Tensor, layer: int) -> dict:
    """Neuron activations at MLP ``layer`` on labelled positions, with variable values and the
    task of each row."""
    hook = f"blocks.{layer}.mlp.hook_post"
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names=[hook])
    values = bench.run_high_level(tokens)
    valid = values["output"] >= 0
    task = bench.task_ids(tokens)[:, None].expand_as(valid)
    return {
        "acts": cache[hook][valid],
        "task": task[valid],
        "values": {v: values[v][valid] for v in mlp_variables(bench, layer)},
    }


def value_targets(bench: Benchmark, data: dict) -> tuple[torch.Tensor, list[tuple[str, int]]]:
    """Boolean targets [N, V]: one column per (variable, value) that occurs, true on rows of
    the variable's task where the variable takes the value."""
    cols, names = [], []
    for var, vals in data["values"].items():
        own = own_rows(bench, var, data["task"])
        for value in range(n_values(bench, var)):
            col = own & (vals == value)
            if bool(col.any()):
                cols.append(col)
                names.append((var, value))
    return torch.stack(cols, 1), names


def _task_index(bench: Benchmark, var: str) -> int:
    if var == "task":
        return -1
    name = var.split(".")[0]
    return [t.name for t in bench.tasks].index(name)


def _variable(bench: Benchmark, var: str):
    k = _task_index(bench, var)
    return bench.tasks[k].high_level.by_name[var.split(".", 1)[1]]


def n_values(bench: Benchmark, var: str) -> int:
    """How many values ``var`` takes (the task-id variable: one per task)."""
    return len(bench.tasks) if var == "task" else _variable(bench, var).n_values


def value_name(bench: Benchmark, var: str, value: int) -> str:
    return bench.tasks[value].name if var == "task" else _variable(bench, var).value_name(value)


def own_rows(bench: Benchmark, var: str, task: torch.Tensor) -> torch.Tensor:
    """Rows (by task id) on which ``var`` is defined: its task's, or all for the task id."""
    return (
        torch.ones_like(task, dtype=torch.bool)
        if var == "task"
        else task == _task_index(bench, var)
    )


def train_probes(
    acts: torch.Tensor, y: torch.Tensor, steps: int = 300, lr: float = 0.05, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """One-vs-rest logistic-regression probes (one per column of y) on standardised
    activations; returns (directions [V, d] in activation space, biases [V]). Full-batch Adam
    on the distinct (activation, target) rows, each weighted by how often it occurs: the same
    loss as on every row (early positions repeat across inputs), in 25-60% of the time."""
    torch.manual_seed(seed)
    mu, sd = acts.mean(0), acts.std(0).clamp(min=1e-6)
    pos = y.float().mean(0).clamp(1e-4, 1 - 1e-4)
    weight = (1 - pos) / pos  # balance classes
    rows, count = torch.unique(torch.cat([acts, y.to(acts.dtype)], 1), dim=0, return_counts=True)
    x, target = (rows[:, : acts.shape[1]] - mu) / sd, rows[:, acts.shape[1] :]
    count = count.to(x.dtype)[:, None] / (len(acts) * y.shape[1])
    w = torch.zeros(acts.shape[1], y.shape[1], requires_grad=True)
    b = torch.zeros(y.shape[1], requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=lr)
    for _ in range(steps):
        loss = F.binary_cross_entropy_with_logits(
            x @ w + b, target, weight=count, pos_weight=weight, reduction="sum"
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    w_act = (w / sd[:, None]).detach().t()
    b_act = (b - (mu / sd) @ w).detach()
    return w_act, b_act


def class_mean_subspace(acts: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis [d, V - 1] of the span of the centred class means of one variable
    (``y`` [n, V] one-hot over its values, rows of its task only): the directions along which
    its values differ on average. Why next to the probes: a logistic-regression normal
    separates the classes but, in activation space, leans on low-variance neurons, so it need
    not be the direction the model reads; the class means are where the values actually sit."""
    present = [i for i in range(y.shape[1]) if bool(y[:, i].any())]
    if len(present) < 2:
        return torch.zeros(acts.shape[1], 0)
    centre = acts.mean(0)
    means = torch.stack([acts[y[:, i]].mean(0) - centre for i in present], 1)
    q, _ = torch.linalg.qr(means)
    return q[:, : len(present) - 1]


def _subspace_swap(q: torch.Tensor):
    """Activation transform that takes the component in span(q) (orthonormal columns) from the
    source and keeps the rest of the base."""
    return lambda a, s: a + (s - a) @ q @ q.t()


SUBSPACES = ("class_means", "das", "both")


def das_subspace(
    model,
    bench: Benchmark,
    tokens: torch.Tensor,
    var: str,
    hook: str,
    k: int,
    head: int | None = None,
    steps: int = 300,
    sources: int = 4,
    seed: int = 0,
) -> DASFit:
    """DAS for ``var`` at ``hook``: every input of the variable's task is a base ``sources``
    times, each with a random source of that task; the target is the high-level output with
    only ``var`` interchanged (the pairs :func:`site_iia` scores, drawn afresh)."""
    own = tokens[own_rows(bench, var, bench.task_ids(tokens))]
    if len(own) < 2:
        raise ConfigError(f"DAS for {var!r} needs at least two inputs of its task, got {len(own)}")
    gen = torch.Generator().manual_seed(seed)
    base = own.repeat(sources, 1)
    src = torch.cat([own[torch.randperm(len(own), generator=gen)] for _ in range(sources)])
    mask = torch.ones(len(base), dtype=torch.bool)
    target = bench.run_high_level(base, {var: (mask, bench.run_high_level(src)[var])})["output"]
    return train_das(model, hook, base, src, target, k=k, head=head, steps=steps, seed=seed)


def variable_subspaces(
    model,
    bench: Benchmark,
    layer: int,
    tokens: torch.Tensor,
    subspace: str = "class_means",
    das_steps: int = 300,
    seed: int = 0,
    values: list[tuple[str, int]] | None = None,
    das_dims: int | None = None,
) -> dict[str, dict]:
    """Per variable of MLP ``layer``, {method: (basis [d_mlp, k], seconds)} at its neurons,
    fitted on ``tokens``: the class means' span (k = values - 1; only ``values``, (variable,
    value) pairs, when given) and/or DAS's learned subspace of ``das_dims`` dimensions (default:
    the class means', at least 1)."""
    if subspace not in SUBSPACES:
        raise unknown_name("subspace", subspace, SUBSPACES)
    data = collect(model, bench, tokens, layer)
    y, names = value_targets(bench, data)
    if values is not None:
        y, names = y[:, [names.index(v) for v in values]], list(values)
    hook = f"blocks.{layer}.mlp.hook_post"
    out: dict[str, dict] = {}
    for var in mlp_variables(bench, layer):
        t0 = time.perf_counter()
        own = data["task"] == _task_index(bench, var)
        cols = [i for i, (v, _value) in enumerate(names) if v == var]
        means_q = class_mean_subspace(data["acts"][own], y[own][:, cols])
        found = {"class_means": (means_q, time.perf_counter() - t0)}
        if subspace != "class_means":
            k = das_dims or max(1, means_q.shape[1])
            fit = das_subspace(model, bench, tokens, var, hook, k, steps=das_steps, seed=seed)
            found["das"] = (fit.basis, fit.seconds)
        out[var] = found if subspace == "both" else {subspace: found[subspace]}
    return out


# ----------------------------------------------------------------------------- SAE scoring


def unit_scores(f1: torch.Tensor, names: list[tuple[str, int]]) -> dict:
    """Best-unit F1 per value, Hungarian matching and its mean."""
    best, arg = f1.max(1)
    pairs = linear_assignment(f1.numpy())
    matched = {r: c for r, c in pairs}
    per_value = []
    for i, (var, value) in enumerate(names):
        per_value.append(
            {
                "variable": var,
                "value": value,
                "best_f1": float(best[i]),
                "best_unit": int(arg[i]),
                "matched_unit": matched.get(i),
                "matched_f1": float(f1[i, matched[i]]) if i in matched else 0.0,
            }
        )
    per_var: dict[str, dict] = {}
    for row in per_value:
        d = per_var.setdefault(row["variable"], {"best": [], "matched": []})
        d["best"].append(row["best_f1"])
        d["matched"].append(row["matched_f1"])
    return {
        "mean_best_f1": float(best.mean()),
        "hungarian_mean_f1": float(np.mean([r["matched_f1"] for r in per_value])),
        "per_variable": {
            v: {
                "mean_best_f1": float(np.mean(d["best"])),
                "hungarian_mean_f1": float(np.mean(d["matched"])),
            }
            for v, d in per_var.items()
        },
        "per_value": per_value,
    }


def task_purity(active: torch.Tensor, task: torch.Tensor, n_tasks: int) -> dict:
    """Share of each unit's firings from its most frequent task (alive units only), weighted
    by each task's share of rows so that unequal task frequencies do not bias it."""
    counts = torch.stack([active[task == k].float().mean(0) for k in range(n_tasks)])  # [T, U]
    alive = counts.sum(0) > 0
    if not bool(alive.any()):
        return {
            "mean_purity": float("nan"),
            "alive": 0,
            "fraction_pure_90": float("nan"),
            "fraction_multi_task": float("nan"),
        }
    share = counts[:, alive] / counts[:, alive].sum(0)
    purity = share.max(0).values
    multi = ((counts[:, alive] > 0.01).sum(0) >= 2).float().mean()
    return {
        "mean_purity": float(purity.mean()),
        "alive": int(alive.sum()),
        "fraction_pure_90": float((purity >= 0.9).float().mean()),
        "fraction_multi_task": float(multi),
    }


def _splice_accuracy(model, bench: Benchmark, tokens: torch.Tensor, hook: str, fn) -> float:
    labels = bench.labels(tokens)
    with torch.no_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=[(hook, lambda a, p: fn(a))])
    return _acc(logits, labels, bench.task_ids(tokens), len(bench.tasks))[0]


def patched_iia(
    model, bench: Benchmark, tokens: torch.Tensor, layer: int, var: str, transforms: dict
) -> dict[str, float]:
    """:func:`site_iia` at the neurons of MLP ``layer``."""
    return site_iia(model, bench, tokens, var, transforms, f"blocks.{layer}.mlp.hook_post")


def site_iia(
    model,
    bench: Benchmark,
    tokens: torch.Tensor,
    var: str,
    transforms: dict,
    hook: str,
    head: int | None = None,
) -> dict[str, float]:
    """IIA, per named transform, for interchanging only ``var`` in the high-level model while
    the low-level activation at ``hook`` (one head's, or all heads' flattened, for per-head
    hooks) is replaced by ``transform(base_act, source_act)``; base and source are both inputs
    on which the variable is defined (sources: the same inputs rolled by one). The source cache
    and the high-level target are shared by all transforms."""
    own = tokens[own_rows(bench, var, bench.task_ids(tokens))]
    if len(own) < 2:
        return dict.fromkeys(transforms, float("nan"))
    src = torch.roll(own, 1, 0)
    source = read_site(source_cache(model, src, [hook])[hook], head)
    mask = torch.ones(len(own), dtype=torch.bool)
    target = bench.run_high_level(own, {var: (mask, bench.run_high_level(src)[var])})["output"]
    out = {}
    for name, transform in transforms.items():

        def fn(a, point, t=transform):
            return write_site(a, head, t(read_site(a, head), source))

        with torch.no_grad():
            logits = model.run_with_hooks(own, fwd_hooks=[(hook, fn)])
        out[name] = _acc(logits, target, bench.task_ids(own), len(bench.tasks))[0]
    return out


def score_mlp(
    model,
    bench: Benchmark,
    layer: int,
    train_tokens: torch.Tensor,
    test_tokens: torch.Tensor,
    n_latents: int | None = None,
    arch: str = "topk",
    k: int = 8,
    sae_steps: int = 1000,
    seed: int = 0,
    subspace: str = "class_means",
    das_steps: int = 300,
    das_dims: int | None = None,
) -> dict:
    """Train an SAE (and probes) on MLP ``layer`` activations of ``train_tokens``; score the
    SAE, raw neurons and probe directions on ``test_tokens``. ``subspace``: the supervised
    reference subspace per variable, "class_means", "das" (learned, ``das_steps`` steps) or
    "both"; ``das_dims``: DAS's dimension (default: the class means')."""
    from gridlens.groundtruth.sae import train_sae

    variables = mlp_variables(bench, layer)
    if not variables:
        raise ConfigError(f"no high-level variable lives in MLP {layer} of {bench.name!r}")
    tr, te = collect(model, bench, train_tokens, layer), collect(model, bench, test_tokens, layer)
    d_mlp = tr["acts"].shape[1]
    n_latents = n_latents or 2 * d_mlp
    sae, rep = train_sae(tr["acts"], n_latents, arch=arch, k=k, steps=sae_steps, seed=seed)
    y_tr, names = value_targets(bench, tr)
    y_te, names_te = value_targets(bench, te)
    if names_te != names:  # align columns on the values present in both
        common = [n for n in names if n in names_te]
        y_tr = y_tr[:, [names.index(n) for n in common]]
        y_te = y_te[:, [names_te.index(n) for n in common]]
        names = common
    references = variable_subspaces(
        model, bench, layer, train_tokens, subspace, das_steps, seed, names, das_dims
    )
    with torch.no_grad():
        lat_te = sae.encode(te["acts"])
    probe_w, probe_b = train_probes(tr["acts"], y_tr, seed=seed)
    units = {
        "sae": lat_te > 0,
        "neurons": te["acts"] > 0,
        "probe": (te["acts"] @ probe_w.t() + probe_b) > 0,
    }
    n_tasks = len(bench.tasks)
    out: dict = {
        "layer": layer,
        "hook": f"blocks.{layer}.mlp.hook_post",
        "variables": variables,
        "sae": {
            "arch": arch,
            "k": k,
            "n_latents": n_latents,
            "fvu_train": rep.fvu,
            "l0": rep.l0,
            "dead_fraction": rep.dead_fraction,
        },
    }
    hook = f"blocks.{layer}.mlp.hook_post"
    with torch.no_grad():
        x = te["acts"]
        out["sae"]["fvu_test"] = float((sae(x) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
        out["sae"]["accuracy_clean"] = _splice_accuracy(
            model, bench, test_tokens, hook, lambda a: a
        )
        out["sae"]["accuracy_spliced"] = _splice_accuracy(
            model, bench, test_tokens, hook, lambda a: sae(a)
        )
    methods = {}
    assignments = {}
    for method, act in units.items():
        f1 = f1_matrix(y_te, act)
        sc = unit_scores(f1, names)
        if method == "probe":  # probes are supervised: each value has its own direction
            diag = f1.diagonal()
            sc["hungarian_mean_f1"] = float(diag.mean())
        sc["task_purity"] = task_purity(act, te["task"], n_tasks) if n_tasks > 1 else None
        sc["f1_matrix"] = f1
        methods[method] = sc
        assignments[method] = {}
        for i, (var, _value) in enumerate(names):
            unit = i if method == "probe" else sc["per_value"][i]["matched_unit"]
            if unit is not None:
                assignments[method].setdefault(var, []).append(unit)
    # IIA when only the units assigned to a variable are interchanged
    for var in variables:
        sae_units = sorted(set(assignments["sae"].get(var, [])))
        neuron_units = sorted(set(assignments["neurons"].get(var, [])))
        probe_rows = sorted(set(assignments["probe"].get(var, [])))

        def sae_t(a, s, units=sae_units):
            fa, fs = sae.encode(a), sae.encode(s)
            err = a - sae.decode(fa)
            fa = fa.clone()
            fa[..., units] = fs[..., units]
            return sae.decode(fa) + err

        def neuron_t(a, s, units=neuron_units):
            a = a.clone()
            a[..., units] = s[..., units]
            return a

        if probe_rows:
            probe_q, _ = torch.linalg.qr(probe_w[probe_rows].t())
        else:
            probe_q = torch.zeros(d_mlp, 0)
        transforms = {
            "sae": sae_t,
            "neurons": neuron_t,
            "probe": _subspace_swap(probe_q),
            **{name: _subspace_swap(q) for name, (q, _) in references[var].items()},
            "none": lambda a, s: a,
            "whole_mlp": lambda a, s: s,
        }
        iia = patched_iia(model, bench, test_tokens, layer, var, transforms)
        for method, value in iia.items():
            methods.setdefault(method, {}).setdefault("iia", {})[var] = value
        for name, (q, seconds) in references[var].items():
            methods[name].setdefault("dims", {})[var] = q.shape[1]
            methods[name].setdefault("seconds", {})[var] = seconds
    out["value_names"] = [f"{v}={value_name(bench, v, val)}" for v, val in names]
    out["methods"] = methods
    return out


# ----------------------------------------------------------------------------- circuit discovery


def _component_of(site: Site) -> Site:
    group = _mlp_group(site)
    return Site(f"blocks.{group}.hook_mlp_out") if group is not None else site


def circuit_discovery(
    model, bench: Benchmark, tokens: torch.Tensor, task: int | None = None
) -> dict:
    """Activation patching and AtP scores of every head and MLP for base/source pairs of one
    task (or all), and their ROC AUC against the known circuit.

    The metric is, per example, the summed log-probability of the clean labels; a component's
    score is the mean absolute change of that metric when its activation is taken from the
    source (activation patching: all components in one batched forward), or its first-order
    estimate grad . (source - base) (AtP: one forward and backward)."""
    if task is not None:
        tokens = tokens[bench.task_ids(tokens) == task]
    n = len(tokens)
    if n < 2:
        raise ConfigError("circuit discovery needs at least two inputs")
    source = torch.roll(tokens, 1, 0)
    labels = bench.labels(tokens)
    comps = all_component_sites(bench.config)
    in_circuit = {_component_of(s) for s in bench.circuit_sites(task)}
    truth = [c in in_circuit for c in comps]
    names = sorted({c.hook for c in comps})
    cache = source_cache(model, source, names)

    def metric(logits: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
        lp = logits.log_softmax(-1)
        valid = lab >= 0
        picked = lp.gather(-1, lab.clamp(min=0)[..., None])[..., 0]
        return (picked * valid).sum(-1)

    with torch.no_grad():
        clean = metric(model(tokens), labels)
        c = len(comps)
        big = {k: v.repeat(c, *([1] * (v.dim() - 1))) for k, v in cache.items()}
        masks = {}
        for i, comp in enumerate(comps):
            m = torch.zeros(c * n, dtype=torch.bool)
            m[i * n : (i + 1) * n] = True
            masks[comp] = m
        logits = model.run_with_hooks(tokens.repeat(c, 1), fwd_hooks=patch_hooks(masks, big))
        patched = metric(logits, labels.repeat(c, 1)).view(c, n)
    act_patch = (patched - clean[None]).abs().mean(1)

    # AtP: gradients of the metric with respect to every hooked activation
    saved: dict[str, torch.Tensor] = {}

    def keep(a, p):
        a.retain_grad()
        saved[p.name] = a
        return None

    model.zero_grad(set_to_none=True)
    logits = model.run_with_hooks(tokens, fwd_hooks=[(h, keep) for h in names])
    metric(logits, labels).sum().backward()
    atp = []
    for comp in comps:
        a = saved[comp.hook]
        delta = (cache[comp.hook] - a.detach()) * a.grad
        if comp.head is not None:
            delta = delta[:, :, comp.head]
        atp.append(delta.reshape(n, -1).sum(1).abs().mean())
    atp_t = torch.stack(atp).detach()
    model.zero_grad(set_to_none=True)
    return {
        "task": bench.tasks[task].name if task is not None else "all",
        "components": [cc.label for cc in comps],
        "in_circuit": truth,
        "activation_patching": act_patch.tolist(),
        "atp": atp_t.tolist(),
        "auc_activation_patching": roc_auc(act_patch.numpy(), truth),
        "auc_atp": roc_auc(atp_t.numpy(), truth),
    }
