"""`build_report`: evaluate a model and run the circuit analyses on it, then write one HTML page
with every figure beside it and every number in `report.json`.

The folder is built in a temporary directory beside `out` and renamed into place, so a crash
or Ctrl-C leaves the previous report (or nothing), never half of one. Each stage is one analysis
with its section of the page; a stage that fails stops the build with its name in the error.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gridlens.errors import ConfigError, GridlensError, unknown_name
from gridlens.io import atomic_directory, atomic_write
from gridlens.report.circuit_stage import stage_circuit
from gridlens.report.findings import stage_claims, stage_findings, stage_neurons, stage_sae
from gridlens.report.html import Figure, Page, Section, Table, Text

REPORT_FORMAT = "gridlens.report"
REPORT_VERSION = 2  # 2: `findings` is the list of claims; section lines in `section_findings`


@dataclass(frozen=True)
class Size:
    """How many quizzes each stage uses; `small` is sized to finish in minutes on 2 CPU cores."""

    eval_n: int  # evaluation quizzes per task and predicted structure (4 structures)
    n_per_task: int  # analysis quizzes per task (ablation, attention, direct paths)
    pairs_per_task: int  # clean/corrupted pairs per task for patching
    probe_per_task: int  # quizzes per task for the linear probes
    patterns: int  # attention-pattern figures (the most important heads)
    sae_tokens: int  # activation rows an SAE trained for the report sees


SIZES: dict[str, Size] = {
    "tiny": Size(1, 2, 1, 4, 1, 40_000),
    "small": Size(8, 16, 4, 12, 3, 200_000),
    "full": Size(100, 64, 16, 64, 6, 1_000_000),
}


class ReportError(GridlensError):
    """A report that cannot be built from these options."""


@dataclass
class _Run:
    """What the stages share: the model, the options, the folder and what came before."""

    model: Any
    tasks: tuple[str, ...]
    size: Size
    n_per_task: int
    seed: int
    folder: Path
    training: dict[str, Any] | None
    results: dict[str, Any] = field(default_factory=dict)  # name -> to_json()
    objects: dict[str, Any] = field(default_factory=dict)  # name -> result, for later stages
    sections: list[Section] = field(default_factory=list)
    population: Path | None = None  # a culture population to report on, if given
    sae_path: Path | None = None  # an SAE given with --sae
    transcoders_path: Path | None = None  # transcoders given with --transcoders
    claims: list = field(default_factory=list)  # the published claims, tested (findings.py)
    study: Any = None  # the task-specific MLP's quizzes and answers (mlp_claims.MlpStudy)
    sae: Any = None  # the SAE of the SAE section
    _quizzes: Any = None

    @property
    def cfg(self):
        return self.model.cfg

    @property
    def quizzes(self):
        """The analysis quiz set, made once (canonical structure, no noise)."""
        if self._quizzes is None:
            from gridlens.analysis.core import quiz_set

            self._quizzes = quiz_set(self.tasks, self.n_per_task, seed=self.seed)
        return self._quizzes

    def figure(self, result, name: str, caption: str, method: str = "plot") -> Figure:
        """Draw one of the result's figures into the folder; the page's Figure for it."""
        getattr(result, method)(self.folder / name)
        return Figure(name, caption)

    def keep(self, name: str, result) -> list[str]:
        """Record a result's numbers for report.json; its findings for the page."""
        self.results[name] = result.to_json()
        self.objects[name] = result
        return list(result.findings())


def build_report(
    model: str = "default",
    tasks: str = "default",
    out: str | Path = "report",
    size: str = "small",
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
    n_per_task: int | None = None,
    command: str | None = None,
    population: str | Path | None = None,
    sae: str | Path | None = None,
    transcoders: str | Path | None = None,
) -> Path:
    """Evaluate `model` and run every analysis on it; write `out/index.html`, its PNGs and
    `out/report.json`. Returns the folder. `size` ("tiny", "small", "full") sets how many
    quizzes each stage uses; `n_per_task` overrides the analysis quiz count; `population` (a
    `gridlens culture run` folder) adds a section on its culture; `sae` (an SAE folder, or
    'default') replaces the SAE the report would choose or train; `transcoders` (a
    `gridlens sae transcoder` folder) adds the attribution graph of the transform cell."""
    from tqdm import tqdm

    from gridlens.training.commands import resolve_model
    from gridlens.world.tasks import resolve_tasks

    if size not in SIZES:
        raise unknown_name("report size", size, SIZES)
    if n_per_task is not None and n_per_task < 1:
        raise ConfigError(f"n_per_task must be >= 1, got {n_per_task}")
    if seed < 0:
        raise ConfigError(f"seed must be >= 0, got {seed}")
    if isinstance(tasks, str) and not any(part.strip() for part in tasks.split(",")):
        raise ConfigError(f"tasks {tasks!r} selects no task")
    task_names = resolve_tasks(tasks)
    out = Path(out)
    _check_target(out)
    stages = list(STAGES)
    if population is not None:
        from gridlens.training.culture.report import load_population_summary

        population = Path(population)
        load_population_summary(population)  # a bad folder fails before any work
        stages.append(("culture", _stage_culture))
    if transcoders is not None:
        from gridlens.report.graph_stage import stage_graph
        from gridlens.sae.transcoder_io import load_transcoders

        load_transcoders(transcoders)  # a bad folder fails before any work
        stages.append(("graph", stage_graph))
    loaded, training, path = resolve_model(str(model), device)
    loaded = loaded.to(device).eval()
    if sae is not None:
        _check_sae(loaded, sae)
    spec = SIZES[size]
    options = {
        "model": str(model),
        "tasks": list(task_names),
        "size": size,
        "seed": seed,
        "device": device,
        "n_per_task": n_per_task or spec.n_per_task,
        "population": None if population is None else str(population),
        "sae": None if sae is None else str(sae),
        "transcoders": None if transcoders is None else str(transcoders),
    }
    command = command or "build_report(" + ", ".join(f"{k}={v!r}" for k, v in options.items()) + ")"

    def fill(folder: Path) -> None:
        run = _Run(loaded, task_names, spec, options["n_per_task"], seed, folder, training)
        run.population = population
        run.sae_path = None if sae is None else str(sae)
        run.transcoders_path = transcoders
        timings: dict[str, float] = {}
        cpu: dict[str, float] = {}
        started, started_cpu = time.perf_counter(), time.process_time()
        with tqdm(stages, desc="report", unit="stage", disable=not progress, leave=False) as bar:
            for name, stage in bar:
                bar.set_postfix_str(name)
                t0, c0 = time.perf_counter(), time.process_time()
                try:
                    section = stage(run)
                except GridlensError:
                    raise
                except Exception as error:
                    raise RuntimeError(f"report stage {name!r} failed: {error}") from error
                if section is not None:
                    run.sections.append(section)
                timings[name] = round(time.perf_counter() - t0, 3)
                cpu[name] = round(time.process_time() - c0, 3)
        timings["total"] = round(time.perf_counter() - started, 3)
        cpu["total"] = round(time.process_time() - started_cpu, 3)
        page = _page(run, path, options, timings, cpu, command)
        page.write(folder)
        payload = {
            "format": REPORT_FORMAT,
            "version": REPORT_VERSION,
            "command": command,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "options": options,
            "model": _model_info(loaded, path, training),
            "versions": _versions(),
            "timings_s": timings,
            "cpu_s": cpu,
            "summary": _summary(run.sections),
            "findings": run.results.pop("findings"),
            "section_findings": {s.title: s.findings for s in run.sections},
            "results": run.results,
        }
        text = (json.dumps(_plain(payload), indent=2, allow_nan=False) + "\n").encode()
        atomic_write(folder / "report.json", lambda handle: handle.write(text))

    return atomic_directory(out, fill)


def _check_sae(model, sae: str | Path) -> None:
    """Refuse, before any work, an SAE whose site this model lacks or has another width."""
    from gridlens.sae.activations import site_width
    from gridlens.sae.io import load_sae

    cfg = load_sae(sae).cfg
    width = site_width(model, cfg.hook_name)
    if width != cfg.d_in:
        raise ReportError(f"{sae}: SAE d_in {cfg.d_in}, but {cfg.hook_name} has width {width}")


def _check_target(out: Path) -> None:
    """Refuse to replace anything but an earlier report: the folder is swapped out whole."""
    if out.exists() and not out.is_dir():
        raise ReportError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / "report.json").is_file():
        raise ReportError(
            f"{out}: a non-empty folder that is not a gridlens report; the report replaces the "
            "whole folder, so choose a new or empty one"
        )


# ---------------------------------------------------------------------------- header, json


def _model_info(model, path: Path, training: dict | None) -> dict[str, Any]:
    cfg = model.cfg
    info: dict[str, Any] = {
        "path": str(path),
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "config": {
            k: getattr(cfg, k) for k in ("d_model", "n_layers", "n_heads", "d_head", "d_mlp")
        },
    }
    if training:
        info["training"] = {
            k: training.get(k) for k in ("tasks", "steps", "batch_size", "seed", "test_seed")
        }
    return info


def _versions() -> dict[str, str]:
    import matplotlib

    import gridlens

    return {
        "gridlens": gridlens.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "matplotlib": matplotlib.__version__,
    }


def _plain(value: Any) -> Any:
    """JSON-safe: numpy scalars to Python, NaN/inf to None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _page(run: _Run, path: Path, options: dict, timings: dict, cpu: dict, command: str) -> Page:
    info = _model_info(run.model, path, run.training)
    c = info["config"]
    meta = [
        ("model", str(path)),
        (
            "shape",
            f"{c['n_layers']} layers, {c['n_heads']} heads of {c['d_head']}, d_model "
            f"{c['d_model']}, d_mlp {c['d_mlp']}, {info['parameters']:,} parameters",
        ),
        ("tasks", ", ".join(run.tasks)),
        (
            "size",
            f"{options['size']}: {options['n_per_task']} analysis quizzes per task, "
            f"{run.size.eval_n} per task and structure for the evaluation, seed {run.seed}",
        ),
        ("command", command),
        (
            "built",
            f"{timings['total']:.0f} s on {options['device']}; gridlens {_versions()['gridlens']}",
        ),
    ]
    if run.training:
        meta.insert(
            2,
            (
                "training",
                f"{run.training.get('steps')} steps of {run.training.get('batch_size')} quizzes "
                f"on {', '.join(run.training.get('tasks', []))}",
            ),
        )
    summary = Section(
        "Summary",
        howto="The first finding of every section; each section below says how to read it.",
        findings=_summary(run.sections),
    )
    timing_rows = [
        [name, f"{seconds:.1f}", f"{cpu[name]:.1f}"] for name, seconds in timings.items()
    ]
    about = Section(
        "About this report",
        howto="Every number on this page is in report.json beside it, with the options, the "
        "versions and the time each stage took.",
    ).add(
        Table(
            ["stage", "wall seconds", "CPU seconds"],
            timing_rows,
            "CPU seconds count every thread of the process; on a shared machine the wall time "
            "also counts the waiting.",
        )
    )
    return Page(
        title="gridlens report",
        subtitle=f"Circuit analysis of {path.name if path.name else path}",
        meta=meta,
        sections=_top_first(run.sections, summary, about),
        footer=f"Made by gridlens {_versions()['gridlens']}.",
    )


def _top_first(sections: list[Section], summary: Section, about: Section) -> list[Section]:
    """Findings, then the summary, the other sections and the timings."""
    top = [s for s in sections if s.title == "Findings"]
    return [*top, summary, *[s for s in sections if s not in top], about]


def _summary(sections: list[Section]) -> list[str]:
    """The first finding of every section: the page's summary."""
    return [s.findings[0] for s in sections if s.findings and s.title != "Findings"]


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


# ---------------------------------------------------------------------------------- stages


def _stage_evaluation(run: _Run) -> Section:
    from gridlens.training.data import TestSet
    from gridlens.training.evaluate import bar_chart, evaluate, failure_gallery

    test_seed = run.training["test_seed"] if run.training else 0
    pool = max(run.training["test_pool"] if run.training else 0, 4 * run.size.eval_n)
    tests = TestSet.build(run.tasks, pool, test_seed)
    result = evaluate(
        run.model,
        tests,
        run.tasks,
        n=run.size.eval_n,
        sampled=True,
        sample_seed=run.seed,
        max_failures=4 * len(run.tasks),
    )
    run.results["evaluation"] = {**result.to_json(), "test_pool": pool}
    run.objects["evaluation"] = result
    bar_chart(result, run.folder / "eval_bars.png", title="accuracy per task")
    section = Section(
        "Evaluation",
        howto=(
            f"{run.size.eval_n} held-out quizzes per task and predicted structure (forward, "
            "inverse, backward, backward_inverse), completed autoregressively with the KV cache. "
            "A quiz counts only if all 100 cells of the predicted grid are right; 'cells' is the "
            "share of right cells in the greedy grid, 'loss' the teacher-forced cross-entropy on "
            "the predicted grid, 'wrong ok' the share of wrong answers the world's checker still "
            "accepts as the task under other parameters."
        ),
    )
    rows = [
        [
            name,
            _pct(m["accuracy_greedy"]),
            _pct(m["accuracy_sampled"]),
            _pct(m["cell_accuracy"]),
            f"{m['loss']:.4f}",
            _pct(m["wrong_valid"]),
            m["n"],
        ]
        for name, m in [*result.tasks.items(), ("overall", result.overall)]
    ]
    section.add(
        Table(["task", "greedy", "sampled (T=1)", "cells", "loss", "wrong ok", "n"], rows),
        Figure(
            "eval_bars.png", "Accuracy per task: greedy, sampled at T=1, per cell (dashed: 95%)."
        ),
    )
    section.add(_structure_table(result))
    drawn = failure_gallery(result.failures, run.folder / "eval_failures.png", per_task=1)
    if drawn:
        section.add(
            Figure(
                "eval_failures.png",
                "Failures: the true quiz, then the model's greedy answer with wrong cells "
                "outlined in magenta (one per task that failed).",
            )
        )
    tasks = result.tasks
    best = max(tasks, key=lambda t: tasks[t]["accuracy_greedy"])
    worst = min(tasks, key=lambda t: tasks[t]["accuracy_greedy"])
    section.findings = [
        f"Greedy accuracy {_pct(result.overall['accuracy_greedy'])} overall "
        f"({_pct(result.overall['accuracy_sampled'])} sampled at T=1, "
        f"{_pct(result.overall['cell_accuracy'])} of cells right).",
        f"Best task {best} ({_pct(tasks[best]['accuracy_greedy'])}), worst {worst} "
        f"({_pct(tasks[worst]['accuracy_greedy'])}).",
    ]
    return section


def _structure_table(result) -> Table:
    """Greedy accuracy per predicted structure and per task with 95% Wilson intervals."""
    from gridlens.report.claims import wilson

    rows = []
    for name, m in [*result.structures.items(), *result.tasks.items()]:
        k = round(m["accuracy_greedy"] * m["n"])
        low, high = wilson(k, m["n"])
        rows.append(
            [name, f"{k} / {m['n']}", _pct(m["accuracy_greedy"]), f"{_pct(low)} - {_pct(high)}"]
        )
    return Table(
        ["structure or task", "right", "greedy", "95% interval"],
        rows,
        "Greedy accuracy per predicted structure, then per task, with Wilson score intervals: "
        "with a few quizzes each, differences inside these intervals are noise.",
    )


def _ratio_table(results: dict[str, Any], names: list[str]) -> Table:
    """Loss ratio and cell-accuracy change per component (all tasks), one column per method."""
    header = ["component"]
    for method in results:
        header += [f"{method}: loss x", f"{method}: cells"]
    rows = []
    for name in names:
        row: list[object] = [name]
        for result in results.values():
            row.append(f"{result.effect('loss_ratio')[name]['all']:.3g}")
            row.append(f"{100 * result.effect('cell_accuracy_delta')[name]['all']:+.1f} pt")
        rows.append(row)
    return Table(header, rows, "All tasks pooled; 'loss x' = ablated / clean grid loss.")


def _ablation_section(
    run: _Run,
    section: Section,
    components: str,
    noun: str,
    table_rows: Callable[[dict[str, Any]], list[str]],
) -> Section:
    """Mean and zero ablation of `components`: their findings, a ratio table of the rows
    `table_rows` picks, and one heat map per method."""
    from gridlens.analysis.ablation import ablate

    results = {}
    for method in ("mean", "zero"):
        result = ablate(run.model, run.quizzes, components, method=method, seed=run.seed)
        results[method] = result
        section.findings += run.keep(f"ablation_{components}_{method}", result)
    section.add(_ratio_table(results, table_rows(results)))
    for method, result in results.items():
        section.add(
            run.figure(
                result,
                f"ablation_{components}_{method}.png",
                f"{method.capitalize()} ablation of each {noun}: grid-loss increase per task.",
            )
        )
    return section


def _stage_layer_ablation(run: _Run) -> Section:
    section = Section(
        "Layer ablation",
        howto=(
            "Each attention layer and MLP layer is removed on its own: its output replaced by zero "
            "(zero ablation) or by its mean at each position over the quiz set (mean ablation, "
            "which keeps what every quiz shares and removes only quiz-specific information). The "
            "heat maps show the increase of the teacher-forced loss on the predicted grid (ablated "
            "minus clean, in nats) per task, on a log colour scale clipped below 0.001: absolute "
            "increases, because a ratio to a near-zero clean loss (frame's) reads in thousands "
            "for a small change. The table also gives the ratio."
        ),
    )
    return _ablation_section(
        run, section, "layers", "layer", lambda results: results["zero"].components
    )


def _stage_head_ablation(run: _Run) -> Section:
    section = Section(
        "Head ablation",
        howto=(
            "The same for each attention head (its slice of hook_z, before the output "
            "projection): a layer x head heat map per task of the grid-loss increase. A head that "
            "matters for only some tasks shows up red in those panels only."
        ),
    )

    def top_heads(results: dict[str, Any]) -> list[str]:
        mean = results["mean"]
        return [name for name, _ in mean.top(min(6, len(mean.components)))]

    return _ablation_section(run, section, "heads", "head", top_heads)


def _stage_attention(run: _Run) -> Section:
    from gridlens.analysis.attention import CATEGORY_HELP, classify_heads, plot_pattern

    section = Section(
        "Attention heads",
        howto=(
            "Where each head looks when the model predicts the cells of the answer grid: the "
            "attention mass on each category of key (relative to the predicted cell), averaged "
            "over quizzes; a head is labelled by its dominant category when it holds at least "
            "half of the mass. The pattern figures show the most important heads (by mean "
            "ablation) on one quiz of the task they matter most for: the four grids, the "
            "weight the query puts on each cell of each grid, and the whole pattern."
        ),
    )
    result = classify_heads(run.model, run.quizzes)
    section.findings = run.keep("attention", result)
    data = result.to_json()["heads"]
    rows = [
        [
            head,
            v["label"],
            f"{v['label_mass']:.2f}",
            f"{v['top_offset']} ({v['top_offset_mass']:.2f})",
            f"{v['entropy_bits']:.2f}",
        ]
        for head, v in data.items()
    ]
    section.add(
        Table(["head", "label", "mass", "top offset (mass)", "entropy (bits)"], rows),
        run.figure(result, "attention_classes.png", "Attention mass by key category, per head."),
    )
    used = sorted({v["label"] for v in data.values()} - {"mixed"})
    if used:
        section.add(
            Text("Categories: " + "; ".join(f"{c}: {CATEGORY_HELP[c]}" for c in used) + ".")
        )
    ablation = run.objects["ablation_heads_mean"]
    ratio = ablation.effect("loss_ratio")
    tasks = ablation.task_names()[:-1]
    for head, value in ablation.top(run.size.patterns):
        task = max(tasks, key=lambda t: ratio[head][t])
        row = int(np.flatnonzero(run.quizzes.tasks == task)[0])
        path = run.folder / f"pattern_{head}.png"
        plot_pattern(run.model, run.quizzes.tokens[row], head, path)
        section.add(
            Figure(
                Path(path).name,
                f"{head} ({data[head]['label']}; mean ablation multiplies grid loss by "
                f"{value:.3g} overall, most on {task}) on a {task} quiz.",
            )
        )
    return section


def _stage_direct(run: _Run) -> Section:
    from gridlens.analysis.direct import copy_scores, logit_lens

    section = Section(
        "Direct paths and logit lens",
        howto=(
            "Copy scores: each head's direct path, token embedding -> its OV circuit -> "
            "unembedding, as a token x logit matrix; a copying head has a dominant diagonal "
            "(copy score: share of colours whose own logit wins; trace score near 1). Logit "
            "lens: the residual stream after each layer read out by the unembedding (exact at "
            "the last layer: the model has no final LayerNorm). Direct logit attribution splits "
            "the correct colour's logit (minus the mean logit) into the exact contributions of "
            "the embeddings, each head, each MLP and the readout bias."
        ),
    )
    copies = copy_scores(run.model, run.quizzes)
    lens = logit_lens(run.model, run.quizzes)
    section.findings = run.keep("copy_scores", copies) + run.keep("logit_lens", lens)
    section.add(
        run.figure(copies, "direct_paths.png", "Direct-path matrices per head (rows centred)."),
        run.figure(lens, "logit_lens.png", "Logit lens per task (left) and DLA per component."),
    )
    return section


def _stage_patching(run: _Run) -> Section:
    from gridlens.analysis.attribution import attribution_patching, compare
    from gridlens.analysis.pairs import PairError
    from gridlens.analysis.patching import activation_patching, make_pairs

    try:
        pairs = make_pairs("parameter", run.tasks, run.size.pairs_per_task, run.seed)
    except PairError:  # no selected task has a parameter change (e.g. only corners)
        pairs = make_pairs("colour", run.tasks, run.size.pairs_per_task, run.seed)
    section = Section(
        "Activation patching and attribution patching",
        howto=(
            f"{len(pairs)} clean/corrupted pairs of kind '{pairs.kind}': the same quiz with "
            + (
                "another value of the task's parameter (e.g. another direction or colour), so "
                "the answer changes while the input grids stay the same. "
                if pairs.kind == "parameter"
                else "two colours swapped in all four grids. "
            )
            + "Activation patching runs the corrupted quiz with one head's output taken from the "
            "clean run and reports the share of the clean answer's log-probability it restores "
            "(0: none, 1: all). AtP estimates the same numbers from one forward and one backward "
            "pass (a linear approximation); AtP* (Kramar et al.) computes the attention pattern "
            "exactly instead of linearising through the softmax and averages estimates with "
            "the gradient through each block dropped (GradDrop), against cancelling paths. "
            "Where they agree, the cheap estimate can replace the exact sweep on larger models."
            + (
                f" Tasks without pairs of this kind: {', '.join(pairs.skipped)}."
                if pairs.skipped
                else ""
            )
        ),
    )
    exact = activation_patching(run.model, pairs, "heads")
    estimates = {
        method: attribution_patching(run.model, pairs, "heads", method=method)
        for method in ("atp", "atp*")
    }
    agreement = {method: compare(exact, result) for method, result in estimates.items()}
    section.findings = run.keep("activation_patching", exact)
    for method, result in estimates.items():
        run.keep(method.replace("*", "_star"), result)
    run.results["patching_agreement"] = agreement
    section.findings += [
        f"{_LABEL[method]} vs activation patching over {a['n_components']} heads: Spearman "
        f"{a['spearman']:.2f} (of |score| {a['spearman_abs']:.2f}), top-{a['k']} recall "
        f"{a['top_k_recall']:.0%}; {_chance(a['n_components'], a['k'])}."
        for method, a in agreement.items()
    ]
    scores = {"activation": exact, **estimates}
    rows = [[name, *(f"{r.score(name):+.2f}" for r in scores.values())] for name, _ in exact.top(8)]
    section.add(
        Table(
            ["head", "activation patching", "AtP", "AtP*"],
            rows,
            "Restored fraction of the clean answer's log-prob, all tasks pooled; the 8 heads "
            "with the largest activation-patching scores.",
        ),
        Table(
            ["estimate", "Spearman", "Spearman of |score|", "top-k recall", "seconds", "chance"],
            [
                [
                    _LABEL[m],
                    f"{a['spearman']:.2f}",
                    f"{a['spearman_abs']:.2f}",
                    f"{a['top_k_recall']:.0%} (k={a['k']})",
                    f"{estimates[m].seconds:.1f}",
                    _chance(a["n_components"], a["k"]),
                ]
                for m, a in agreement.items()
            ],
            f"Agreement with activation patching ({exact.seconds:.1f} s).",
        ),
        _agreement_figure(exact, estimates, run.folder / "patching_agreement.png"),
    )
    limit = max(float(np.nanmax(np.abs(r.scores["all"]), initial=0.0)) for r in scores.values())
    for name, result in scores.items():
        path = run.folder / f"patching_{_FILE[name]}.png"
        result.plot(path, limit=limit or 1.0)
        caption = f"{_LABEL.get(name, 'Activation patching')} per head: restored fraction"
        section.add(Figure(path.name, f"{caption}, all tasks (one colour scale: +-{limit:.2f})."))
    return section


_LABEL = {"atp": "AtP", "atp*": "AtP*"}
_FILE = {"activation": "activation", "atp": "atp", "atp*": "atp_star"}


def _chance(n: int, k: int) -> str:
    """What a random ranking of n components gets: top-k recall k/n on average; Spearman 0
    with standard deviation 1/sqrt(n - 1)."""
    spread = 1 / np.sqrt(max(n - 1, 1))
    return f"a random ranking: top-{k} recall {k / n:.0%}, Spearman 0 +- {spread:.2f}"


def _agreement_figure(exact, estimates: dict, path: Path) -> Figure:
    """Scatter of each estimate against the exact scores, one point per head."""
    from gridlens.plotting import finish, pyplot

    plt = pyplot()
    x = np.nan_to_num(exact.scores["all"])
    fig, axes = plt.subplots(1, len(estimates), figsize=(4.6 * len(estimates), 4.2), dpi=110)
    for ax, (method, result) in zip(np.atleast_1d(axes), estimates.items(), strict=True):
        y = np.array([result.score(c) for c in exact.components])
        y = np.nan_to_num(y)
        ax.scatter(x, y, s=18)
        lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
        ax.plot([lo, hi], [lo, hi], color="gray", lw=0.8, ls="--")
        for name in [n for n, _ in exact.top(4)]:
            i = exact.components.index(name)
            ax.annotate(name, (x[i], y[i]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("activation patching (restored fraction)")
        ax.set_ylabel(f"{_LABEL[method]} estimate")
        ax.set_title(f"{_LABEL[method]} vs activation patching, per head", fontsize=10)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    finish(fig, path)
    return Figure(
        path.name, "Each head's AtP / AtP* estimate against its activation-patching score."
    )


def _stage_generation(run: _Run) -> Section:
    from gridlens.analysis.ablation import ablation_hooks
    from gridlens.analysis.intervention import generate_under

    layer, layer_ratio = run.objects["ablation_layers_mean"].top(1)[0]
    head, head_ratio = run.objects["ablation_heads_mean"].top(1)[0]
    section = Section(
        "Generation under ablation",
        howto=(
            "Teacher-forced loss says how much a component matters for the next cell given the "
            "right cells before it; generation says what the model actually produces. The "
            "answer grid is generated greedily, cell by cell, with the most damaging layer "
            f"({layer}) and, separately, the most damaging head ({head}) mean-ablated at every "
            "step (by the mean ablations above), against the clean model, on the analysis "
            "quizzes (forward structure, so the clean accuracy differs from the evaluation's "
            "mix of four structures). The maps count, per "
            "task, the quizzes whose first wrong cell under the ablation is at each cell of the "
            "10 x 10 grid: first errors in the first rows mean the model is lost from the "
            "start; first errors late in the grid, that it drifts."
        ),
    )
    runs = {
        "layer": (layer, f"{layer} mean-ablated (grid loss x{layer_ratio:.3g})"),
        "head": (head, f"{head} mean-ablated (grid loss x{head_ratio:.3g})"),
    }
    for key, (name, label) in runs.items():
        hooks = ablation_hooks(run.model, run.quizzes, [name], "mean", run.seed)
        result = generate_under(run.model, run.quizzes, hooks)
        findings = run.keep(f"generation_{key}", result)
        run.results[f"generation_{key}"]["ablated"] = name
        if findings:
            findings[0] = f"{label}: {findings[0][0].lower()}{findings[0][1:]}"
        section.findings += findings
        section.add(
            run.figure(
                result,
                f"generation_{key}.png",
                f"Where greedy generation first goes wrong with {label}; titles: clean -> "
                "ablated accuracy per task.",
            )
        )
    return section


def _stage_probes(run: _Run) -> Section:
    from gridlens.analysis.core import quiz_set
    from gridlens.analysis.probes import train_probes

    quizzes = quiz_set(run.tasks, run.size.probe_per_task, seed=run.seed + 1)
    section = Section(
        "Linear probes",
        howto=(
            f"Linear probes (logistic regression) trained on {len(quizzes)} further quizzes to "
            "read two annotations of the world from each token's activations: 'changes' "
            "(whether the cell differs between a grid and its transform) and 'roles' (the "
            "colour role of the cell in its task, e.g. the anchor rectangle of contact), at the "
            "token embedding, the residual stream entering block 0 and after each block. "
            "Accuracy is on held-out quizzes, next to the majority class and a control task "
            "(Hewitt & Liang): every token type (the colour at that position) gets a random "
            "label, and the same probe learns it. Only the margin over the control "
            "(selectivity) says the annotation, not the token's identity, is read."
        ),
    )
    for annotation in ("changes", "roles"):
        result = train_probes(run.model, quizzes, annotation, seed=run.seed)
        section.findings += run.keep(f"probes_{annotation}", result)
        section.add(
            run.figure(
                result, f"probes_{annotation}.png", f"Probe accuracy per layer for '{annotation}'."
            )
        )
    return section


def _stage_culture(run: _Run) -> Section:
    from gridlens.training.culture import report as culture

    cfg, state, history, found = culture.load_population_summary(run.population)
    summary = culture.summarise(cfg, state, history, found)
    section = Section(
        "Culture",
        howto=(
            f"The population in {run.population.name}: {cfg.k} {cfg.model} models on "
            f"{cfg.tasks} ({cfg.height}x{cfg.width} grids). Each round the weakest model trains "
            "one epoch; when every model passes the accuracy threshold, the population makes "
            "quizzes and keeps those that all models but one or two solve (the culture). Each "
            "kept quiz is labelled by the world's checkers: a known task, or novel."
        ),
        findings=culture.findings(summary),
    )
    run.results["culture"] = summary
    if history:
        culture.plot_rounds(cfg, history, run.folder / "culture_rounds.png")
        section.add(
            Figure(
                "culture_rounds.png",
                "Top: each model's test accuracy per round (red bands: culture rounds). Bottom: "
                "candidates scored, kept and novel per culture round.",
            )
        )
    rows = [[r["round"], r["candidates"], r["scored"], r["kept"], r["novel"]] for r in
            summary["culture_rounds"]]  # fmt: skip
    if rows:
        section.add(Table(["round", "candidates", "scored", "kept", "novel"], rows))
    for path in culture.gallery(cfg, found, run.folder, per_label=4):
        label = path.stem.removeprefix("culture_")
        section.add(Figure(path.name, f"Kept quizzes labelled {label} (round, model, scores)."))
    return section


STAGES: list[tuple[str, Callable[[_Run], Section | None]]] = [
    ("evaluation", _stage_evaluation),
    ("layer ablation", _stage_layer_ablation),
    ("head ablation", _stage_head_ablation),
    ("attention", _stage_attention),
    ("direct paths", _stage_direct),
    ("patching", _stage_patching),
    ("generation", _stage_generation),
    ("probes", _stage_probes),
    ("claims", stage_claims),
    ("edge circuit", stage_circuit),
    ("sae", stage_sae),
    ("neurons", stage_neurons),
    ("findings", stage_findings),
]
