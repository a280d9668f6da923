"""Batch sizes: chosen once per model and kind of call by measuring throughput, then kept.

:class:`~xaikit.Model` asks :func:`batch_size_for` before it chunks a call. The first time a
model meets a kind of call (scores, gradients, a layer's gradients) with a given item shape,
dtype and device, candidate sizes are timed on copies of the call's first item, whose outputs
are discarded; the choice is remembered on the model object (weak keys: the memo never keeps a
user's model alive) and never changes afterwards. Why copies rather than the real inputs:
float results depend in their last bits on the batch size, so if the search consumed real
inputs, a repeated call would batch differently and not give bit-identical results.

The public surface is two functions: :func:`chosen_batch_sizes` (what was chosen) and
:func:`preset_batch_sizes` (install sizes chosen elsewhere, e.g. by the first attempt of an
audit, so that a resumed run and Ray actors batch exactly alike).
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

# Batch sizes tried by the search, smallest first, each timed on copies of an item.
CPU_CANDIDATES = (8, 16, 32, 64, 128, 256, 512, 1024)
# A NumPy callable (scikit-learn, XGBoost) pays a fixed cost per call: larger batches keep paying
FUNCTION_CANDIDATES = (*CPU_CANDIDATES, 4096, 16384, 65536)
GPU_CANDIDATES = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
MAX_BATCH_BYTES = 512 * 2**20  # never try a batch whose inputs alone exceed this
SEARCH_SECONDS = 2.0  # the search stops trying larger sizes after this long
# Each timing covers at least this long (whole batches): on a busy machine a run shorter than a
# scheduler time slice often escapes preemption and makes small batches look fast.
MEASURE_SECONDS = 0.02
GROWTH_STOP = 1.5  # CPU: stop growing past this many times the best per-item time so far
MIN_TRIED = 4  # sizes always tried (within the time budget) before growth may stop
SMALL_CALL = CPU_CANDIDATES[0]  # calls of at most this many items run as one batch, no search

# (call kind, item shape, dtype, device) -> size, per model object
_MEMO: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

Key = tuple[str, tuple, str, str]


def _owner(model: Any) -> Any:
    """The object that the sizes belong to: the module, or the estimator of a predict_proba."""
    if hasattr(model, "batch_owner"):  # an xaikit Model: its module or function
        model = model.batch_owner
    return getattr(model, "__self__", model)  # a bound predict_proba: key on its estimator


def memo_of(model: Any) -> dict:
    """The live memo of ``model`` (kept on the Model when the object takes no weak reference).

    For :class:`~xaikit.Model` itself; others use the two functions below."""
    try:
        return _MEMO.setdefault(_owner(model), {})
    except TypeError:
        holder = model if hasattr(model, "batch_owner") else _owner(model)
        return holder.__dict__.setdefault("_batch_size_memo", {})


def chosen_batch_sizes(model: Any) -> dict[Key, int]:
    """The batch sizes chosen so far for ``model`` (an ``nn.Module``, callable or ``Model``).

    Keys are ``(call kind, item shape, dtype, device)``, e.g.
    ``("gradients", (1, 28, 28), "float32", "cpu")``.
    """
    return dict(memo_of(model))


def preset_batch_sizes(model: Any, sizes: dict[Key, int]) -> None:
    """Install batch sizes for ``model`` before any call, so that no search runs for them.

    A size already chosen for a key is kept: a choice never changes once made.
    """
    memo = memo_of(model)
    for key, size in sizes.items():
        kind, shape, dtype, device = key
        memo.setdefault((str(kind), tuple(shape), str(dtype), str(device)), int(size))


def call_key(x: Any, kind: str, device: torch.device) -> Key:
    """The memo key of a call: token sequences of any length share one key."""
    integer = getattr(x.dtype, "is_floating_point", None) is False or (
        isinstance(x, np.ndarray) and x.dtype.kind in "iu"
    )
    # Token sequences change length from sentence to sentence; one search serves them all
    # (on a transformer a single candidate can take seconds).
    shape = ("sequence",) if integer and x.ndim == 2 else tuple(x.shape[1:])
    return (kind, shape, str(x.dtype), str(device))


def search_batch_size(
    first: Any,
    step: Callable[[Any, np.ndarray], Any],
    *,
    device: torch.device,
    numpy_function: bool,
) -> tuple[int, dict[int, float]]:
    """The batch size of best throughput for ``step``, timed on copies of ``first`` (one item).

    CPU: the smallest size within 3% of the best (timings are noisy, smaller batches stay in
    cache). GPU: the largest size that keeps the throughput (until memory runs out). Returns
    the size and the seconds per item measured for each tried size.
    """
    on_gpu = device.type == "cuda"
    item_bytes = (
        first.nbytes if isinstance(first, np.ndarray) else first.numel() * first.element_size()
    )
    pool = GPU_CANDIDATES if on_gpu else FUNCTION_CANDIDATES if numpy_function else CPU_CANDIDATES
    candidates = [c for c in pool if c * max(1, item_bytes) <= MAX_BATCH_BYTES] or [1]

    def copies(size):
        if isinstance(first, torch.Tensor):
            return first.expand(size, *first.shape[1:]).contiguous()
        return np.ascontiguousarray(np.broadcast_to(first, (size, *first.shape[1:])))

    def seconds_per_item(size: int) -> float:
        """One timing window of whole batches of ``size`` (copies of item 0)."""
        batch, rows = copies(size), np.zeros(size, dtype=np.int64)
        start, done = time.perf_counter(), 0
        while True:
            step(batch, rows)
            if on_gpu:
                torch.cuda.synchronize(device)
            done += size
            elapsed = time.perf_counter() - start
            if elapsed >= MEASURE_SECONDS:
                return elapsed / done

    timings: dict[int, float] = {}
    began = time.perf_counter()
    step(copies(candidates[0]), np.zeros(candidates[0], dtype=np.int64))  # warm-up
    # Growth: one window per size until clearly slower (a GPU: until memory runs out).
    for size in candidates:
        try:
            timings[size] = seconds_per_item(size)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            break  # the previous size is the largest that fits
        slower = timings[size] > (1.10 if on_gpu else GROWTH_STOP) * min(timings.values())
        if slower and len(timings) >= MIN_TRIED:  # one noisy window must not end the growth
            break
        if time.perf_counter() - began > SEARCH_SECONDS:
            break
    # Two more rounds over the tried sizes, backwards then forwards, each size's best window
    # kept: a busy spell on a shared machine then slows every size, not the ones it hit.
    for order in (sorted(timings, reverse=True), sorted(timings)):
        for size in order:
            if time.perf_counter() - began > 1.5 * SEARCH_SECONDS:
                break
            timings[size] = min(timings[size], seconds_per_item(size))
    best = min(timings.values())
    near_best = [c for c, t in timings.items() if t <= 1.03 * best]
    # CPU: a measured 256 was 25% slower than 128 on the MNIST CNN's gradients in a later,
    # quieter run; with a 5% margin, 64 was often kept where 128 is 8-10% faster.
    return (max(near_best) if on_gpu else min(near_best)), timings
