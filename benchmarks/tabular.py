"""Tabular KernelSHAP per row against shap's KernelExplainer: seconds and error to exact values.

A gradient-boosted classifier on 10 features of the breast-cancer table (its probability of
"benign" is explained); 20 background rows; exact Shapley values of each explained row by
enumerating all 2^10 coalitions (the value of a coalition is the mean over the background rows,
the definition both implementations use). Both get the same background and the same number of
coalitions per row. Reported per row: seconds, and the relative error ||phi - exact|| / ||exact||
(median over 20 rows). Goal: xaikit faster and at least as accurate.

Run: ``make bench`` or ``.venv/bin/python benchmarks/tabular.py``.
"""

from __future__ import annotations

import itertools
import statistics
import time
import warnings
from math import comb

import numpy as np
from sklearn.ensemble import GradientBoostingClassifier

import xaikit as xk
from _report import machine_line, write_section
from xaikit.datasets import load_breast_cancer_table

FEATURES = 10
ROWS = 20
BACKGROUND = 20


def exact_shapley(f, x: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Shapley values by enumeration; v(S) = mean over background rows with S taken from x."""
    m = len(x)
    coalitions = np.array(list(itertools.product([0, 1], repeat=m)), dtype=bool)
    inputs = np.where(coalitions[:, None, :], x, background[None])  # (2^m, R, m)
    values = f(inputs.reshape(-1, m)).reshape(len(coalitions), -1).mean(axis=1)
    index = {tuple(c): i for i, c in enumerate(coalitions)}
    phi = np.zeros(m)
    for c, v in zip(coalitions, values, strict=True):
        size = int(c.sum())
        for j in np.flatnonzero(~c):
            with_j = c.copy()
            with_j[j] = True
            weight = 1.0 / (m * comb(m - 1, size))
            phi[j] += weight * (values[index[tuple(with_j)]] - v)
    return phi


def main() -> None:
    warnings.filterwarnings("ignore")
    import shap

    table = load_breast_cancer_table("train")
    test = load_breast_cancer_table("test")
    keep = np.argsort(-table.X.std(axis=0) / np.abs(table.X.mean(axis=0)))[:FEATURES]
    X, Xt = table.X[:, keep], test.X[:ROWS][:, keep]
    gb = GradientBoostingClassifier(random_state=0).fit(X, table.y)

    def f(rows):
        return gb.predict_proba(rows)[:, 1]

    background = X[np.random.default_rng(0).choice(len(X), BACKGROUND, replace=False)]
    exact = [exact_shapley(f, row, background) for row in Xt]
    model = xk.Model(lambda rows: gb.predict_proba(rows)[:, 1:], output="scores")
    explainer = shap.KernelExplainer(f, background)

    lines = [
        "| coalitions per row | xaikit s/row | shap s/row | xaikit rel. error | shap rel. error |",
        "|---:|---:|---:|---:|---:|",
    ]
    for samples in (64, 128, 256, 512):
        ours_t, theirs_t, ours_e, theirs_e = [], [], [], []
        for row, phi in zip(Xt, exact, strict=True):
            start = time.perf_counter()
            e = xk.explain(
                model, row, method="kernel_shap", target=0, baseline=background,
                samples=samples, seed=0,
            )  # fmt: skip
            ours_t.append(time.perf_counter() - start)
            start = time.perf_counter()
            theirs = explainer.shap_values(row, nsamples=samples, silent=True)
            theirs_t.append(time.perf_counter() - start)
            norm = np.linalg.norm(phi)
            ours_e.append(np.linalg.norm(e.values - phi) / norm)
            theirs_e.append(np.linalg.norm(np.ravel(theirs) - phi) / norm)
        lines.append(
            f"| {samples} | {statistics.median(ours_t):.4f} | {statistics.median(theirs_t):.4f} | "
            f"{statistics.median(ours_e):.2%} | {statistics.median(theirs_e):.2%} |"
        )
        print(lines[-1], flush=True)
    body = "\n".join(lines)
    note = (
        f"Gradient boosting on {FEATURES} breast-cancer features, {BACKGROUND} background rows, "
        f"{ROWS} explained test rows; medians over rows. Exact values by enumeration of all "
        f"{2**FEATURES} coalitions. Goal: xaikit faster and at least as accurate."
    )
    print(machine_line())
    print(body)
    print(note)
    write_section("tabular", f"{machine_line()}\n\n{body}\n\n{note}\n")


if __name__ == "__main__":
    main()
