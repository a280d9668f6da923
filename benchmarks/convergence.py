"""KernelSHAP convergence: error against exact Shapley values per number of model evaluations.

A tabular game with M = 12 features: random ReLU MLPs (12-32-32-1, PyTorch default init, one
per instance), an input and a single baseline row drawn from N(0, 1). The exact Shapley values
come from all 2^12 = 4096 coalitions. Each contender gets the same budget of evaluations, one
evaluation being one coalition run through the model (the empty and the full coalition
included):

- xaikit ``kernel_shap`` with ``samples=budget``;
- shap's ``KernelExplainer`` with ``nsamples=budget - 2`` (it adds f(x) and f(baseline)) and
  ``l1_reg=False``: its default ``"num_features(10)"`` keeps only 10 of the 12 features, so it
  never converges here;
- Captum's ``KernelShap`` with ``n_samples=budget`` (its first two samples are the full and the
  empty coalition).

Error = ||phi - phi_exact|| / ||phi_exact||, the median over instances x seeds. The table also
gives, per contender, the evaluations needed to reach 2% and 5% (log-log interpolation between
budgets; "inf": not within 2048). Goal (issue 3): xaikit reaches 5% with at most half the
evaluations of the best peer.

Run: ``.venv/bin/python benchmarks/convergence.py [--instances 6] [--seeds 4]``.
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

import numpy as np
import torch

import xaikit as xk
from _report import machine_line, write_section

M = 12
BUDGETS = (64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)
TARGET = 0.05


def network(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    layers = [torch.nn.Linear(M, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers, torch.nn.Linear(32, 1)).double().eval()


def exact_shapley(f, x: np.ndarray, base: np.ndarray) -> np.ndarray:
    """phi_i = sum over S not holding i of |S|! (M-|S|-1)! / M! (v(S + i) - v(S))."""
    codes = np.arange(2**M)
    z = ((codes[:, None] >> np.arange(M)) & 1).astype(bool)
    v = f(np.where(z, x, base))
    size = z.sum(axis=1)
    weight = np.array([math.factorial(s) * math.factorial(M - s - 1) for s in range(M)])
    weight = weight / math.factorial(M)
    phi = np.empty(M)
    for i in range(M):
        without = codes[~z[:, i]]
        phi[i] = (weight[size[without]] * (v[without | (1 << i)] - v[without])).sum()
    return phi


def run_xaikit(net, x, base, budget, seed):
    e = xk.explain(net, x, method="kernel_shap", target=0, baseline=base, samples=budget, seed=seed)
    assert e.info["samples"] <= budget
    return e.component_values


def run_shap(f, x, base, budget, seed):
    import shap

    np.random.seed(seed)  # shap samples with NumPy's global generator
    explainer = shap.KernelExplainer(f, base[None])
    values = explainer.shap_values(x[None], nsamples=budget - 2, l1_reg=False, silent=True)
    return np.asarray(values).reshape(-1)


def run_captum(net, x, base, budget, seed):
    from captum.attr import KernelShap

    torch.manual_seed(seed)  # Captum samples with torch's global generator
    values = KernelShap(net).attribute(
        torch.from_numpy(x[None]),
        baselines=torch.from_numpy(base[None]),
        target=0,
        n_samples=budget,
        perturbations_per_eval=budget,  # batching only: the same samples
    )
    return values.numpy().reshape(-1)


def evaluations_to_reach(errors: list[float], target: float) -> float:
    """Budget where the median error first falls to ``target`` (log-log interpolation)."""
    for i, err in enumerate(errors):
        if err <= target:
            if i == 0:
                return float(BUDGETS[0])
            e0, e1 = math.log(errors[i - 1]), math.log(err)
            b0, b1 = math.log(BUDGETS[i - 1]), math.log(BUDGETS[i])
            return math.exp(b0 + (math.log(target) - e0) * (b1 - b0) / (e1 - e0))
    return math.inf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=6)
    parser.add_argument("--seeds", type=int, default=4)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # shap's and Captum's notices, once per call
    torch.set_num_threads(1)  # tiny model: threads only add noise on a shared machine

    names = ("xaikit", "shap", "captum")
    errors = {(name, b): [] for name in names for b in BUDGETS}
    seconds = dict.fromkeys(names, 0.0)
    rng = np.random.default_rng(0)
    for instance in range(args.instances):
        net = network(instance)
        # float32-representable inputs: xaikit's engine builds float32 masked inputs
        x, base = (rng.normal(size=M).astype(np.float32).astype(np.float64) for _ in range(2))

        def f(batch, net=net):
            with torch.no_grad():
                return net(torch.as_tensor(np.asarray(batch, dtype=np.float64)))[:, 0].numpy()

        exact = exact_shapley(f, x, base)
        norm = np.linalg.norm(exact)
        runs = {"xaikit": (run_xaikit, net), "shap": (run_shap, f), "captum": (run_captum, net)}
        for budget in BUDGETS:
            for seed in range(args.seeds):
                for name in names:  # interleaved
                    start = time.perf_counter()
                    run, model = runs[name]
                    values = run(model, x, base, budget, seed)
                    seconds[name] += time.perf_counter() - start
                    errors[(name, budget)].append(np.linalg.norm(values - exact) / norm)

    median = {k: float(np.median(v)) for k, v in errors.items()}
    header = "| evaluations | " + " | ".join(names) + " |"
    lines = [header, "|" + "---|" * (len(names) + 1)]
    for b in BUDGETS:
        lines.append(f"| {b} | " + " | ".join(f"{median[(n, b)]:.4f}" for n in names) + " |")
    for level in (0.02, TARGET):  # the 5% row last: ``reach`` is the goal's
        reach = {n: evaluations_to_reach([median[(n, b)] for b in BUDGETS], level) for n in names}
        cells = " | ".join(f"**{reach[n]:.0f}**" for n in names)
        lines.append(f"| **to reach {level:.0%}** | {cells} |")
    best_peer = min(reach["shap"], reach["captum"])
    ratio = reach["xaikit"] / best_peer
    verdict = "met" if ratio <= 0.5 else "not met"
    summary = (
        f"xaikit needs {reach['xaikit']:.0f} evaluations for 5% relative error, the best peer "
        f"{best_peer:.0f}: ratio {ratio:.2f} (goal <= 0.5: {verdict}). Seconds spent in total: "
        + ", ".join(f"{n} {seconds[n]:.1f}" for n in names)
        + "."
    )
    text = "\n".join(
        [
            "Median relative L2 error of the Shapley values against exact values (M = 12, all "
            f"4096 coalitions), over {args.instances} random ReLU MLPs x {args.seeds} seeds, per "
            "number of model evaluations (coalitions run, the empty and the full one "
            "included; one baseline row). shap: `KernelExplainer(nsamples=budget - 2, "
            "l1_reg=False)`; Captum: `KernelShap(n_samples=budget)`. Script: "
            "`benchmarks/convergence.py`.",
            "",
            *lines,
            "",
            summary,
            "",
            machine_line(),
        ]
    )
    print(text)
    write_section("convergence", text)


if __name__ == "__main__":
    main()
