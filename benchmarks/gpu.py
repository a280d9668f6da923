"""One prepared script for a GPU (or, with ``--device cpu``, the CPU): ResNet-50 at 224 x 224.

Measures, in one process:

1. the batch-size search of ``xk.Model`` (up to memory on a GPU): the size it chose for scores
   and gradients and the images per second there;
2. Integrated Gradients (50 steps) and occlusion (window 32, stride 16: 169 forwards) on a few
   images, in fp32 and under bf16 autocast, with the change in the attributions that bf16
   makes (relative L2 distance, and the IG completeness gap);
3. audit images per second (Integrated Gradients 50 steps, Grad-CAM, LRP) on random images.

Results go to the ``gpu`` section of docs/benchmarks.md (``--no-write`` prints only).
Run: ``.venv/bin/python benchmarks/gpu.py [--device cuda|cpu] [--images 8]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch
from torch import nn

import xaikit as xk
from _models import resnet50
from _report import machine_line, write_section


class Autocast(nn.Module):
    """The network under bf16 autocast, with float32 logits out."""

    def __init__(self, net: nn.Module, device: torch.device) -> None:
        super().__init__()
        self.net, self.device_type = net, device.type

    def forward(self, x):
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            return self.net(x).float()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(device, fn):
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return result, time.perf_counter() - start


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-30))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=8, help="images for IG and occlusion")
    parser.add_argument("--audit-images", type=int, default=64)
    parser.add_argument("--search-images", type=int, default=512)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    net = resnet50().to(device)
    rng = np.random.default_rng(0)
    x = rng.random((args.images, 3, 224, 224), dtype=np.float32)
    lines = [machine_line() + f"; device {device}", ""]

    # 1. the batch-size search
    model = xk.Model(net)
    many = rng.random((args.search_images, 3, 224, 224), dtype=np.float32)
    model.scores(many[:8])  # warm-up: kernels, allocator
    _, scores_s = timed(device, lambda: model.scores(many))
    _, grads_s = timed(device, lambda: model.gradients(many[: args.search_images // 4]))
    chosen = {k[0]: v for k, v in model.chosen_batch_sizes.items()}
    lines += [
        "| call | chosen batch | images/s (first call, search included) |",
        "|---|---:|---:|",
        f"| scores | {chosen.get('scores', 'one batch')} | {args.search_images / scores_s:.1f} |",
        f"| gradients | {chosen.get('gradients', 'one batch')} | "
        f"{args.search_images / 4 / grads_s:.1f} |",
        "",
    ]

    # 2. IG-50 and occlusion, fp32 and bf16 autocast
    rows = []
    half = Autocast(net, device)
    for label, method, params in (
        ("Integrated Gradients, 50 steps", "integrated_gradients", {"steps": 50}),
        ("occlusion, window 32, stride 16", "occlusion", {"window": 32, "stride": 16}),
    ):
        results = {}
        for precision, module in (("fp32", net), ("bf16 autocast", half)):
            m = xk.Model(module)
            xk.explain(m, x[:1], method=method, batch=True, **params)  # warm-up + search
            e, seconds = timed(
                device,
                lambda m=m, method=method, params=params: xk.explain(
                    m, x, method=method, batch=True, **params
                ),
            )
            results[precision] = e
            gap = e.info.get("completeness_gap")
            rows.append(
                f"| {label} | {precision} | {seconds / len(x):.3f} | "
                + (f"{float(np.max(np.abs(gap))):.2e}" if gap is not None else "-")
                + " |"
            )
        change = relative(results["fp32"].values, results["bf16 autocast"].values)
        same = float(np.mean(results["fp32"].target == results["bf16 autocast"].target))
        rows.append(f"| {label} | bf16 vs fp32 | relative L2 change {change:.3f} | "
                    f"same target {same:.2f} |")  # fmt: skip
    lines += [
        f"Per image ({len(x)} random images):",
        "",
        "| method | precision | seconds per image | max completeness gap |",
        "|---|---|---:|---:|",
        *rows,
        "",
    ]

    # 3. audit throughput
    data = rng.random((args.audit_images, 3, 224, 224), dtype=np.float32)
    audit_rows = []
    for label, method, params in (
        ("Integrated Gradients, 50 steps", "integrated_gradients", {"steps": 50}),
        ("Grad-CAM", "gradcam", {}),
        ("LRP epsilon_plus_flat", "lrp", {}),
    ):
        with tempfile.TemporaryDirectory() as out:
            _, seconds = timed(
                device,
                lambda method=method, params=params, out=out: xk.audit(
                    net, data, method=method, params=params, out=out, progress=False
                ),
            )
        audit_rows.append(
            f"| {label} | {args.audit_images / seconds:.1f} | "
            f"{1_281_167 / (args.audit_images / seconds) / 3600:.1f} |"
        )
    lines += [
        f"Audit ({args.audit_images} random images, one device, analysis included):",
        "",
        "| method | images/s | hours for ImageNet-1k train (1.28 M images) |",
        "|---|---:|---:|",
        *audit_rows,
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section("gpu", text)


if __name__ == "__main__":
    main()
