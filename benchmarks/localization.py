"""Local methods ranked by localisation on two data sets whose relevant region is known.

1. **Shapes** (``xaikit.datasets.shapes``): the class is decided by one shape among
   distractors; its mask is the ground truth. The default shapes CNN, first ``--n`` test images
   it classifies correctly, target = predicted class.
2. **Watermark MNIST**: the default watermark CNN on marked test digits of other classes that it
   calls ``WATERMARK_CLASS`` (it was fooled by the mark); the ground truth is
   ``WATERMARK_REGION``, the only evidence for that class in those images.

For each method: pointing game, relevance mass accuracy and relevance rank accuracy (Arras et
al. 2022), mean over the images with a 95% bootstrap interval; methods ranked by relevance rank
accuracy (mass rewards one sharp peak inside the mask; rank asks the mask to be covered).

Run: ``.venv/bin/python benchmarks/localization.py [--n 100]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import xaikit as xk
from _report import machine_line, write_section
from faithfulness import METHODS, cell, method_and_params
from xaikit.datasets import (
    WATERMARK_CLASS,
    WATERMARK_REGION,
    load_default_cnn,
    load_watermark_mnist,
)
from xaikit.datasets.shapes import load_shapes, load_shapes_cnn
from xaikit.metrics import pointing_game, relevance_mass, relevance_rank

# The local methods, with the modest sample counts of benchmarks/faithfulness.py (one table).


SCORES = {
    "pointing game": pointing_game,
    "relevance mass": relevance_mass,
    "relevance rank": relevance_rank,
}


def rank_methods(
    net, X: np.ndarray, masks: np.ndarray, labels: list[str]
) -> list[tuple[str, dict, float]]:
    """Per method: the per-image scores and the explain time, best relevance rank first."""
    model = xk.Model(net)
    targets = model.predict(X)
    rows = []
    for name in labels:
        method, params = method_and_params(name)
        start = time.perf_counter()
        e = xk.explain(model, X, method=method, target=targets, batch=True, **params)
        seconds = time.perf_counter() - start
        scores = {
            metric: np.array(
                [float(fn(v, m)) for v, m in zip(e.values, masks, strict=True)], dtype=np.float64
            )
            for metric, fn in SCORES.items()
        }
        rows.append((name, scores, seconds))
    return sorted(rows, key=lambda r: -r[1]["relevance rank"].mean())


def table(rows, chance: float) -> list[str]:
    lines = [
        "| rank | method | " + " | ".join(SCORES) + " | explain s |",
        "|---:|---|---|---|---|---:|",
    ]
    for i, (name, scores, seconds) in enumerate(rows, 1):
        lines.append(
            f"| {i} | {name} | "
            + " | ".join(cell(scores[m]) for m in SCORES)
            + f" | {seconds:.1f} |"
        )
    lines.append(f"| | chance (mask share) | - | {chance:.3f} | {chance:.3f} | |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=list(METHODS),
        help="only these rows, printed and not written to docs/benchmarks.md",
    )
    args = parser.parse_args()
    labels = args.methods or list(METHODS)

    shapes_net = load_shapes_cnn().eval()
    X, y, masks = load_shapes("test")
    with torch.no_grad():
        right = shapes_net(torch.as_tensor(X)).argmax(1).numpy() == y
    keep = np.flatnonzero(right)[: args.n]
    shapes_rows = rank_methods(shapes_net, X[keep], masks[keep], labels)
    shapes_chance = float(masks[keep].mean())

    mark_net = load_default_cnn("watermark").eval()
    Xm, ym, _ = load_watermark_mnist("test_marked")
    with torch.no_grad():
        predicted = mark_net(torch.as_tensor(Xm)).argmax(1).numpy()
    fooled = np.flatnonzero((predicted == WATERMARK_CLASS) & (ym != WATERMARK_CLASS))[: args.n]
    region = np.zeros((28, 28), dtype=bool)
    y0, x0, y1, x1 = WATERMARK_REGION
    region[y0:y1, x0:x1] = True
    mark_rows = rank_methods(
        mark_net, Xm[fooled], np.broadcast_to(region, (len(fooled), 28, 28)), labels
    )

    lines = [
        machine_line(),
        "",
        f"**Shapes** (default shapes CNN, {len(keep)} correctly classified test images, mask = "
        "the class shape grown by one pixel). Mean [95% bootstrap interval], ranked by relevance "
        "rank accuracy:",
        "",
        *table(shapes_rows, shapes_chance),
        "",
        f"**Watermark MNIST** (default watermark CNN, {len(fooled)} marked test digits of other "
        f"classes that it calls {WATERMARK_CLASS}; mask = WATERMARK_REGION, 6x6 pixels):",
        "",
        *table(mark_rows, region.mean()),
    ]
    text = "\n".join(lines)
    print(text)
    if not args.methods:
        write_section("localization", text)


if __name__ == "__main__":
    main()
