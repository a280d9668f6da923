"""Baselines: what "removed" means when a component is taken out of an input.

A perturbation method replaces the removed elements by a baseline (Zeiler & Fergus 2014 used
a grey square; RISE and the deletion metric a blur; KernelSHAP the expectation over background
data, Lundberg & Lee 2017). :func:`make_baseline` turns the user's choice into arrays the
perturbation engine takes: one array of the input's shape, or background rows ``(R, *x.shape)``
whose scores the engine averages.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch

from xaikit._validation import check_finite, check_number, describe
from xaikit.components import input_kind

NAMES = ("mean", "blur", "noise")


class Baseline(NamedTuple):
    """A baseline ready for the perturbation engine; unpacks as ``values, background``.

    ``values`` has the input's shape, or ``(R, *x.shape)`` when ``background`` is True (then
    removal means the expectation of the model's score over the R rows).
    """

    values: np.ndarray
    background: bool


def make_baseline(
    x: Any,
    baseline: Any = 0.0,
    *,
    seed: int | None = None,
    background: bool | None = None,
    kind: str | None = None,
    sigma: float | None = None,
    distribution: str = "uniform",
) -> Baseline:
    """Build the baseline for one input ``x``.

    Parameters
    ----------
    x : array or tensor
        One input (no batch axis).
    baseline : number, str, array or tensor
        - a number: that constant everywhere;
        - ``"mean"``: each channel's mean over the image (images only: a tabular row or a
          token sequence has no meaningful mean of its own; pass background rows instead);
        - ``"blur"``: a Gaussian blur of the image over its spatial axes (``sigma`` in pixels,
          default ``min(H, W) / 16``);
        - ``"noise"``: noise in the input's range, per channel for images, drawn with ``seed``:
          ``distribution="uniform"`` over [min, max] or ``"normal"`` with its mean and std;
        - an array broadcastable to ``x``'s shape (e.g. ``(C, 1, 1)`` per channel);
        - background rows ``(R, *x.shape)``: the expectation over them (KernelSHAP).
    seed : int, optional
        Seed of ``"noise"``.
    background : bool, optional
        ``None`` accepts both forms; ``True`` requires background rows; ``False`` rejects them
        (for methods that need one replacement value per element).
    kind : {"image", "tabular", "text"}, optional
        Overrides the inferred kind of ``x`` (as in :func:`xaikit.components.input_kind`).

    Returns
    -------
    Baseline
        ``(values, background)``; values are float32 (float64 when ``x`` is float64).
    """
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    kind = input_kind(arr, kind)
    dtype = np.float64 if arr.dtype == np.float64 else np.float32
    if isinstance(baseline, str):
        if background:
            raise ValueError(f"baseline: expected background rows (R, *x.shape), got {baseline!r}")
        values = _named(arr.astype(np.float64), baseline, kind, seed, sigma, distribution)
        return Baseline(values.astype(dtype), False)
    if isinstance(baseline, torch.Tensor):
        baseline = baseline.detach().cpu().numpy()
    try:
        if isinstance(baseline, (bool, np.bool_)) or np.asarray(baseline).dtype == bool:
            raise TypeError("a bool is not a value")
        base = np.asarray(baseline, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"baseline: expected a number, one of {NAMES}, an array or background rows, got "
            f"{describe(baseline)}"
        ) from err
    check_finite(base, name="baseline")
    rows = base.ndim == arr.ndim + 1
    if rows:
        if base.shape[1:] != arr.shape:
            raise ValueError(
                f"baseline: background rows must have the input's shape: expected (R, "
                f"{', '.join(map(str, arr.shape))}), got {base.shape}"
            )
        if len(base) == 0:
            raise ValueError("baseline: expected at least one background row, got none")
    if background and not rows:
        raise ValueError(
            f"baseline: expected background rows (R, {', '.join(map(str, arr.shape))}), got "
            f"shape {base.shape}"
        )
    if background is False and rows:
        raise ValueError(
            f"baseline: this method needs one value per element (shape {arr.shape} or a "
            f"number), not background rows {base.shape}"
        )
    if rows:
        return Baseline(base.astype(dtype), True)
    try:
        values = np.broadcast_to(base, arr.shape)
    except ValueError:
        raise ValueError(
            f"baseline: expected a number, an array broadcastable to the input's shape "
            f"{arr.shape}, or background rows (R, {', '.join(map(str, arr.shape))}); got shape "
            f"{base.shape}"
        ) from None
    return Baseline(np.array(values, dtype=dtype), False)


def _named(arr: np.ndarray, name: str, kind: str, seed, sigma, distribution) -> np.ndarray:
    if name not in NAMES:
        raise ValueError(f"baseline: expected a number, an array or one of {NAMES}, got {name!r}")
    if kind != "image" and name in ("mean", "blur"):
        raise ValueError(
            f"baseline: {name!r} is defined for images; for a {kind} input pass a number or "
            "background rows (R, *x.shape) whose expectation is used"
        )
    # Images reduce per channel over the spatial axes; other inputs over all elements.
    axes = (-2, -1) if kind == "image" else tuple(range(arr.ndim))
    if name == "mean":
        return np.broadcast_to(arr.mean(axis=axes, keepdims=True), arr.shape)
    if name == "blur":
        from scipy.ndimage import gaussian_filter

        sigma = min(arr.shape[-2:]) / 16 if sigma is None else sigma
        sigma = check_number(sigma, name="sigma", low=0, low_open=True, what="number of pixels")
        spatial = [0.0] * (arr.ndim - 2) + [sigma] * 2  # never blur across channels
        # scipy's kernel reaches 4 sigma; past twice the image side it only adds copies of the
        # border (mode "nearest"), so it is cut there: any sigma runs in memory of the image.
        radius = [0] * (arr.ndim - 2) + [min(int(4.0 * sigma + 0.5), 2 * s) for s in arr.shape[-2:]]
        return gaussian_filter(arr, sigma=spatial, mode="nearest", radius=radius)
    if kind == "text":
        raise ValueError("baseline: 'noise' is not defined for token ids; pass a token id")
    rng = np.random.default_rng(seed)
    if distribution == "uniform":
        low, high = arr.min(axis=axes, keepdims=True), arr.max(axis=axes, keepdims=True)
        return low + (high - low) * rng.random(arr.shape)
    if distribution == "normal":
        mean, std = arr.mean(axis=axes, keepdims=True), arr.std(axis=axes, keepdims=True)
        return mean + std * rng.standard_normal(arr.shape)
    raise ValueError(f"distribution: expected 'uniform' or 'normal', got {distribution!r}")
