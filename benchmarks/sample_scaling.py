"""KernelSHAP and LIME from 1,000 to 100,000 samples: time per sample and peak memory (issue #20).

One row of the breast-cancer table (30 standardised features) explained for a logistic
regression's probability of "benign", by xaikit's ``kernel_shap`` beside shap's
``KernelExplainer`` (10 background rows for both; shap with ``l1_reg=False``, so both fit
every feature) and by xaikit's ``lime`` with ``sampling="training"`` beside lime's
``LimeTabularExplainer`` (training rows, quartiles, ridge on every feature). Each measurement
runs in a fresh interpreter after one unmeasured call (imports, the batch-size search): wall
time, and the peak resident memory of the call above the memory before it (the kernel's
high-water mark, reset before the call). Median over the rounds. Goal: time per sample flat
from 1,000 to 100,000 samples, memory bounded.

Run: ``make bench`` or ``.venv/bin/python benchmarks/sample_scaling.py [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings

from _report import machine_line, write_section

SAMPLES = (1_000, 10_000, 100_000)
BACKGROUND = 10
TIMEOUT_S = 300  # a run slower than this is reported as not finished
CONTENDERS = {
    "kernel_shap": ("xaikit kernel_shap", "shap KernelExplainer"),
    "lime": ('xaikit lime (sampling="training")', "lime LimeTabularExplainer"),
}


def _memory_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(contender: str, samples: int) -> dict[str, float]:
    """One run of ``contender`` at ``samples`` in this process: seconds and peak MiB."""
    warnings.filterwarnings("ignore")
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    import xaikit as xk
    from xaikit.datasets import load_breast_cancer_table

    table = load_breast_cancer_table("train")
    scaler = StandardScaler().fit(table.X)
    X = scaler.transform(table.X)
    x = scaler.transform(load_breast_cancer_table("test").X[:1])[0]
    clf = LogisticRegression(max_iter=1000).fit(X, table.y)
    background = X[np.random.default_rng(0).choice(len(X), BACKGROUND, replace=False)]

    def benign(rows):
        return clf.predict_proba(rows)[:, 1]

    if contender == "xaikit kernel_shap":
        model = xk.Model(clf.predict_proba)

        def run(n):
            return xk.explain(
                model, x, method="kernel_shap", target=1, baseline=background, samples=n
            )
    elif contender == "shap KernelExplainer":
        import shap

        explainer = shap.KernelExplainer(benign, background)

        def run(n):
            return explainer.shap_values(x, nsamples=n, l1_reg=False, silent=True)
    elif contender.startswith("xaikit lime"):
        model = xk.Model(clf.predict_proba)

        def run(n):
            return xk.explain(
                model, x, method="lime", target=1, sampling="training", baseline=X, samples=n
            )
    else:
        from lime.lime_tabular import LimeTabularExplainer

        explainer = LimeTabularExplainer(X, discretize_continuous=True, random_state=0)

        def run(n):
            return explainer.explain_instance(
                x, clf.predict_proba, labels=(1,), num_features=X.shape[1], num_samples=n
            )

    run(200)  # imports, the batch-size search: not measured (few samples: little memory left)
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset the high-water mark
    before = _memory_kib("VmRSS")
    start = time.perf_counter()
    run(samples)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_mib": (_memory_kib("VmHWM") - before) / 1024}


def fresh(contender: str, samples: int) -> dict[str, float] | None:
    """:func:`measure` in a fresh interpreter; ``None`` when it takes over ``TIMEOUT_S``."""
    command = [sys.executable, __file__, "--one", contender, str(samples)]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, check=True, timeout=TIMEOUT_S + 60
        )
    except subprocess.TimeoutExpired:
        return None
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return None if result["seconds"] > TIMEOUT_S else result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--one", nargs=2, metavar=("CONTENDER", "SAMPLES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]))))
        return

    lines = [
        "| method | samples | contender | s | µs per sample | peak MiB |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for method, contenders in CONTENDERS.items():
        for samples in SAMPLES:
            for contender in contenders:
                runs = []
                for _ in range(args.rounds):
                    result = fresh(contender, samples)
                    if result is None:
                        break
                    runs.append(result)
                if not runs:
                    cells = f"over {TIMEOUT_S} s | | "
                else:
                    seconds = statistics.median(r["seconds"] for r in runs)
                    peak = statistics.median(r["peak_mib"] for r in runs)
                    cells = f"{seconds:.2f} | {1e6 * seconds / samples:.1f} | {peak:.0f}"
                lines.append(f"| {method} | {samples:,} | {contender} | {cells} |")
                print(lines[-1], flush=True)
    body = "\n".join(lines)
    load = os.getloadavg()[0]
    note = (
        f"One row of the breast-cancer table (30 standardised features), a logistic regression's "
        f"probability of benign; {BACKGROUND} background rows for KernelSHAP (shap with "
        f"l1_reg=False), the training rows for LIME (quartiles). Each run in a fresh "
        f"interpreter after one unmeasured call; peak memory is the resident high-water mark "
        f"of the call above the memory before it. Median over {args.rounds} rounds. Goal: time "
        f"per sample flat from 1,000 to 100,000 samples, memory bounded. Load average at the "
        f"end: {load:.2f}."
    )
    print(machine_line())
    print(body)
    print(note)
    write_section("sample_scaling", f"{machine_line()}\n\n{body}\n\n{note}\n")


if __name__ == "__main__":
    main()
