"""Compile the tracr library programs, check the imported models against tracr, and ship them.

Needs the optional extra (``pip install 'gridlens[tracr]'``). For every program of
``gridlens.groundtruth.tracr_models.PROGRAMS``: compile it, run every input of the full length
(at most ``--max-inputs``) through tracr (JAX) and through the imported TracrModel, refuse to
ship unless every answer agrees and the final residual streams agree to 1e-5, then write
``gridlens/data/tracr/NAME`` with 32 of the inputs and tracr's answers as test examples.

    python scripts/ship_tracr.py [NAME ...]
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np

from gridlens.groundtruth.tracr_models import PROGRAMS, compile_program, save_tracr

OUT = Path(__file__).resolve().parents[1] / "gridlens" / "data" / "tracr"


def _value(text: str):
    return int(text) if text.isdigit() else text


def check(assembled, model, max_inputs: int) -> tuple[list, list, float]:
    """(inputs, tracr's answers, largest final-residual difference); raises on a mismatch."""
    vocab = sorted(k for k in model.cfg.input_map if k not in ("BOS", "compiler_pad"))
    rows = [["BOS", *c] for c in itertools.product(vocab, repeat=model.cfg.n_ctx - 1)]
    rows = rows[:max_inputs]
    worst, answers = 0.0, []
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    for row in rows:
        ref = assembled.apply([_value(v) for v in row])
        _, cache = model.run_with_cache(model.tokens([row]), last)
        worst = max(
            worst, float(np.abs(cache[last][0].numpy() - np.asarray(ref.residuals[-1])[0]).max())
        )
        ours = model.decode(model.tokens([row]))[0][1:]
        theirs = ref.decoded[1:]
        agree = (
            [str(x) for x in ours] == [str(y) for y in theirs]
            if model.cfg.output_values
            else np.allclose(ours, theirs, atol=1e-4)
        )
        if not agree:
            raise SystemExit(f"{row}: tracr answers {theirs}, the imported model {ours}")
        answers.append(
            [None if x is None else (x if isinstance(x, float) else str(x)) for x in theirs]
        )
    if worst > 1e-5:
        raise SystemExit(f"final residual streams differ by {worst}")
    return rows, answers, worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=list(PROGRAMS))
    parser.add_argument("--max-inputs", type=int, default=256)
    args = parser.parse_args()
    for name in args.names:
        t0 = time.perf_counter()
        assembled, model = compile_program(name)
        seconds = time.perf_counter() - t0
        rows, answers, worst = check(assembled, model, args.max_inputs)
        step = max(1, len(rows) // 32)
        examples = {"inputs": rows[::step][:32], "answers": answers[::step][:32]}
        save_tracr(model, OUT / name, examples)
        c = model.cfg
        print(
            f"{name}: compiled in {seconds:.0f} s; {c.n_layers} layers x {c.n_heads} heads, "
            f"d_model {c.d_model}, d_mlp {c.d_mlp}; {len(rows)} inputs agree with tracr, "
            f"largest residual difference {worst:.1e}"
        )


if __name__ == "__main__":
    main()
