"""Input checks shared by every public entry point.

Every message names the argument, what was expected and what came, so a user can fix the call
without reading xaikit's source (the scikit-learn habit of one validation module).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def describe(value: Any) -> str:
    """A short description of a value for error messages: type, shape and dtype when it has them."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype} on {value.device}"
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} and dtype {value.dtype}"
    return f"{type(value).__name__} {value!r}"[:200]


def check_batch(x: Any, *, name: str = "x", item_shape: tuple[int, ...] | None = None):
    """Check a batch of inputs with a leading item axis; return it as an array or a tensor.

    Tensors stay tensors (on their device, no copy); anything else becomes a NumPy array.
    Rejects non-numeric data, an empty batch, NaN/inf, and a per-item shape other than
    ``item_shape`` when one is given.
    """
    if isinstance(x, torch.Tensor):
        arr = x.detach()
        if arr.dtype == torch.bool or arr.dtype.is_complex:
            raise TypeError(f"{name}: expected real numbers, got {describe(x)}")
    else:
        if isinstance(x, (str, bytes)) or x is None:
            raise TypeError(f"{name}: expected an array or tensor of numbers, got {describe(x)}")
        try:
            arr = np.asarray(x)
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"{name}: expected an array or tensor of numbers, got {describe(x)}"
            ) from err
        if arr.dtype == bool or arr.dtype.kind not in "fiu":
            raise TypeError(
                f"{name}: expected real numbers (float or integer dtype), got {describe(arr)}"
            )
    if arr.ndim < 1:
        raise ValueError(f"{name}: expected a batch with a leading item axis, got a scalar")
    if arr.shape[0] == 0:
        raise ValueError(
            f"{name}: expected at least one item, got an empty batch {tuple(arr.shape)}"
        )
    if item_shape is not None and tuple(arr.shape[1:]) != tuple(item_shape):
        raise ValueError(
            f"{name}: expected items of shape {tuple(item_shape)} (batch shape "
            f"(N, {', '.join(map(str, item_shape))})), got shape {tuple(arr.shape)}"
        )
    check_finite(arr, name=name)
    return arr


def check_finite(arr, *, name: str) -> None:
    """Raise a ValueError naming ``name`` when ``arr`` holds NaN or infinity."""
    if isinstance(arr, torch.Tensor):
        if arr.dtype.is_floating_point and not bool(torch.isfinite(arr.sum())):
            bad = int((~torch.isfinite(arr)).sum())
            if bad:
                raise ValueError(f"{name}: expected finite values, got {bad} NaN or infinite")
    elif arr.dtype.kind == "f" and not np.isfinite(np.add.reduce(arr, axis=None)):
        # The sum is a cheap first test; count only when it is not finite (it may overflow).
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if bad:
            raise ValueError(f"{name}: expected finite values, got {bad} NaN or infinite")


def check_targets(
    target: Any, *, n: int, n_classes: int | None, name: str = "target"
) -> np.ndarray:
    """Turn ``target`` (an int, or one int per item) into an int64 array of length ``n``.

    The range [0, n_classes) is checked when ``n_classes`` is known.
    """
    if isinstance(target, torch.Tensor):
        target = target.detach().cpu().numpy()
    if isinstance(target, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a class index (int), got {describe(target)}")
    if isinstance(target, (int, np.integer)):
        arr = np.full(n, int(target), dtype=np.int64)
    elif isinstance(target, (Sequence, np.ndarray)) and not isinstance(target, (str, bytes)):
        arr = np.asarray(target)
        if arr.ndim == 0:
            arr = np.full(n, arr.item())
        if arr.dtype.kind not in "iu":
            raise TypeError(f"{name}: expected integer class indices, got {describe(arr)}")
        if arr.shape != (n,):
            raise ValueError(
                f"{name}: expected one class index per item ({n}) or a single int, "
                f"got shape {arr.shape}"
            )
        arr = arr.astype(np.int64)
    else:
        raise TypeError(
            f"{name}: expected a class index (int) or a sequence of them, got {describe(target)}"
        )
    if n_classes is None:
        if (arr < 0).any():
            raise ValueError(f"{name}: expected non-negative class indices, got {arr.min()}")
        return arr
    bad = (arr < 0) | (arr >= n_classes)
    if bad.any():
        raise ValueError(
            f"{name}: expected class indices in [0, {n_classes}) for a model with {n_classes} "
            f"outputs, got {arr[bad][0]}"
        )
    return arr


def check_positive_int(value: Any, *, name: str) -> int:
    """Return ``value`` as an int >= 1, or raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected a positive int, got {describe(value)}")
    if value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value}")
    return int(value)


def check_choice(value: Any, *, name: str, choices: Sequence[str]) -> str:
    """Return ``value`` when it is one of ``choices``, else raise naming ``name``."""
    if value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name}: expected one of {options}, got {value!r}")
    return value


def check_nonnegative_number(value: Any, *, name: str) -> float:
    """Return ``value`` as a finite float >= 0, or raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a number >= 0, got {describe(value)}")
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
    return float(value)
