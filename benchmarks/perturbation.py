"""Perturbation methods against Captum, lime, shap and the machine's limit, in one run.

For the default MNIST CNN (1x28x28) and a plain-torch ResNet-18 (random weights, 3x224x224):
seconds for xaikit's occlusion, LIME, KernelSHAP and RISE; Captum's `Occlusion`, `Lime` and
`KernelShap` at their default `perturbations_per_eval` (1) and at 64; lime's
`LimeImageExplainer` at batch_size 10 (its default) and 64; shap's `KernelExplainer`. All with
the same sample counts and the same segmentation (a grid of square cells). The limit is the
same number of forward passes on inputs of that shape, hand-written at the best batch size of a
sweep. Peak memory is the largest rise of the process's resident memory while a contender runs
(sampled every 5 ms). Goal: every xaikit method within 1.3x of the limit and at most 0.8x of
the naive (NCHW) limit on both models (they may score on xaikit.layout's copy: channels-last,
BatchNorm folded, ReLUs in place, convolutions fused with the ReLU after them), and occlusion
with incremental inference (the default, ``incremental="auto"``: only the region a window
changes is recomputed through the leading layers) at most 0.5x of the naive (NCHW) limit on
ResNet-18 (issue 20); the plain occlusion row (``incremental=False``) is the engine's own
forwards.

Run: ``make bench`` or ``.venv/bin/python benchmarks/perturbation.py [--quick]``;
``--method occlusion`` runs one method's rows only (printed, docs/benchmarks.md unchanged);
``--no-write`` prints a full run without writing docs/benchmarks.md (a busy machine).
"""

from __future__ import annotations

import argparse
import copy
import os
import threading
import time
import warnings

import numpy as np
import torch

import xaikit as xk
from _models import resnet18
from _report import machine_line, write_section
from xaikit.components import make_components
from xaikit.datasets import load_default_cnn, load_mnist


class PeakMemory:
    """Largest rise of resident memory (MiB) over the block, sampled in a thread."""

    def __enter__(self):
        self.start = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())
        self.mib = (self.peak - self.start) / 2**20


def _rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def forward_limit(net, shape, passes: int, sweep, *, channels_last: bool = False) -> float:
    """Seconds for ``passes`` forwards at the best batch size of ``sweep``.

    ``channels_last``: model and inputs in that layout (on a copy), the fastest this machine
    runs the network; otherwise the naive limit (NCHW, the model as it is).
    """
    if channels_last:
        net = copy.deepcopy(net).to(memory_format=torch.channels_last)
    best = float("inf")
    for batch in sweep:
        x = torch.rand(min(batch, passes), *shape)
        if channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        start = time.perf_counter()
        with torch.inference_mode():
            done = 0
            while done < passes:
                n = min(batch, passes - done)
                net(x[:n])
                done += n
        best = min(best, time.perf_counter() - start)
    return best


def probabilities(net):
    """A classifier_fn for lime and shap: NumPy batches in, softmax out, batched by 64."""

    def predict(images: np.ndarray) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for i in range(0, len(images), 64):
                out.append(net(torch.from_numpy(np.ascontiguousarray(images[i : i + 64]))))
        return torch.cat(out).numpy()

    return predict


def contenders(net, x: np.ndarray, target: int, *, cell: int, samples: int, window: int):
    from captum.attr import KernelShap, Lime, Occlusion
    from lime.lime_image import LimeImageExplainer
    from shap import KernelExplainer

    segments = make_components(x, "grid", cell=(cell, cell))
    m = int(segments.max()) + 1
    x_t = torch.from_numpy(x)[None]
    mask_t = torch.from_numpy(segments)[None, None].expand_as(x_t)
    model = xk.Model(net)
    channels = x.shape[0]
    predict = probabilities(net)

    def lime_classifier(hwc: np.ndarray) -> np.ndarray:
        nchw = np.transpose(hwc, (0, 3, 1, 2))[:, :channels].astype(np.float32)
        return predict(nchw)

    def shap_f(z: np.ndarray) -> np.ndarray:  # coalitions (n, M) -> scores of the target
        keep = z[:, segments].astype(np.float32)[:, None]  # (n, 1, H, W)
        return predict(x[None] * keep)[:, target]

    image_hwc = np.transpose(x, (1, 2, 0)).astype(np.float64)
    if channels == 1:
        image_hwc = np.repeat(image_hwc, 3, axis=2)
    n_windows = len(range(0, x.shape[1] - window + 1, window // 2 or 1)) ** 2

    def lime_peer(batch: int):
        return lambda: LimeImageExplainer(random_state=0).explain_instance(
            image_hwc, lime_classifier, labels=(target,), top_labels=None, hide_color=0,
            num_samples=samples, batch_size=batch, segmentation_fn=lambda _img: segments,
        )  # fmt: skip

    occlusion_kw = dict(
        sliding_window_shapes=(channels, window, window),
        strides=(channels, window // 2, window // 2),
        target=target,
    )

    def occlusion(incremental):
        return lambda: xk.explain(
            model,
            x,
            method="occlusion",
            target=target,
            window=(window, window),
            stride=(window // 2, window // 2),
            incremental=incremental,
        )

    return [
        ("occlusion", "xaikit (incremental)", n_windows, occlusion("auto")),
        ("occlusion", "xaikit (plain)", n_windows, occlusion(False)),
        ("occlusion", "Captum (per eval 1)", n_windows,
         lambda: Occlusion(net).attribute(x_t, **occlusion_kw)),
        ("occlusion", "Captum (per eval 64)", n_windows,
         lambda: Occlusion(net).attribute(x_t, perturbations_per_eval=64, **occlusion_kw)),
        ("lime", "xaikit", samples, lambda: xk.explain(
            model, x, method="lime", target=target, components=segments, samples=samples,
            baseline=0.0, seed=0)),
        ("lime", "Captum (per eval 1)", samples, lambda: Lime(net).attribute(
            x_t, target=target, feature_mask=mask_t, n_samples=samples)),
        ("lime", "Captum (per eval 64)", samples, lambda: Lime(net).attribute(
            x_t, target=target, feature_mask=mask_t, n_samples=samples,
            perturbations_per_eval=64)),
        ("lime", "lime (batch 10)", samples, lime_peer(10)),
        ("lime", "lime (batch 64)", samples, lime_peer(64)),
        ("kernel_shap", "xaikit", samples, lambda: xk.explain(
            model, x, method="kernel_shap", target=target, components=segments,
            samples=samples, baseline=0.0, seed=0)),
        ("kernel_shap", "Captum (per eval 1)", samples, lambda: KernelShap(net).attribute(
            x_t, target=target, feature_mask=mask_t, n_samples=samples)),
        ("kernel_shap", "Captum (per eval 64)", samples, lambda: KernelShap(net).attribute(
            x_t, target=target, feature_mask=mask_t, n_samples=samples,
            perturbations_per_eval=64)),
        ("kernel_shap", "shap KernelExplainer", samples, lambda: KernelExplainer(
            shap_f, np.zeros((1, m))).shap_values(np.ones((1, m)), nsamples=samples, silent=True)),
        ("rise", "xaikit", samples, lambda: xk.explain(
            model, x, method="rise", target=target, samples=samples, seed=0)),
    ]  # fmt: skip


def run_case(name, net, x, target, *, cell, samples, window, sweep, repeats, only=None):
    """Best of ``repeats`` runs per contender, each next to its own limit (noisy machine)."""
    rows = []
    cases = contenders(net, x, target, cell=cell, samples=samples, window=window)
    cases[0][3]()  # warm-up (allocations, the incremental plan)
    cases[1][3]()  # warm-up (the batch-size search)
    cases = [c for c in cases if only is None or c[0] == only]
    # Per method and number of forwards: (best, naive). The limits are timed in turn with
    # xaikit's runs of the method (limit, fast limit, run; repeated), so a machine that speeds
    # up or slows down between methods moves both sides of the ratio alike; the peers' rows
    # reuse them.
    limits: dict[tuple[str, int], tuple[float, float]] = {}
    for method, who, passes, run in cases:
        key = (method, passes)
        timed = key not in limits or who.startswith("xaikit")
        naive = fast = seconds = mib = float("inf")
        for _ in range(repeats):
            if timed:
                naive = min(naive, forward_limit(net, x.shape, passes, sweep))
                fast = min(fast, forward_limit(net, x.shape, passes, sweep, channels_last=True))
            with PeakMemory() as memory:
                seconds = min(seconds, _seconds(run))
            mib = memory.mib if mib == float("inf") else max(mib, memory.mib)
        if timed:
            limits[key] = (min(naive, fast), naive)
        limit, naive = limits[key]
        rows.append(
            f"| {name} | {method} | {who} | {passes} | {seconds:.3f} | {limit:.3f} | "
            f"{seconds / limit:.2f} | {naive:.3f} | {seconds / naive:.2f} | {mib:.0f} |"
        )
        print(rows[-1], flush=True)
    return rows


def _seconds(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="MNIST CNN only")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--method", help="run this method's rows only (not written to docs)")
    parser.add_argument("--no-write", action="store_true", help="print only (docs unchanged)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    load_before = os.getloadavg()[0]
    rows = []
    mnist = load_default_cnn("clean")
    X, _ = load_mnist("test")
    rows += run_case("MNIST CNN", mnist, X[0], 7, cell=4, samples=args.samples, window=4,
                     sweep=(32, 64, 128, 256), repeats=10, only=args.method)  # fmt: skip
    if not args.quick:
        x = np.random.default_rng(0).random((3, 224, 224), dtype=np.float32)
        samples = max(64, args.samples // 10)
        rows += run_case("ResNet-18", resnet18(), x, 1, cell=32, samples=samples, window=32,
                         sweep=(8, 16, 32), repeats=5, only=args.method)  # fmt: skip
    header = [
        "| model | method | implementation | forwards | seconds | limit s | x limit | "
        "naive limit s | x naive limit | peak MiB |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    body = "\n".join(header + rows)
    note = (
        "Same segmentation for all (square grid cells: 4 px on MNIST, 32 px on ResNet-18), same "
        "sample counts (MNIST 1000, ResNet-18 100), occlusion window 4/32 with half-window "
        "stride. 'forwards' is the number of model evaluations the method needs; the limit runs "
        "that many forwards at the best batch size, in the faster of the two memory layouts "
        "(channels-last on a copy, or NCHW); the naive limit in NCHW with the model as it is. Each "
        "xaikit row is timed in turn with its two limits (best of 10 each on MNIST, whose rows "
        "take milliseconds, of 5 on ResNet-18: a busy moment on this shared machine moves a "
        "ratio by 5%); the peers' rows reuse them. "
        "Goals: xaikit within 1.3x of the limit; the perturbation methods at most 0.8x of the "
        "naive limit (they may use xaikit.layout's copy: channels-last, BatchNorm folded, "
        "convolution+ReLU fused), and occlusion with "
        "incremental inference (the default) at most 0.5x of the naive limit on ResNet-18. "
        f"Load average (1 min) before {load_before:.2f}, after {os.getloadavg()[0]:.2f} (this "
        "run's own two threads count about 2)."
    )
    print(machine_line())
    print(body)
    print(note)
    if args.method is not None or args.no_write:
        return  # a partial run (or one on a busy machine) does not replace the section
    write_section("perturbation", f"{machine_line()}\n\n{body}\n\n{note}\n")


if __name__ == "__main__":
    main()
