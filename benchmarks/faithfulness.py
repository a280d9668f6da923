"""Deletion/insertion areas of every local method, xaikit and Captum, and the Adebayo pattern.

For the default MNIST CNN (``load_default_cnn("clean")``) and the first ``--n`` test images:

1. each method explains the images (xaikit with modest sample counts; Captum's implementation
   of the same method where Captum has one, with the same settings where they exist);
2. the deletion and insertion areas (Petsiuk et al. 2018; 28 steps of 28 pixels, deletion to
   0, insertion from a blur with sigma 2.8) of every explanation, mean with a 95% bootstrap
   interval over the images; the time of the metrics alone (goal: < 2 minutes for 100 images);
3. the cascading model-parameter randomisation check (Adebayo et al. 2018) of each xaikit
   method on ``--sanity-n`` images: mean Spearman similarity over the cascade, at full
   randomisation, and the verdict.

Run: ``.venv/bin/python benchmarks/faithfulness.py [--n 100] [--sanity-n 10]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import xaikit as xk
from _report import machine_line, write_section
from xaikit.datasets import load_default_cnn, load_mnist
from xaikit.metrics import deletion, insertion, sanity_check

# Modest sample counts so every method runs in seconds on 100 images.
METHODS: dict[str, dict] = {
    "saliency": {},
    "input_x_gradient": {},
    "smoothgrad": {"samples": 20},
    "integrated_gradients": {"steps": 32},
    "gradcam": {},
    "guided_backprop": {},
    "occlusion": {"window": 4, "stride": 2},
    "rise": {"samples": 1000},
    "lime": {"samples": 300, "components": "grid"},
    "kernel_shap": {"samples": 300, "components": "grid"},
    # LRP composites (a row per composite) and DeepLIFT: "method" names the registered method
    "lrp epsilon_plus_flat": {"method": "lrp", "composite": "epsilon_plus_flat"},
    "lrp epsilon_gamma_box": {"method": "lrp", "composite": "epsilon_gamma_box"},
    "lrp epsilon_alpha2_beta1": {"method": "lrp", "composite": "epsilon_alpha2_beta1"},
    "deeplift": {},
}


def method_and_params(label: str) -> tuple[str, dict]:
    """The registered method of a row and its parameters."""
    params = dict(METHODS[label])
    return params.pop("method", label), params


def captum_methods(net, X: torch.Tensor, y: torch.Tensor) -> dict[str, np.ndarray]:
    """Captum's implementations of the same methods (grid features: 4x4 pixel patches)."""
    from captum.attr import (
        GuidedBackprop,
        InputXGradient,
        IntegratedGradients,
        KernelShap,
        LayerAttribution,
        LayerGradCam,
        Lime,
        NoiseTunnel,
        Occlusion,
        Saliency,
    )

    grid = (torch.arange(28)[:, None] // 4 * 7 + torch.arange(28)[None] // 4)[None, None]
    out: dict[str, np.ndarray] = {}
    timings = {}

    def run(name, fn):
        start = time.perf_counter()
        out[name] = fn().detach().numpy()
        timings[name] = time.perf_counter() - start

    Xg = X.clone().requires_grad_(True)
    run("saliency", lambda: Saliency(net).attribute(Xg, target=y))
    run("input_x_gradient", lambda: InputXGradient(net).attribute(Xg, target=y))
    run(
        "smoothgrad",
        lambda: NoiseTunnel(Saliency(net)).attribute(
            Xg, target=y, nt_type="smoothgrad", nt_samples=20, stdevs=0.15, abs=False
        ),
    )
    run("integrated_gradients", lambda: IntegratedGradients(net).attribute(X, target=y, n_steps=32))
    run(
        "gradcam",
        lambda: LayerAttribution.interpolate(
            LayerGradCam(net, net.conv2).attribute(X, target=y, relu_attributions=True), (28, 28)
        ),
    )
    run("guided_backprop", lambda: GuidedBackprop(net).attribute(Xg, target=y))
    run(
        "occlusion",
        lambda: Occlusion(net).attribute(
            X, target=y, sliding_window_shapes=(1, 4, 4), strides=(1, 2, 2)
        ),
    )
    lime, shap = Lime(net), KernelShap(net)
    run(
        "lime",
        lambda: torch.cat(
            [
                lime.attribute(X[i : i + 1], target=y[i : i + 1], feature_mask=grid, n_samples=300)
                for i in range(len(X))
            ]
        ),
    )
    run(
        "kernel_shap",
        lambda: torch.cat(
            [
                shap.attribute(X[i : i + 1], target=y[i : i + 1], feature_mask=grid, n_samples=300)
                for i in range(len(X))
            ]
        ),
    )
    return out, timings


def areas(net, X: np.ndarray, targets: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(N, 2): deletion and insertion areas per image."""
    return np.array(
        [
            [
                deletion(net, x, v, target=int(t)).area,
                insertion(net, x, v, target=int(t)).area,
            ]
            for x, v, t in zip(X, values, targets, strict=True)
        ]
    )


def interval(values: np.ndarray, *, seed: int = 0, rounds: int = 2000) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(rounds, len(values)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def cell(values: np.ndarray) -> str:
    lo, hi = interval(values)
    return f"{values.mean():.3f} [{lo:.3f}, {hi:.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--sanity-n", type=int, default=10)
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=list(METHODS),
        help="only these rows, printed (without Captum) and not written to docs/benchmarks.md",
    )
    args = parser.parse_args()
    labels = args.methods or list(METHODS)

    net = load_default_cnn("clean").eval()
    X_all, _ = load_mnist("test")
    X = np.ascontiguousarray(X_all[: args.n])
    model = xk.Model(net)
    targets = model.predict(X)

    ours: dict[str, np.ndarray] = {}
    explain_time = {}
    for name in labels:
        method, params = method_and_params(name)
        start = time.perf_counter()
        e = xk.explain(model, X, method=method, target=targets, batch=True, **params)
        explain_time[name] = time.perf_counter() - start
        ours[name] = e.values
    theirs, captum_time = {}, {}
    if not args.methods:
        theirs, captum_time = captum_methods(net, torch.as_tensor(X), torch.as_tensor(targets))

    metric_start = time.perf_counter()
    ours_areas = {k: areas(model, X, targets, v) for k, v in ours.items()}
    metric_seconds = time.perf_counter() - metric_start
    theirs_areas = {k: areas(model, X, targets, v) for k, v in theirs.items()}

    sanity = {}
    for name in labels:
        method, params = method_and_params(name)
        start = time.perf_counter()
        r = sanity_check(
            net, X[: args.sanity_n], method, batch=True, target=targets[: args.sanity_n], **params
        )
        sanity[name] = (r, time.perf_counter() - start)

    lines = [
        machine_line(),
        "",
        f"Default MNIST CNN, first {args.n} test images, target = predicted class. Deletion "
        "(lower is better) and insertion (higher is better) areas, 28 steps of 28 pixels; "
        "mean [95% bootstrap interval].",
        "",
        "| method | xaikit deletion | xaikit insertion | Captum deletion | Captum insertion "
        "| explain s (xaikit / Captum) |",
        "|---|---|---|---|---|---|",
    ]
    for name in labels:
        a, b = ours_areas[name], theirs_areas.get(name)
        cap = (cell(b[:, 0]), cell(b[:, 1])) if b is not None else ("-", "-")
        lines.append(
            f"| {name} | {cell(a[:, 0])} | {cell(a[:, 1])} | {cap[0]} | {cap[1]} | "
            f"{explain_time[name]:.1f} / {captum_time.get(name, float('nan')):.1f} |"
        )
    n_curves = 2 * len(ours)
    lines += [
        "",
        f"Metric time (xaikit explanations, {n_curves} curves per image x {args.n} images = "
        f"{n_curves * args.n} curves): **{metric_seconds:.1f} s** (goal < 120 s).",
        "",
        f"Adebayo et al. 2018 cascading randomisation on {args.sanity_n} images "
        "(Spearman of |attribution|; pass = mean over the cascade < 0.5):",
        "",
        "| method | " + " | ".join(sanity[labels[0]][0].layers) + " | mean | verdict | s |",
        "|---" * (len(sanity[labels[0]][0].layers) + 4) + "|",
    ]
    for name, (r, seconds) in sanity.items():
        sims = list(r.similarity.values())
        lines.append(
            f"| {name} | "
            + " | ".join(f"{v:.2f}" for v in sims)
            + f" | {np.mean(sims):.2f} | {'pass' if r.passed else 'FAIL'} | {seconds:.1f} |"
        )
    text = "\n".join(lines)
    print(text)
    if not args.methods:
        write_section("faithfulness", text)


if __name__ == "__main__":
    main()
