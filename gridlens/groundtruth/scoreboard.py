"""A scoreboard: any method's units at any site, scored against every known variable of
every ground-truth model.

A *method* gives units at a site: raw neurons (at a linear site such as the residual stream or
``hook_z``, each dimension gives two units, its positive and its negative part), one-vs-rest
logistic probes (supervised; unit i is value i's own probe), or a sparse autoencoder of any of
gridlens's architectures (trained here on the site's activations, or loaded from a SAELens 6
folder written by any tool). A unit is active where its code is > 0. For each variable:

- ``f1``: the mean over the variable's values of the best unit's detection F1 (rows of other
  tasks count as negatives);
- ``iia``: the accuracy against the high-level model with only that variable interchanged,
  when the units matched to the variable's values (Hungarian matching of all scored values to
  units; probes: their own) are taken from a source input and everything else is kept (an SAE's
  error term included);
- ``purity`` (multi-task models): the share of the matched units' firings that come from the
  variable's own task, each task weighted equally.

Built-in methods score each variable at the site of their kind (``mlp`` = ``mlp.hook_post``,
``z`` = ``attn.hook_z`` with all heads flattened, ``resid`` = ``hook_resid_post``) in the layer
the correspondence puts the variable in; a loaded SAE scores every variable at its own site.
The ``none`` row is the IIA of interchanging nothing: how often the output does not change.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from gridlens.errors import ConfigError
from gridlens.groundtruth.scoring import (
    _acc,
    f1_matrix,
    linear_assignment,
    own_rows,
    site_iia,
    train_probes,
    value_targets,
)
from gridlens.groundtruth.spec import Benchmark
from gridlens.models.hooks import read_site

SITE_KINDS = {
    "mlp": "blocks.{layer}.mlp.hook_post",
    "z": "blocks.{layer}.attn.hook_z",
    "resid": "blocks.{layer}.hook_resid_post",
}
FORMAT = "gridlens-groundtruth-scoreboard"


@dataclass
class Units:
    """A method's units at one site: ``codes(x)`` [N, U] (active where > 0) and
    ``swap(base, source, units)``, the base activation with those units from the source."""

    codes: Callable[[torch.Tensor], torch.Tensor]
    swap: Callable[[torch.Tensor, torch.Tensor, list[int]], torch.Tensor]
    own_units: bool = False  # unit i belongs to scored value i (supervised probes)


def neuron_units(signed: bool) -> Units:
    def codes(x):
        return torch.cat([x, -x], -1) if signed else x

    def swap(a, s, units):
        dims = sorted({u % a.shape[-1] for u in units})
        out = a.clone()
        out[..., dims] = s[..., dims]
        return out

    return Units(codes, swap)


def sae_units(sae) -> Units:
    """Latents of any SAE with ``encode`` / ``decode`` (error term kept when swapping)."""

    def swap(a, s, units):
        fa = sae.encode(a)
        err = a - sae.decode(fa)
        fa = fa.clone()
        fa[..., units] = sae.encode(s)[..., units]
        return sae.decode(fa) + err

    return Units(sae.encode, swap)


def probe_units(acts: torch.Tensor, y: torch.Tensor, seed: int) -> Units:
    w, b = train_probes(acts, y, seed=seed)

    def swap(a, s, units):
        q, _ = torch.linalg.qr(w[units].t())
        return a + (s - a) @ q @ q.t()

    return Units(lambda x: x @ w.t() + b, swap, own_units=True)


class _RowStore:
    """Batches of fixed activation rows, drawn with replacement, for :func:`train_sae`."""

    def __init__(self, acts: torch.Tensor, batch_size: int, seed: int):
        self.acts, self.batch_size = acts, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def peek(self, n: int) -> torch.Tensor:
        return self.acts[:n]

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        return self.acts[
            torch.randint(len(self.acts), (self.batch_size,), generator=self.generator)
        ]


def train_site_sae(
    acts: torch.Tensor, arch: str, hook: str, steps: int = 500, k: int = 8, seed: int = 0
):
    """An SAE of gridlens's architecture ``arch`` (2 x width latents) trained on ``acts``."""
    from gridlens.sae.model import SAEConfig
    from gridlens.sae.train import SAETrainConfig, train_sae

    d_in = acts.shape[1]
    cfg = SAEConfig(d_in, 2 * d_in, arch, hook, k=min(k, 2 * d_in))
    batch = min(512, len(acts))
    train_cfg = SAETrainConfig(
        tokens=steps * batch,
        batch_size=batch,
        seed=seed,
        device="cpu",
        progress=False,
        dead_after_tokens=50 * batch,
    )
    return train_sae(None, cfg, train_cfg, store=_RowStore(acts, batch, seed), progress=False)


# ----------------------------------------------------------------------------- scoring


def collect_site(model, bench: Benchmark, tokens: torch.Tensor, hook: str, head: int | None):
    """Activations at a site on labelled positions, every variable's values, each row's task."""
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names=[hook])
    values = bench.run_high_level(tokens)
    valid = values["output"] >= 0
    return {
        "acts": read_site(cache[hook], head)[valid],
        "task": bench.task_ids(tokens)[:, None].expand_as(valid)[valid],
        "values": {v: values[v][valid] for v in bench.variable_names},
    }


def targets(bench: Benchmark, fit: dict, test: dict, variables: list[str]):
    """(y_fit, y_test, value names) over the values of ``variables`` present in both."""
    y_fit, names_fit = value_targets(bench, {**fit, "values": _pick(fit, variables)})
    y_test, names_test = value_targets(bench, {**test, "values": _pick(test, variables)})
    common = [n for n in names_fit if n in names_test]
    pick_fit = [names_fit.index(n) for n in common]
    return y_fit[:, pick_fit], y_test[:, [names_test.index(n) for n in common]], common


def _pick(data: dict, variables: list[str]) -> dict:
    return {v: data["values"][v] for v in variables}


def matched_units(f1: torch.Tensor, own_units: bool) -> list[int | None]:
    """The unit matched to each value (row of ``f1``): Hungarian, or the value's own probe."""
    if own_units:
        return list(range(f1.shape[0]))
    matched = dict(linear_assignment(f1.numpy()))
    return [matched.get(i) for i in range(f1.shape[0])]


def purity(active: torch.Tensor, task: torch.Tensor, n_tasks: int, units: list[int], k: int):
    """Share of the units' firings that come from task ``k``, each task's rows weighted
    equally; None for one task, the task-id variable or units that never fire."""
    if n_tasks < 2 or k < 0 or not units:
        return None
    rates = torch.stack([active[task == t][:, units].float().mean(0) for t in range(n_tasks)])
    alive = rates.sum(0) > 0
    if not bool(alive.any()):
        return None
    return float((rates[k, alive] / rates[:, alive].sum(0)).mean())


def score_units(model, bench, units: Units, fit, test, test_tokens, site, variables) -> dict:
    """Cells {variable: {f1, iia, purity, units, site}} for one method at one site."""
    _y_fit, y_test, names = targets(bench, fit, test, variables)
    active = units.codes(test["acts"]) > 0
    f1 = f1_matrix(y_test, active)
    match = matched_units(f1, units.own_units)
    best = f1.diagonal() if units.own_units else f1.max(1).values
    cells = {}
    for var in variables:
        rows = [i for i, (v, _value) in enumerate(names) if v == var]
        chosen = sorted({match[i] for i in rows if match[i] is not None})
        with torch.no_grad():
            iia = site_iia(
                model,
                bench,
                test_tokens,
                var,
                {"units": lambda a, s, u=chosen: units.swap(a, s, u)},
                *site,
            )["units"]
        k = _task_of(bench, var)
        cells[var] = {
            "f1": float(best[rows].mean()) if rows else None,
            "iia": iia,
            "purity": purity(active, test["task"], len(bench.tasks), chosen, k),
            "units": chosen,
            "site": site[0] + (f"[head {site[1]}]" if site[1] is not None else ""),
        }
    return cells


def _task_of(bench: Benchmark, var: str) -> int:
    return -1 if var == "task" else [t.name for t in bench.tasks].index(var.split(".")[0])


def none_iia(model, bench: Benchmark, tokens: torch.Tensor, var: str) -> float:
    """IIA with nothing interchanged: how often interchanging ``var`` leaves the output alone."""
    own = tokens[own_rows(bench, var, bench.task_ids(tokens))]
    mask = torch.ones(len(own), dtype=torch.bool)
    src = torch.roll(own, 1, 0)
    target = bench.run_high_level(own, {var: (mask, bench.run_high_level(src)[var])})["output"]
    with torch.no_grad():
        logits = model(own)
    return _acc(logits, target, bench.task_ids(own), len(bench.tasks))[0]


def home_layer(bench: Benchmark, var: str) -> int:
    return bench.correspondence[var].layer


def check_kinds(kinds: list[str]) -> None:
    bad = [k for k in kinds if k not in SITE_KINDS]
    if bad or not kinds:
        raise ConfigError(f"sites {bad or kinds}: expected some of {sorted(SITE_KINDS)}")


def out_paths(out: Path) -> dict[str, Path]:
    return {ext: out / f"scoreboard.{ext}" for ext in ("json", "md", "png")}


# ----------------------------------------------------------------------------- the board


@dataclass
class LoadedSAE:
    """An SAE loaded from a SAELens 6 folder, for the benchmark ``bench`` (None: any it fits)."""

    name: str
    sae: object
    hook: str
    head: int | None
    bench: str | None


def load_user_sae(spec: str) -> LoadedSAE:
    """``[BENCH=]PATH`` to a SAELens 6 folder (ours, or written by SAELens or another tool)."""
    from gridlens.sae.io import load_sae, read_sae_cfg

    bench, _, path = spec.rpartition("=")
    sae = load_sae(path)
    head = (read_sae_cfg(path).get("metadata") or {}).get("hook_head_index")
    return LoadedSAE(path, sae, sae.cfg.hook_name, head, bench or None)


def _fits(model, bench_name: str, s: LoadedSAE, tokens: torch.Tensor) -> bool:
    if s.bench is not None and s.bench != bench_name:
        return False
    if s.hook not in model.hook_names:
        width = None
    else:
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens[:1], names=[s.hook])
        width = read_site(cache[s.hook], s.head).shape[-1]
    if width == s.sae.cfg.d_in:
        return True
    if s.bench is not None:
        raise ConfigError(
            f"SAE {s.name}: {s.hook} (head {s.head}) of {bench_name} has width {width}, the SAE "
            f"reads d_in={s.sae.cfg.d_in}"
        )
    return False


def _builtin(kind: str, fit: dict, y_fit: torch.Tensor, hook: str, archs, steps, k, seed):
    methods = {
        "neurons": neuron_units(signed=kind != "mlp"),
        "probe": probe_units(fit["acts"], y_fit, seed),
    }
    for arch in archs:
        sae = train_site_sae(fit["acts"], arch, hook, steps=steps, k=k, seed=seed)
        methods[f"sae-{arch}"] = sae_units(sae)
    return methods


def benchmark_tokens(bench: Benchmark, cfg: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit, test) inputs of one model, ``n_per_task`` in all per task, drawn from ``seed``."""
    import numpy as np

    rng = np.random.default_rng(cfg["seed"])
    fit_tokens, _ = bench.generate(cfg["n_per_task"] // 2, rng)
    test_tokens, _ = bench.generate(cfg["n_per_task"] - cfg["n_per_task"] // 2, rng)
    return fit_tokens, test_tokens


def board_parts(bench: Benchmark, cfg: dict) -> list[tuple[str, int | None]]:
    """A model's independent pieces of work, in row order: the `none` reference, each site
    kind at each layer that holds a variable, the loaded SAEs."""
    layers = sorted({home_layer(bench, var) for var in bench.variable_names})
    sites = [(kind, layer) for kind in cfg["sites"] for layer in layers]
    return [("none", None), *sites, ("saes", None)]


def score_site(model, bench, cfg: dict, tokens, kind: str, layer: int) -> dict:
    """{row label: {variable: cell}} of the built-in methods at one site kind and layer."""
    fit_tokens, test_tokens = tokens
    variables = [var for var in bench.variable_names if home_layer(bench, var) == layer]
    hook = SITE_KINDS[kind].format(layer=layer)
    fit = collect_site(model, bench, fit_tokens, hook, None)
    test = collect_site(model, bench, test_tokens, hook, None)
    y_fit = targets(bench, fit, test, variables)[0]
    args = (cfg["train_saes"], cfg["sae_steps"], cfg["sae_k"], cfg["seed"])
    return {
        f"{method} · {kind}": score_units(
            model, bench, units, fit, test, test_tokens, (hook, None), variables
        )
        for method, units in _builtin(kind, fit, y_fit, hook, *args).items()
    }


def score_loaded(name, model, bench, test_tokens, user_saes: list[LoadedSAE]) -> dict:
    """{row label: {variable: cell}} of the loaded SAEs that fit the model."""
    rows = {}
    for s in user_saes:
        if _fits(model, name, s, test_tokens):
            test = collect_site(model, bench, test_tokens, s.hook, s.head)
            label = f"{s.name} · {s.hook}" + (f"[{s.head}]" if s.head is not None else "")
            site = (s.hook, s.head)
            units = sae_units(s.sae)
            rows[label] = score_units(
                model, bench, units, test, test, test_tokens, site, bench.variable_names
            )
    return rows


def score_part(name, model, bench, cfg, user_saes, tokens, part) -> dict:
    """{row label: {variable: cell}} of one of :func:`board_parts`."""
    kind, layer = part
    if kind == "none":
        return {
            "none": {v: {"iia": none_iia(model, bench, tokens[1], v)} for v in bench.variable_names}
        }
    if kind == "saes":
        return score_loaded(name, model, bench, tokens[1], user_saes)
    return score_site(model, bench, cfg, tokens, kind, layer)


def score_benchmark(name, model, bench, cfg: dict, user_saes: list[LoadedSAE], log) -> dict:
    """{row label: {variable: cell}} for one model: built-in methods per site kind and layer,
    the loaded SAEs that fit it, and the `none` reference (in this process)."""
    rows: dict[str, dict] = {}
    for part_rows in score_parts({name: (model, bench)}, cfg, user_saes, log, 1).values():
        for label, cells in part_rows.items():
            rows.setdefault(label, {}).update(cells)
    return rows


_SHARED: dict = {}  # what forked workers read: the runs, their inputs, cfg, loaded SAEs


def _score_job(job: tuple[str, tuple]) -> tuple[tuple, dict]:
    name, part = job
    (model, bench), tokens = _SHARED["runs"][name], _SHARED["tokens"][name]
    rows = score_part(name, model, bench, _SHARED["cfg"], _SHARED["saes"], tokens, part)
    return job, rows


def _one_thread() -> None:
    torch.set_num_threads(1)


def _job_cost(runs: dict, job: tuple[str, tuple]) -> float:
    """A rough cost, to start the longest jobs first: parameters x tasks (sites only)."""
    model, bench = runs[job[0]]
    size = sum(p.numel() for p in model.parameters())
    return 0.0 if job[1][1] is None else size * len(bench.tasks)


def score_parts(runs: dict, cfg: dict, user_saes: list[LoadedSAE], log, workers: int) -> dict:
    """{(name, part): rows} for every part of every model, in board order. ``workers`` > 1
    (where processes can fork): that many single-threaded forked processes, longest jobs first
    (why processes: on these small operations two torch threads in one process spend 25% more
    CPU on idle cores, and once another job shares the cores they wait for each other far
    longer than they compute; processes do not)."""
    import multiprocessing as mp

    jobs = [(name, part) for name, (_m, bench) in runs.items() for part in board_parts(bench, cfg)]
    _SHARED.update(
        runs=runs,
        tokens={name: benchmark_tokens(bench, cfg) for name, (_m, bench) in runs.items()},
        cfg=cfg,
        saes=user_saes,
    )
    results = {}
    try:
        if workers > 1 and "fork" in mp.get_all_start_methods():
            order = sorted(jobs, key=lambda job: -_job_cost(runs, job))
            with mp.get_context("fork").Pool(workers, initializer=_one_thread) as pool:
                for job, rows in pool.imap_unordered(_score_job, order):
                    results[job] = rows
                    _log_job(log, job)
        else:
            for job in jobs:
                results[job] = _score_job(job)[1]
                _log_job(log, job)
    finally:
        _SHARED.clear()
    return {job: results[job] for job in jobs}


def available_cores() -> int:
    """The cores this process may run on (all of the machine's where the OS cannot say)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _log_job(log, job) -> None:
    name, (kind, layer) = job
    if layer is not None:
        log(f"{name}: {kind} layer {layer} scored")


def scoreboard(
    runs: dict, cfg: dict, user_saes: list[LoadedSAE], log=print, workers: int = 1
) -> dict:
    """The board over ``runs`` ({name: (model, benchmark)}): columns are (benchmark, variable),
    rows methods; a row's cell is None where the method does not apply to that model.
    ``workers`` > 1: the parts of all models are shared among that many forked processes."""
    columns = [
        {"key": f"{name}/{var}", "benchmark": name, "variable": var,
         "home": bench.correspondence[var].label}
        for name, (_model, bench) in runs.items()
        for var in bench.variable_names
    ]  # fmt: skip
    results = score_parts(runs, cfg, user_saes, log, workers)
    by_row: dict[str, dict] = {}
    for (name, _part), rows in results.items():
        for label, cells in rows.items():
            by_row.setdefault(label, {}).update({f"{name}/{v}": c for v, c in cells.items()})
    unused = [s.name for s in user_saes if not any(r.startswith(f"{s.name} · ") for r in by_row)]
    if unused:
        raise ConfigError(f"SAE(s) {unused} fit none of the models {list(runs)} (site or width)")
    rows = [
        {"method": label, "cells": [cells.get(c["key"]) for c in columns]}
        for label, cells in by_row.items()
    ]
    return {"format": FORMAT, "version": 1, "config": cfg, "columns": columns, "rows": rows}


def markdown(board: dict) -> str:
    """One table: methods as rows, benchmark/variable as columns; cells `F1 / IIA [/ purity]`."""
    head = [
        f"{c['benchmark']}/{c['variable'].removeprefix(c['benchmark'] + '.')} ({c['home']})"
        for c in board["columns"]
    ]
    lines = [
        "Cells: best-unit F1 / IIA of interchanging the matched units / task purity (multi-task "
        "models); `none`: IIA with nothing interchanged. Column: benchmark/variable (its site).",
        "",
        "| method | " + " | ".join(head) + " |",
        "| --- |" + " --- |" * len(head),
    ]
    for row in board["rows"]:
        lines.append(f"| {row['method']} | " + " | ".join(_cell(c) for c in row["cells"]) + " |")
    return "\n".join(lines) + "\n"


def _cell(cell: dict | None) -> str:
    if cell is None:
        return ""
    parts = [cell.get(k) for k in ("f1", "iia", "purity")]
    text = [("–" if v is None else f"{v:.2f}") for v in parts]
    return " / ".join(text if parts[2] is not None else text[:2])


def matrix(board: dict, metric: str):
    """[rows, columns] of one metric, nan where missing."""
    import numpy as np

    return np.array(
        [
            [np.nan if c is None or c.get(metric) is None else c[metric] for c in r["cells"]]
            for r in board["rows"]
        ]
    )


def figure(board: dict, path: Path | None = None):
    """Heatmaps of F1, IIA and purity (rows: methods; columns: benchmark/variable); a PNG
    only when given a path."""
    from gridlens.plotting import finish, pyplot

    plt = pyplot()
    n_rows, n_cols = len(board["rows"]), len(board["columns"])
    metrics = ("f1", "iia", "purity")
    fig, axes = plt.subplots(3, 1, figsize=(3 + 0.45 * n_cols, 3 * (1.5 + 0.28 * n_rows)))
    for ax, metric in zip(axes, metrics, strict=True):
        im = ax.imshow(matrix(board, metric), vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_yticks(range(n_rows), [r["method"] for r in board["rows"]], fontsize=7)
        ax.set_xticks(
            range(n_cols), [c["key"] for c in board["columns"]], rotation=70, ha="right", fontsize=6
        )
        ax.set_title(metric, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.02)
    fig.tight_layout()
    return finish(fig, path)
