"""Input checks shared by every public entry point.

Every message names the argument, what was expected and what came, so a user can fix the call
without reading xaikit's source (the scikit-learn habit of one validation module).
"""

from __future__ import annotations

import os
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
    if isinstance(value, dict):  # its keys say more than its (possibly huge) contents
        return f"{type(value).__name__} with keys {list(value)[:10]}"[:200]
    return f"{type(value).__name__} {value!r}"[:200]


def one_line(err: BaseException, *, with_type: bool = False) -> str:
    """An exception's message on one line (whitespace collapsed), for one-line errors.

    An empty message gives the exception's type name; ``with_type`` puts the type first
    (``"OSError: ..."``), for messages that quote a failure from code xaikit does not own.
    """
    text = " ".join(str(err).split())
    if not text:
        return type(err).__name__
    return f"{type(err).__name__}: {text}" if with_type else text


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
        if isinstance(x, (torch.utils.data.Dataset, torch.utils.data.DataLoader)):
            raise TypeError(
                f"{name}: expected an array or tensor of numbers, got a {type(x).__name__}; "
                "stack its inputs into one array (xk.activations and xk.audit take a Dataset "
                "or DataLoader themselves)"
            )
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
        # Any NumPy layout is accepted (flipped views have negative strides, which torch
        # refuses): a copy is made only when the array is not C-contiguous.
        arr = np.ascontiguousarray(arr)
    if arr.ndim < 1:
        raise ValueError(f"{name}: expected a batch with a leading item axis, got a scalar")
    if arr.shape[0] == 0:
        raise ValueError(
            f"{name}: expected at least one item, got an empty batch {tuple(arr.shape)}"
        )
    if 0 in arr.shape[1:]:
        raise ValueError(
            f"{name}: expected items with no empty axis, got batch shape {tuple(arr.shape)}"
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
        _check_index_fits(int(target), name=name, n_classes=n_classes)
        arr = np.full(n, int(target), dtype=np.int64)
    elif isinstance(target, (Sequence, np.ndarray)) and not isinstance(target, (str, bytes)):
        arr = np.asarray(target)
        if arr.ndim == 0:
            arr = np.full(n, arr.item())
        if (
            arr.dtype == object
            and arr.size
            and all(isinstance(t, int) and not isinstance(t, bool) for t in arr.ravel())
        ):  # Python ints beyond 64 bits
            for t in arr.ravel():
                _check_index_fits(t, name=name, n_classes=n_classes)
        if arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
            _check_index_fits(int(arr.max()), name=name, n_classes=n_classes)
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


def _check_index_fits(value: int, *, name: str, n_classes: int | None) -> None:
    """Refuse a class index too large for int64 with the range message, not an OverflowError."""
    if not -(2**63) <= value < 2**63:
        where = f"[0, {n_classes})" if n_classes is not None else "int64's range"
        raise ValueError(f"{name}: expected class indices in {where}, got {value}")


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


#: Largest count (samples, steps, repeats) accepted: ~1.1e12. Far beyond any run that ends
#: (years of model calls), and small enough that counts times items stay within int64.
MAX_COUNT = 2**40


def check_count(value: Any, *, name: str, minimum: int = 1) -> int:
    """Return a count (``samples``, ``steps``, ...) as an int in ``[minimum, MAX_COUNT]``."""
    value = check_int(value, name=name, minimum=minimum)
    if value > MAX_COUNT:
        raise ValueError(
            f"{name}: expected at most 2**40 ({MAX_COUNT:,}; more would run for years and "
            f"overflow 64-bit indices), got {value:,}"
        )
    return value


def check_seed(value: Any, *, name: str = "seed", allow_none: bool = True, bits: int = 63):
    """Return a seed: an int in ``[0, 2**bits)`` (NumPy and torch take 63 bits, scikit-learn
    32), or ``None`` where a fresh seed is allowed."""
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        kind = "an int or None" if allow_none else "an int"
        raise TypeError(f"{name}: expected {kind}, got {describe(value)}")
    if not 0 <= value < 2**bits:
        raise ValueError(f"{name}: expected an int in [0, 2**{bits}), got {value}")
    return int(value)


def check_int(value: Any, *, name: str, minimum: int = 0) -> int:
    """Return ``value`` as an int >= ``minimum``; a bool or a float is a TypeError."""
    wanted = "a positive int" if minimum == 1 else f"an int >= {minimum}"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected {wanted}, got {describe(value)}")
    if value < minimum:
        raise ValueError(f"{name}: expected {wanted}, got {value}")
    return int(value)


def check_number(
    value: Any,
    *,
    name: str,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    what: str = "number",
) -> float:
    """Return ``value`` as a finite float in the given range, or raise naming ``name``.

    A bool, a string or an array is a TypeError; NaN, infinity or a value out of range a
    ValueError. ``low_open``/``high_open`` exclude the bound itself; ``what`` names the kind
    of number in the message (``"share"``: "expected a share in (0, 1)").
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (int, float, np.integer, np.floating)
    ):
        raise TypeError(f"{name}: expected a number, got {describe(value)}")
    number = float(value)
    below = low is not None and (number < low or (low_open and number == low))
    above = high is not None and (number > high or (high_open and number == high))
    if not np.isfinite(number) or below or above:
        raise ValueError(
            f"{name}: expected a {_wanted(low, high, low_open, high_open, what)}, got {value!r}"
        )
    return number


def _wanted(low, high, low_open: bool, high_open: bool, what: str) -> str:
    if low == 0 and high is None:
        return f"positive {what}" if low_open else f"non-negative {what}"
    if low is not None and high is not None:
        return f"{what} in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"finite {what} {'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"finite {what} {'<' if high_open else '<='} {high:g}"
    return f"finite {what}"


# ---------------------------------------------------------------------------------- memory

#: Default of :func:`memory_limit` (bytes): what one call may hold for things that grow with
#: a count (samples, steps). Everything that can stream does, within a chunk; the limit only
#: refuses counts whose results or draws must be held whole.
DEFAULT_MEMORY_LIMIT = 4 * 2**30
_memory_limit: int | None = None


def set_memory_limit(limit: int | str | None) -> None:
    """Set how much memory a call may hold for what grows with a count (bytes).

    Calls whose counts (``samples``, ``steps``, ...) would need more than this for what cannot
    be streamed refuse up front with an estimate, naming the parameter. ``None`` restores the
    default: ``$XAIKIT_MEMORY_LIMIT`` (bytes, or a number with ``KiB``/``MiB``/``GiB``/``TiB``)
    or 4 GiB.
    """
    global _memory_limit
    _memory_limit = None if limit is None else _parse_bytes(limit, name="limit")


def memory_limit() -> int:
    """The memory limit in bytes (see :func:`set_memory_limit`)."""
    if _memory_limit is not None:
        return _memory_limit
    env = os.environ.get("XAIKIT_MEMORY_LIMIT")
    if env:
        return _parse_bytes(env, name="XAIKIT_MEMORY_LIMIT")
    return DEFAULT_MEMORY_LIMIT


_UNITS = {"": 1, "B": 1, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def _parse_bytes(value: Any, *, name: str) -> int:
    if isinstance(value, str):
        text = value.strip().upper().replace(" ", "")
        digits = text.rstrip("KMGTIB")
        unit = text[len(digits) :]
        try:
            number = float(digits)
        except ValueError:
            number = float("nan")
        if unit not in _UNITS or not np.isfinite(number) or number <= 0:
            raise ValueError(
                f"{name}: expected a number of bytes such as 8589934592 or '8GiB', got {value!r}"
            )
        return int(number * _UNITS[unit])
    return check_positive_int(value, name=name)


def format_bytes(n: float) -> str:
    """``n`` bytes as a short human-readable size (``'730 GiB'``)."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} bytes"


def check_memory(count: int, per_item: float, *, name: str, what: str, fixed: float = 0) -> None:
    """Refuse up front when ``count`` items of ``per_item`` bytes exceed the memory limit.

    ``what`` names the items with their size (``"masks of 784 components"``); ``fixed`` is
    memory needed whatever the count. The message gives the estimate, how many items fit,
    and how to raise the limit.
    """
    limit = memory_limit()
    need = fixed + count * per_item
    if need <= limit:
        return
    fits = max(0, int((limit - fixed) // max(per_item, 1)))
    raise ValueError(
        f"{name}: {count:,} {what} need ~{format_bytes(need)}; at most {fits:,} fit in the "
        f"memory limit of {format_bytes(limit)} (lower {name}, or raise the limit with "
        "xaikit.set_memory_limit(...) or $XAIKIT_MEMORY_LIMIT)"
    )
