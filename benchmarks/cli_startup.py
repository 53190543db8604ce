"""Start-up cost of the command line and of the package imports a notebook starts with (issue 21:
`gridlens --help` and every `--help` under 0.3 s, without importing torch).

    python benchmarks/cli_startup.py --repeats 7 --before /work/main

Each case is a fresh interpreter (what a user waits for), run `--repeats` times; medians of wall
time and of the child's CPU time (user + system: the steadier clock on a shared machine). The
baseline, in the same run, is an interpreter that only imports click, the floor of any click
command. `--before DIR` times the same commands on another checkout (e.g. before this change).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
CASES = {
    "import click (baseline)": ["-c", "import click"],
    "gridlens --help": ["-m", "gridlens", "--help"],
    "gridlens analyze --help": ["-m", "gridlens", "analyze", "--help"],
    "gridlens sae features --help": ["-m", "gridlens", "sae", "features", "--help"],
    "import gridlens.analysis, .sae, .groundtruth": [
        "-c",
        "import gridlens.analysis, gridlens.sae, gridlens.groundtruth",
    ],
}


def timed(args: list[str], root: Path, repeats: int) -> tuple[float, float]:
    """Median (wall s, child CPU s) of `python ARGS` with `root` on PYTHONPATH."""
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    walls, cpus = [], []
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, *args], env=env, cwd=root, stdout=subprocess.DEVNULL, check=True
        )
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--before", type=Path, default=None, help="Another checkout to time.")
    args = parser.parse_args()
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
    print(f"{machine}; medians of {args.repeats} fresh interpreters")
    roots = {"this": HERE} | ({"before": args.before.resolve()} if args.before else {})
    _, floor_cpu = timed(CASES["import click (baseline)"], HERE, args.repeats)
    print(f"{'case':46s} {'tree':6s} {'wall s':>7s} {'CPU s':>7s} {'CPU / baseline':>15s}")
    for name, case in CASES.items():
        for tree, root in roots.items():
            if tree == "before" and name.startswith("import click"):
                continue
            wall, cpu = timed(case, root, args.repeats)
            print(f"{name:46s} {tree:6s} {wall:7.3f} {cpu:7.3f} {cpu / floor_cpu:14.1f}x")


if __name__ == "__main__":
    main()
