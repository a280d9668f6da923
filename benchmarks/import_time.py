"""Start-up time: ``import xaikit`` and ``xaikit --help`` against ``import torch`` (issue #20).

The limit is ``import torch``: xaikit needs torch, and nothing else heavy should load before
it is used (scikit-learn, SciPy, matplotlib, ... are imported on first use). Each contender
runs in a fresh interpreter, interleaved, several rounds (after one unmeasured warm-up round
that fills the file cache); the table reports the median wall time and the median of the
per-round ratios to ``import torch``. Goal: both at most 1.2x.

Run: ``make bench`` or ``.venv/bin/python benchmarks/import_time.py [--rounds 5]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _report import machine_line, write_section

SRC = Path(__file__).resolve().parent.parent / "src"
_SCRIPT = Path(sys.executable).parent / "xaikit"  # the console script, where installed

CONTENDERS = {
    "python -c 'import torch'": [sys.executable, "-c", "import torch"],
    "python -c 'import xaikit'": [sys.executable, "-c", "import xaikit"],
    "xaikit --help": (
        [str(_SCRIPT), "--help"]
        if _SCRIPT.exists()
        else [sys.executable, "-m", "xaikit.cli", "--help"]
    ),
}
LIMIT = "python -c 'import torch'"


def timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    # This checkout's package, also for the console script (an editable install may point
    # elsewhere).
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
    }
    for command in CONTENDERS.values():  # warm-up: file cache, .pyc files
        timed(command, env)
    times: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    ratios: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    for _ in range(args.rounds):
        round_times = {name: timed(command, env) for name, command in CONTENDERS.items()}
        for name, value in round_times.items():
            times[name].append(value)
            ratios[name].append(value / round_times[LIMIT])

    lines = [
        "| contender (a fresh interpreter each) | median s | x import torch |",
        "|---|---:|---:|",
    ]
    lines += [
        f"| {name} | {statistics.median(times[name]):.2f} | {statistics.median(ratios[name]):.2f} |"
        for name in CONTENDERS
    ]
    body = "\n".join(lines)
    load = os.getloadavg()[0]
    summary = (
        f"Goal: `import xaikit` and `xaikit --help` at most 1.2x `import torch`. Median over "
        f"{args.rounds} interleaved rounds after a warm-up round; ratios taken per round. "
        f"Load average at the end: {load:.2f}."
    )
    print(machine_line())
    print(body)
    print(summary)
    write_section("import_time", f"{machine_line()}\n\n{body}\n\n{summary}\n")


if __name__ == "__main__":
    main()
