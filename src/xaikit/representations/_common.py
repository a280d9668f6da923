"""Checks and drawing helpers shared by the representation tools (activations, projection,
probing, reconstruction), so that every entry point rejects bad input with the same words."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from xaikit._plotting import legend_text
from xaikit._validation import describe
from xaikit.model import Model

# At most this many layer names are listed when an unknown name has no close match.
_LISTED_NAMES = 25


def resolve_layers(m: Model, layers: Any, *, name: str = "layers") -> list[str]:
    """Return ``layers`` (one path or a sequence of paths) as a checked list of layer paths.

    An unknown path raises a ``ValueError`` naming ``name`` that suggests close matches and
    lists the paths that exist, so a typo is fixed without opening the model.
    """
    if not m.is_torch:
        raise TypeError(
            f"model: {name} can be recorded only for PyTorch models; this Model wraps a "
            "callable on NumPy batches"
        )
    if isinstance(layers, str):
        layers = [layers]
    if not isinstance(layers, Sequence) or isinstance(layers, bytes):
        raise TypeError(f"{name}: expected a layer path or a list of them, got {describe(layers)}")
    layers = list(layers)
    if not layers:
        raise ValueError(f"{name}: expected at least one layer path, got an empty list")
    existing = m.layer_names()
    known = set(existing)
    for layer in layers:
        if not isinstance(layer, str):
            raise TypeError(f"{name}: expected layer paths (str), got {describe(layer)}")
        if layer not in known:
            close = difflib.get_close_matches(layer, existing, n=5)
            hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
            shown = ", ".join(existing[:_LISTED_NAMES])
            more = f", ... ({len(existing)} in all)" if len(existing) > _LISTED_NAMES else ""
            raise ValueError(
                f"{name}: no layer {layer!r} in the model{hint}; layers: {shown}{more}"
            )
    repeated = sorted({layer for layer in layers if layers.count(layer) > 1})
    if repeated:
        raise ValueError(f"{name}: each layer once, got {', '.join(map(repr, repeated))} twice")
    return layers


def check_labels(labels: Any, *, n: int, name: str = "labels", classes: bool = True) -> np.ndarray:
    """Return ``labels`` as a 1-D array of length ``n``.

    With ``classes=True`` (probes) the labels must be discrete (integers, booleans or strings;
    floats only when every value is a whole number) and hold at least two distinct classes: a
    probe for a property that never varies has nothing to learn.
    """
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    if labels is None or isinstance(labels, (str, bytes)):
        raise TypeError(f"{name}: expected one label per item, got {describe(labels)}")
    arr = np.asarray(labels)
    if arr.ndim != 1 or len(arr) != n:
        raise ValueError(
            f"{name}: expected one label per item, shape ({n},), got shape {arr.shape}"
        )
    if arr.dtype.kind == "O":
        try:
            arr = arr.astype(str)
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name}: expected numbers or strings, got {describe(arr)}") from err
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ValueError(f"{name}: expected finite labels, got NaN or infinity")
    if not classes:
        return arr
    if arr.dtype.kind == "f":
        if not np.array_equal(arr, np.round(arr)):
            raise ValueError(
                f"{name}: expected class labels (integers, booleans or strings), got "
                "non-integer floats; a probe classifies, so bin a continuous property first"
            )
        arr = arr.astype(np.int64)
    elif arr.dtype.kind not in "biuUS":
        raise TypeError(f"{name}: expected class labels, got {describe(arr)}")
    distinct = np.unique(arr)
    if len(distinct) < 2:
        raise ValueError(
            f"{name}: expected at least two classes, got only {distinct[0].item()!r} for all {n} "
            "items; a probe needs items with and without the property"
        )
    return arr


def flat(a: np.ndarray) -> np.ndarray:
    """Items as rows: ``(N, ...)`` -> ``(N, features)`` (a view when possible, also of a memmap)."""
    return a.reshape(len(a), -1)


def new_figure(size: tuple[float, float]) -> Any:
    """A matplotlib ``Figure`` on the Agg canvas: no GUI backend, nothing shown."""
    from xaikit._plotting import new_figure as figure  # the one place every plot starts

    return figure(size)


def scatter_by_label(
    ax: Any, coords: np.ndarray, labels: np.ndarray | None, *, legend: bool = True
) -> None:
    """Scatter ``coords`` (N, 2) coloured by ``labels``.

    Up to 20 distinct labels are categories (one colour each, a legend); more numeric labels
    are a continuous colour scale with a colour bar.
    """
    size = max(2.0, min(20.0, 4000.0 / max(1, len(coords))))
    if labels is None:
        ax.scatter(coords[:, 0], coords[:, 1], s=size, color="#4c72b0", linewidths=0)
        return
    distinct = np.unique(labels)
    if len(distinct) > 20 and labels.dtype.kind in "iuf":
        points = ax.scatter(
            coords[:, 0], coords[:, 1], s=size, c=labels, cmap="viridis", linewidths=0
        )
        ax.figure.colorbar(points, ax=ax, shrink=0.85)
        return
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(distinct) <= 10 else "tab20"]
    for i, value in enumerate(distinct):
        keep = labels == value
        ax.scatter(
            coords[keep, 0],
            coords[keep, 1],
            s=size,
            color=cmap(i % cmap.N),
            label=legend_text(value),
            linewidths=0,
        )
    if legend:
        ax.legend(markerscale=max(1.0, 12.0 / size), fontsize="small", frameon=False, loc="best")
