"""Occlusion (Zeiler & Fergus 2014): slide a window of baseline values over the input.

Each window position is one mask for the perturbation engine; every element's attribution is
the mean score drop ``f(x) - f(x with the window replaced)`` over the windows that cover it,
exactly Captum's ``Occlusion``: windows start at 0 and step by ``stride`` until the window
reaches the end of the axis; the last one may stick out and is then cut at the border
(``ceil((D - w) / s) + 1`` positions per axis). A stride larger than the window is refused:
it would leave elements that no window covers, with no attribution at all.

Windows are products of one interval per axis, so each position's mask is an outer product of
rows of small per-axis cover matrices ``A_d`` (positions x axis length), and the sum over
windows of ``drop * mask`` is the score-drop grid contracted with every ``A_d`` in turn: no
per-window Python loop, neither to build masks nor to accumulate them.

On a CNN the scores of the window positions come by incremental inference where the network
allows it (``_incremental.py``, Krypton: Nakandala et al. 2019): the leading convolutions and
poolings recompute only the region each window changes, the rest of the network runs in full.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from xaikit._validation import describe
from xaikit.attribution import _incremental
from xaikit.attribution.perturbation import chunk_size, perturbation_scores, values_dtype
from xaikit.attribution.registry import Attribution, register
from xaikit.baselines import make_baseline
from xaikit.components import default_cell, input_kind
from xaikit.model import Model


@register(
    "occlusion",
    needs_gradients=False,
    reference="Zeiler & Fergus 2014, Visualizing and understanding convolutional networks",
    scores_at_input=True,  # it scores x anyway (the drops start there): explain skips its own
)
def occlusion(
    model: Model,
    x: np.ndarray,
    targets: np.ndarray | None,
    *,
    window: Any = None,
    stride: Any = None,
    baseline: Any = 0.0,
    incremental: Any = "auto",
) -> Attribution:
    """Mean drop of the target score when a sliding window covering each element is removed.

    Parameters
    ----------
    window : int or tuple of int, optional
        Window size. Images: ``(h, w)`` over the spatial axes, all channels occluded together,
        or a full-rank ``(c, h, w)`` that slides over the channels too; an int is a square.
        Default: ``ceil(side / 7)`` for images under 64 px (4 px on 28 px), ``ceil(side / 14)``
        from 64 px (16 px on 224 px); 1 for tabular rows and token sequences.
    stride : int or tuple of int, optional
        Step between window positions, per window axis, at most the window (so every element
        is covered). Default: half the window (at least 1).
    baseline : number, str or array
        What replaces the occluded elements; see :func:`xaikit.baselines.make_baseline`
        (``"noise"`` is drawn with seed 0). Background rows ``(R, *x.shape)`` average the
        score over the rows.
    incremental : {"auto", True, False}
        Incremental inference on a CNN (Nakandala et al. 2019): recompute only the region each
        window changes through the leading convolution, pooling and pointwise layers, then run
        the rest of the network in full; the same scores as plain occlusion up to float
        rounding. ``"auto"`` uses it where the network allows it and the estimated cost is
        below 80% of a plain forward, ``True`` wherever the network allows it, ``False``
        never. ``e.info["incremental"]`` says whether it ran and ``e.info["incremental_note"]``
        how, or why not.

    References
    ----------
    Zeiler & Fergus 2014, Visualizing and understanding convolutional networks, ECCV.
    """
    item = x.shape[1:]
    window, stride = _resolve(item, input_kind(x[0]), window, stride)
    incremental = _check_incremental(incremental)
    lead = len(item) - len(window)  # leading axes (channels) that every window covers fully
    counts = [_n_positions(d, w, s) for d, w, s in zip(item[lead:], window, stride, strict=True)]
    covers = [
        _cover(d, w, s, n) for d, w, s, n in zip(item[lead:], window, stride, counts, strict=True)
    ]
    n_windows = int(np.prod(counts))
    f_x = model.scores(x)
    targets = f_x.argmax(axis=1) if targets is None else targets  # None: the predicted class
    values = np.empty(x.shape, dtype=values_dtype(model, x))
    bases = [make_baseline(x[i], baseline, seed=0) for i in range(len(x))]
    runner, note = _incremental.prepare(
        model,
        x,
        f_x,
        window=window,
        stride=stride,
        counts=counts,
        covers=covers,
        background=any(b.background for b in bases),
        mode=incremental,
    )
    for i in range(len(x)):
        base = bases[i]
        if runner is not None:
            scores = runner.scores(x[i], base.values)
        else:
            size = chunk_size(x[i], n_background=len(base.values) if base.background else 1)
            scores = perturbation_scores(
                model,
                x[i],
                _masks(covers, counts, size),
                baseline=base.values,
                background=base.background,
            )
        drops = f_x[i, targets[i]].astype(np.float64) - scores[:, targets[i]]
        values[i] = np.broadcast_to(_spread(drops.reshape(counts), covers), item)
    return Attribution(
        values=values,
        params={"window": window, "stride": stride},
        info={"n_windows": n_windows, "incremental": runner is not None, "incremental_note": note},
        scores=f_x,
    )


def _resolve(item: tuple[int, ...], kind: str, window: Any, stride: Any):
    """Window and stride as tuples over the last ``len(window)`` axes, checked."""
    spatial = item[-2:] if kind == "image" else item
    if window is None:
        window = tuple(default_cell(s) for s in spatial) if kind == "image" else (1,) * len(item)
    window = _as_tuple(window, "window", len(spatial))
    if len(window) not in (len(spatial), len(item)):
        shapes = f"{len(spatial)} (spatial)" + (
            f" or {len(item)} (full rank)" if len(item) != len(spatial) else ""
        )
        raise ValueError(
            f"window: expected {shapes} sizes for an input of shape {item}, got {window}"
        )
    axes = item[len(item) - len(window) :]
    if any(w > d for w, d in zip(window, axes, strict=True)):
        raise ValueError(f"window: {window} is larger than the input's axes {axes}")
    if stride is None:
        stride = tuple(max(1, w // 2) for w in window)
    stride = _as_tuple(stride, "stride", len(window))
    if len(stride) != len(window):
        raise ValueError(f"stride: expected {len(window)} steps like window {window}, got {stride}")
    if any(s > w for s, w in zip(stride, window, strict=True)):
        # Elements between windows would get no value at all, shown as 0: a silently wrong map.
        raise ValueError(
            f"stride: {stride} is larger than window {window}, so some elements would be "
            "covered by no window; use a stride at most the window size"
        )
    return window, stride


def _check_incremental(value: Any) -> Any:
    if value is True or value is False or (isinstance(value, str) and value == "auto"):
        return value
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, str):
        raise ValueError(f"incremental: expected True, False or 'auto', got {value!r}")
    raise TypeError(f"incremental: expected True, False or 'auto', got {describe(value)}")


def _as_tuple(value: Any, name: str, n: int) -> tuple[int, ...]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value,) * n
    if isinstance(value, np.ndarray):
        value = tuple(value.tolist())
    if not isinstance(value, (tuple, list)) or not value:
        raise TypeError(f"{name}: expected an int or a tuple of ints, got {describe(value)}")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name}: expected ints, got {describe(v)} in {tuple(value)}")
        if v < 1:
            raise ValueError(f"{name}: expected sizes >= 1, got {tuple(value)}")
    return tuple(int(v) for v in value)


def _n_positions(length: int, window: int, stride: int) -> int:
    """Captum's count: start at 0, step until the window reaches the end of the axis."""
    return -(-(length - window) // stride) + 1


def _cover(length: int, window: int, stride: int, n: int) -> np.ndarray:
    """Boolean ``(n, length)``: which elements of the axis each window position covers."""
    start = np.arange(n)[:, None] * stride
    index = np.arange(length)[None, :]
    return (index >= start) & (index < start + window)  # cut at the border, as Captum does


def _masks(covers: list[np.ndarray], counts: list[int], size: int) -> Iterator[np.ndarray]:
    """Keep-masks (1 = kept) for all window positions, ``size`` at a time, C order."""
    total = int(np.prod(counts))
    for start in range(0, total, size):
        index = np.unravel_index(np.arange(start, min(start + size, total)), counts)
        occluded = None
        for axis, (cover, idx) in enumerate(zip(covers, index, strict=True)):
            shape = [len(idx)] + [1] * len(covers)
            shape[axis + 1] = cover.shape[1]
            part = cover[idx].reshape(shape)
            occluded = part if occluded is None else occluded & part
        yield ~occluded


def _spread(drops: np.ndarray, covers: list[np.ndarray]) -> np.ndarray:
    """Mean drop over the windows covering each element (0 where none does)."""
    total = drops
    for cover in covers:  # contract the leading position axis; the element axis goes last
        total = np.tensordot(total, cover.astype(np.float64), axes=([0], [0]))
    hits = covers[0].sum(axis=0).astype(np.float64)
    for cover in covers[1:]:
        hits = np.multiply.outer(hits, cover.sum(axis=0))
    return np.divide(total, hits, out=np.zeros_like(total), where=hits > 0)
