"""Input handling shared by every metric: one input, its attributions, the explained target.

Every metric takes ``(model, x, explanation)`` where ``explanation`` is an
:class:`~xaikit.Explanation` or a plain array of attributions. This module turns them into
NumPy arrays of known shapes, the per-pixel relevance map, and explain functions, so each
metric file only says what it measures.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from xaikit._validation import check_finite, check_targets, describe
from xaikit.explanation import Explanation
from xaikit.model import Model, as_model

ExplainFn = Callable[[Any, np.ndarray, np.ndarray], Any]


def as_array(value: Any, *, name: str) -> np.ndarray:
    """``value`` (array, tensor or list) as a float NumPy array, checked for NaN/inf."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name}: expected an array of numbers, got {describe(value)}") from err
    if arr.dtype == bool or arr.dtype.kind not in "fiu":
        raise TypeError(f"{name}: expected an array of numbers, got {describe(arr)}")
    check_finite(arr, name=name)
    return arr


def check_same_input(x: np.ndarray, explanation: Any) -> None:
    """Refuse to score an Explanation on another input than the one it explains.

    Scoring X[0]'s map on X[1] gives plausible numbers that mean nothing, so it is an error;
    a plain array of attributions carries no input and is taken as given.
    """
    if not isinstance(explanation, Explanation) or explanation.x is None:
        return
    own = np.asarray(explanation.x, dtype=np.float64)
    given = np.asarray(x, dtype=np.float64)
    if given.shape != own.shape:
        raise ValueError(
            f"x: expected the explained input (shape {own.shape}), got shape {given.shape}; "
            "pass x=None to use the explanation's own input"
        )
    # float32 and float64 copies of the same input agree to rounding; another input does not
    scale = float(np.abs(own).max(initial=0.0))
    if not np.allclose(given, own, rtol=1e-6, atol=1e-6 * max(scale, 1.0)):
        changed = int(np.count_nonzero(~np.isclose(given, own, rtol=1e-6, atol=1e-6)))
        raise ValueError(
            f"x: differs from the input the explanation was computed on ({changed} of "
            f"{own.size} values differ); explain this input first, or pass x=None to use "
            "the explanation's own input"
        )


def one_input(model: Any, x: Any, explanation: Any, target: Any):
    """Check one input and its attributions; return ``(Model, x, values, target)``.

    ``values`` must have the shape of ``x``; for a ``(C, H, W)`` image a ``(H, W)`` map (one
    value per pixel, e.g. Grad-CAM) is accepted too. ``target=None`` takes the explanation's
    target, else the model's predicted class.
    """
    m: Model = as_model(model)
    x = as_array(x, name="x")
    if x.ndim < 1:
        raise ValueError("x: expected one input (C, H, W), (H, W) or (F,), got a scalar")
    if isinstance(explanation, Explanation):
        if explanation.batch:
            raise ValueError(
                "explanation: expected the explanation of one input, got a batch; pass e[i], "
                "or use xk.evaluate, which scores every item"
            )
        check_same_input(x, explanation)
        values = np.asarray(explanation.values, dtype=np.float64)
        if target is None:
            target = explanation.target
    else:
        values = as_array(explanation, name="explanation").astype(np.float64)
    spatial_ok = x.ndim == 3 and values.shape == x.shape[1:]
    if values.shape != x.shape and not spatial_ok:
        also = f" or {x.shape[1:]}" if x.ndim == 3 else ""
        raise ValueError(
            f"explanation: expected attributions of the input's shape {x.shape}{also}, got "
            f"shape {values.shape}"
        )
    if target is None:
        target = int(m.scores(x[None]).argmax(axis=1)[0])
    elif isinstance(target, (bool, np.bool_)) or np.ndim(target) != 0:
        raise TypeError(f"target: expected one class index (int), got {describe(target)}")
    else:
        target = int(check_targets(int(target), n=1, n_classes=None)[0])
    return m, x, values, target


def pixel_map(values: np.ndarray, x: np.ndarray) -> np.ndarray:
    """One relevance value per pixel: attributions summed over channels for ``(C, H, W)``.

    Pixels are what the faithfulness and localisation metrics remove or count (all channels of a
    pixel together, as Petsiuk et al. 2018 and Arras et al. 2022 do); a 2-D image or a 1-D input
    keeps its shape.
    """
    if x.ndim == 3 and values.ndim == 3:
        return values.sum(axis=0)
    return values


def check_mask(mask: Any, shape: tuple[int, ...], *, name: str = "mask") -> np.ndarray:
    """A boolean ground-truth mask of ``shape``; a region ``(y0, x0, y1, x1)`` is drawn as one.

    A region uses the convention of ``xaikit.datasets.WATERMARK_REGION``: rows ``y0:y1`` and
    columns ``x0:x1`` (end excluded).
    """
    if isinstance(mask, tuple) and len(mask) == 4 and len(shape) == 2:
        y0, x0, y1, x1 = (int(v) for v in mask)
        if not (0 <= y0 < y1 <= shape[0] and 0 <= x0 < x1 <= shape[1]):
            raise ValueError(
                f"{name}: region (y0, x0, y1, x1) must lie inside the image {shape}, got {mask}"
            )
        out = np.zeros(shape, dtype=bool)
        out[y0:y1, x0:x1] = True
        return out
    arr = as_array(mask, name=name) if not isinstance(mask, np.ndarray) else mask
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name}: expected a boolean array, got {describe(arr)}")
    if arr.shape != shape:
        raise ValueError(
            f"{name}: expected a mask of shape {shape} (one per pixel), got {arr.shape}"
        )
    arr = arr.astype(bool)
    if not arr.any():
        raise ValueError(f"{name}: the mask is empty (no pixel marked as ground truth)")
    return arr


def explainer(method: str | ExplainFn, params: dict[str, Any]) -> tuple[str, ExplainFn]:
    """A name and a function ``(model, x (N, ...), targets (N,)) -> attributions (N, ...)``.

    A method name goes through ``xk.explain(batch=True)``; a callable is used as it is (it is
    how a model-blind "explanation" such as an edge detector is checked).
    """
    if callable(method):
        if params:
            raise TypeError(
                f"{sorted(params)[0]}: method parameters apply to a method name, not to a "
                "callable explain function (bind them in the callable)"
            )
        fn = method

        def call(model, xb, targets):
            out = fn(model, xb, targets)
            if isinstance(out, Explanation):
                out = out.values
            return as_array(out, name="method").astype(np.float64)

        return getattr(method, "__name__", "callable"), call
    if not isinstance(method, str):
        raise TypeError(f"method: expected a method name or a callable, got {describe(method)}")
    from xaikit.attribution import explain, methods

    if method not in methods():
        raise ValueError(f"method: expected one of {sorted(methods())}, got {method!r}")

    def call(model, xb, targets):
        e = explain(model, xb, method=method, target=targets, batch=True, **params)
        return np.asarray(e.values, dtype=np.float64)

    return method, call


def re_explaining(
    function: Callable[..., Any], *, score: Callable[[Any], float] = float
) -> Callable[..., float]:
    """A metric ``(model, x, explanation, *, target=None, ...)`` from a robustness function
    ``(model, x, method, *, target=None, ..., explanation=None, **method_params)``.

    Robustness re-explains perturbed inputs; the metric does so with the explanation's own
    method and parameters, so it needs an :class:`Explanation`. Its options are the function's
    keyword-only parameters but ``explanation``: the signature is derived, not written again.
    """

    def run(model: Any, x: Any, explanation: Any, **options: Any) -> float:
        if not isinstance(explanation, Explanation):
            raise TypeError(
                "explanation: robustness metrics re-run the method, so they need an Explanation "
                f"(from xk.explain), got {describe(explanation)}"
            )
        from xaikit.attribution import methods

        known = methods()
        method = explanation.method
        if method not in known:
            raise ValueError(f"explanation: method {method!r} is not a registered method")
        params = {k: v for k, v in explanation.params.items() if k in known[method]["params"]}
        if not params:
            return score(function(model, x, method, explanation=explanation, **options))
        # The method's parameters are bound in a callable, never passed as keywords: a method's
        # ``samples`` or ``seed`` would otherwise become the metric's own (a silently wrong
        # number of perturbations) or collide with the user's metric options.
        _, bound = explainer(method, params)
        bound.__name__ = method
        return score(function(model, x, bound, explanation=explanation, **options))

    keyword = [
        p
        for p in inspect.signature(function).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "explanation"
    ]
    head = [
        inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        for name in ("model", "x", "explanation")
    ]
    run.__signature__ = inspect.Signature(head + keyword)  # type: ignore[attr-defined]
    run.__name__ = function.__name__
    run.__doc__ = function.__doc__
    return run


def check_explained(values: np.ndarray, xb: np.ndarray, *, name: str = "method") -> np.ndarray:
    """Check that an explain function returned one attribution array per item."""
    ok = values.shape == xb.shape or (xb.ndim == 4 and values.shape == (xb.shape[0], *xb.shape[2:]))
    if not ok:
        raise ValueError(
            f"{name}: expected attributions of shape {xb.shape} from the explain function, got "
            f"{values.shape}"
        )
    return values


def as_batch(x: Any, *, batch: bool) -> np.ndarray:
    """``x`` with a leading item axis (added for one input)."""
    arr = as_array(x, name="x")
    return arr if batch else arr[None]


def input_scores(model: Model, x: np.ndarray, chunks: Iterable[np.ndarray]) -> np.ndarray:
    """Scores ``(n, K)`` of whole inputs built chunk by chunk, through the perturbation engine.

    ROAD's imputed images and infidelity's ``x - I`` are not one baseline blended with ``x``,
    so they cannot be expressed as keep-masks of ``x``. The engine blends
    ``baseline + mask * (x - baseline)``; with ``x = 1`` and ``baseline = 0`` that is ``mask``
    (exactly for a callable model, to one float32 rounding, ~6e-8, through ``torch.lerp``), so a
    chunk of inputs given as "masks" of the input's full shape streams through
    the same engine (one chunk in memory, the model's batch size, no second NaN scan).
    """
    from xaikit.attribution.perturbation import perturbation_scores

    ones = np.ones(x.shape, dtype=np.float32)
    return perturbation_scores(model, ones, chunks, baseline=0.0)


def input_score_chunks(model: Model, x: np.ndarray, chunks: Iterable[np.ndarray]):
    """:func:`input_scores` chunk by chunk, for metrics that reduce the scores as they come."""
    from xaikit.attribution.perturbation import perturbation_score_chunks

    ones = np.ones(x.shape, dtype=np.float32)
    return perturbation_score_chunks(model, ones, chunks, baseline=0.0)
