"""A static HTML dashboard of an SAE: an index (the SAE, the expression matrix, a table of the
chosen latents) and one page per latent (top examples as grids with the firing cell outlined,
histogram, promoted logits, per-task firing rates, automatic label). Plain HTML and PNGs with
relative links in one flat folder, written atomically: it opens from disk in any browser, with
no server and no JavaScript.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gridlens.analysis.core import QuizSet
from gridlens.errors import ConfigError
from gridlens.io import atomic_directory
from gridlens.sae.features import (
    ExpressionMatrix,
    FeatureActivations,
    PromotedLogits,
    expression_matrix,
    latent_activations,
    plot_histogram,
    promoted_logits,
    render_examples,
)
from gridlens.sae.labels import LabelResult, label_latents

STYLE = """
body { font-family: sans-serif; margin: 1.5em; max-width: 70em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.2em; }
td, th { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; font-size: 0.9em; }
th { background: #f2f2f2; }
img { max-width: 100%; border: 1px solid #eee; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
nav a { margin-right: 1em; }
"""


def latent_page(latent: int) -> str:
    return f"latent_{latent:05d}.html"


def choose_latents(
    expression: ExpressionMatrix, labels: LabelResult, n: int = 24, per_task: int = 2
) -> list[int]:
    """The most task-specific latents of each task, then the best-labelled ones, up to n."""
    chosen: list[int] = []
    for task in expression.tasks:
        for j in expression.specific_latents(task, per_task):
            if j not in chosen:
                chosen.append(j)
    best = labels.best_f1()
    for j in labels.alive[np.argsort(-best[labels.alive], kind="stable")].tolist():
        if len(chosen) >= n:
            break
        if j not in chosen:
            chosen.append(j)
    return chosen[:n]


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        f"{body}\n</body>\n</html>\n"
    )


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric=()) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    lines = [f"<table>\n<tr>{head}</tr>"]
    for row in rows:
        cells = "".join(
            f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"
            for i, c in enumerate(row)
        )
        lines.append(f"<tr>{cells}</tr>")
    return "\n".join(lines) + "\n</table>"


def _label_text(labels: LabelResult, j: int) -> tuple[str, str, str, str]:
    best = labels.best(j, 1)
    if not best:
        return ("(never fires)", "", "", "")
    b = best[0]
    return (
        html.escape(b["label"]),
        f"{b['f1']:.3f}",
        f"{b['precision']:.3f}",
        f"{b['recall']:.3f}",
    )


def _latent_body(
    j: int,
    acts: FeatureActivations,
    expression: ExpressionMatrix,
    labels: LabelResult,
    logits: PromotedLogits,
    examples: str | None,
    hist: str,
) -> str:
    parts = [
        '<nav><a href="index.html">&larr; index</a></nav>',
        f"<h1>Latent {j}</h1>",
        f"<p>Site <code>{html.escape(acts.hook_name)}</code>; fires on "
        f"{labels.fires[j]} of {labels.n_rows} recorded positions.</p>",
        "<h2>Automatic label</h2>",
        _table(
            ["label", "F1", "precision", "recall"],
            [
                (
                    html.escape(b["label"]),
                    f"{b['f1']:.3f}",
                    f"{b['precision']:.3f}",
                    f"{b['recall']:.3f}",
                )
                for b in labels.best(j, 5)
            ],
            numeric=(1, 2, 3),
        ),
        "<h2>Top examples</h2>",
        f'<img src="{examples}" alt="top examples of latent {j}">'
        if examples
        else "<p>No activation on this quiz set.</p>",
        "<h2>Activation histogram</h2>",
        f'<img src="{hist}" alt="histogram of latent {j}">',
        "<h2>Promoted logits (direct path: decoder row x unembedding, centred)</h2>",
        _table(
            ["promoted", "logit", "suppressed", "logit"],
            [
                (html.escape(a), f"{x:+.3f}", html.escape(b), f"{y:+.3f}")
                for (a, x), (b, y) in zip(logits.top(j, 5), logits.bottom(j, 5), strict=True)
            ],
            numeric=(1, 3),
        ),
        "<h2>Per task</h2>",
        _table(
            ["task", "firing rate", "mean activation", "expression share"],
            [
                (
                    html.escape(t),
                    f"{expression.firing[j, i]:.2%}",
                    f"{expression.mean[j, i]:.4f}",
                    f"{expression.share[j, i]:.3f}",
                )
                for i, t in enumerate(expression.tasks)
            ],
            numeric=(1, 2, 3),
        ),
    ]
    return "\n".join(parts)


def write_dashboard(
    model,
    sae,
    quizzes: QuizSet,
    out_dir: str | Path,
    latents: Sequence[int] | None = None,
    n_latents: int = 24,
    n_examples: int = 6,
    positions: str = "grid",
    acts: FeatureActivations | None = None,
    title: str | None = None,
) -> Path:
    """Write the dashboard folder `out_dir` (replaced atomically); returns its index.html."""
    if acts is None:
        acts = latent_activations(model, sae, quizzes, positions)
    expression = expression_matrix(acts)
    labels = label_latents(acts)
    logits = promoted_logits(model, sae)
    if latents is None:
        latents = choose_latents(expression, labels, n_latents)
    latents = [acts.check_latent(j) for j in latents]
    if not latents:
        raise ConfigError("no latent to show: none fires on this quiz set")
    title = title or f"SAE {sae.cfg.hook_name} ({sae.cfg.architecture}, d_sae {sae.cfg.d_sae})"

    def fill(folder: Path) -> None:
        expression.plot(folder / "expression.png")
        rows = []
        for j in latents:
            hist = f"latent_{j:05d}_hist.png"
            plot_histogram(acts, j, folder / hist)
            examples = None
            if labels.fires[j] > 0:
                examples = f"latent_{j:05d}_examples.png"
                render_examples(acts, j, folder / examples, n_examples)
            body = _latent_body(j, acts, expression, labels, logits, examples, hist)
            (folder / latent_page(j)).write_text(_page(f"latent {j} · {title}", body))
            label, f1, p, r = _label_text(labels, j)
            preferred = expression.tasks[int(expression.preferred[j])] if labels.fires[j] else ""
            rows.append(
                (
                    f'<a href="{latent_page(j)}">{j}</a>',
                    label,
                    f1,
                    p,
                    r,
                    f"{labels.fires[j] / max(labels.n_rows, 1):.2%}",
                    html.escape(preferred),
                    f"{expression.specificity[j]:.2f}",
                )
            )
        cfg = sae.cfg.to_dict()
        body = "\n".join(
            [
                f"<h1>{html.escape(title)}</h1>",
                f"<p>{len(quizzes)} quizzes ({', '.join(map(html.escape, acts.task_names))}); "
                f"positions: {html.escape(str(positions))}. Labels: best ground-truth "
                "annotation detected by 'latent &gt; 0'.</p>",
                _table(
                    ["setting", "value"],
                    [(html.escape(k), html.escape(str(v))) for k, v in cfg.items()],
                ),
                "<h2>Latents</h2>",
                _table(
                    [
                        "latent",
                        "label",
                        "F1",
                        "precision",
                        "recall",
                        "fires",
                        "preferred task",
                        "specificity",
                    ],
                    rows,
                    numeric=(2, 3, 4, 5, 7),
                ),
                "<h2>Feature x task expression</h2>",
                '<img src="expression.png" alt="expression matrix">',
            ]
        )
        (folder / "index.html").write_text(_page(title, body))
        summary = {
            "title": title,
            "sae": cfg,
            "latents": latents,
            "pages": [latent_page(j) for j in latents],
        }
        (folder / "dashboard.json").write_text(json.dumps(summary, indent=1))

    atomic_directory(out_dir, fill)
    return Path(out_dir) / "index.html"
