"""The perturbation engine: the model's scores on many masked copies of one input.

Occlusion, LIME, KernelSHAP, RISE and the deletion/insertion metrics differ only in which masks
they ask for and how they turn scores into attributions. The engine takes one input ``x``, a
baseline (what "removed" means), and an iterable of mask chunks, and streams the masked inputs
through :meth:`Model.scores` chunk by chunk: at most one chunk of inputs exists at a time, so
10,000 masks of a 3x224x224 image never become 10,000 images.

A mask is 1 where the input is kept and 0 where it is replaced by the baseline (values in
between blend, as RISE's soft masks do): ``x_masked = baseline + mask * (x - baseline)``.
Masks come either per component (shape ``(b, M)`` with a ``components`` map that gives every
input element its component id) or per element (shape ``(b, *s)`` where ``s`` is the input's
shape or its trailing spatial shape; channels share a mask).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch

from xaikit._torch import attribution_dtype
from xaikit.model import Model

# Inputs built per chunk (bytes). Large enough that each chunk fills the model's best batch,
# small enough that memory stays bounded whatever the number of masks.
CHUNK_BYTES = 64 * 2**20


def values_dtype(model: Model, x: np.ndarray) -> type:
    """NumPy dtype of a perturbation map: float64 for a float64 PyTorch model, or for a NumPy
    callable given float64 inputs (as LIME and KernelSHAP return), else float32."""
    if model.is_torch:
        float64 = attribution_dtype(model.module) == torch.float64
    else:
        float64 = np.asarray(x).dtype == np.float64
    return np.float64 if float64 else np.float32


def chunk_size(x: np.ndarray, *, n_background: int = 1, budget: int = CHUNK_BYTES) -> int:
    """How many masks to build at once for input ``x`` within ``budget`` bytes of inputs."""
    item = max(1, x.size * 4 * n_background)
    return max(1, budget // item)


def chunk_sizes(total: int, size: int) -> Iterator[int]:
    """``total`` split into chunks of ``size`` (the last fewer), one at a time."""
    return (min(size, total - start) for start in range(0, total, size))


def perturbation_scores(
    model: Model,
    x: np.ndarray,
    masks: Iterable[np.ndarray],
    *,
    baseline: np.ndarray | float,
    components: np.ndarray | None = None,
    background: bool = False,
) -> np.ndarray:
    """Scores ``(n_masks, K)`` of ``model`` on ``x`` masked by each mask in turn.

    Parameters
    ----------
    model : Model
    x : array
        One input (no batch axis).
    masks : iterable of arrays
        Chunks of masks, ``(b, M)`` with ``components`` or ``(b, *s)`` per element.
    baseline : float or array
        The replacement values: a number, an array of ``x``'s shape, or with
        ``background=True`` an array ``(R, *x.shape)`` of background rows whose scores are
        averaged (the expectation over the background, as KernelSHAP defines removal).
    components : int array, optional
        Component id of every element of ``x`` (shape of ``x``, or of its trailing axes).
    """
    outputs = list(
        perturbation_score_chunks(
            model, x, masks, baseline=baseline, components=components, background=background
        )
    )
    if not outputs:
        raise ValueError("masks: expected at least one mask, got none")
    return np.concatenate(outputs)


def perturbation_score_chunks(
    model: Model,
    x: np.ndarray,
    masks: Iterable[np.ndarray],
    *,
    baseline: np.ndarray | float,
    components: np.ndarray | None = None,
    background: bool = False,
) -> Iterator[np.ndarray]:
    """:func:`perturbation_scores` chunk by chunk: the scores of each chunk of masks as it is
    run, for callers that reduce them as they come (memory of one chunk whatever the count)."""
    on_device = model.is_torch
    integer_ids = np.asarray(x).dtype.kind in "iu"
    x_t, base_t = _prepare(model, x, baseline, background=background)
    comp_index = None
    if components is not None:
        comp_index = _component_index(components, x.shape)
        if on_device:  # the map itself, broadcast over the channels by the blend
            comp_index = torch.as_tensor(np.asarray(components, dtype=np.int64), device=x_t.device)
    for chunk in masks:
        chunk = np.asarray(chunk)
        if chunk.ndim < 2 or len(chunk) == 0:
            continue
        if on_device:
            inputs = _masked_tensors(x_t, base_t, chunk, comp_index, background=background)
        else:
            inputs = _masked_inputs(x_t, base_t, chunk, comp_index, background=background)
        if integer_ids:  # token ids: a removed token takes the baseline id, never a blend
            inputs = inputs.round().long() if on_device else inputs.round().astype(x.dtype)
        # x and the baseline were checked; their blends need no second NaN scan per chunk.
        scores = model.scores(inputs, check=False)
        if background:  # average over the background rows of each mask
            scores = scores.reshape(len(chunk), -1, scores.shape[1]).mean(axis=1)
        yield scores


def batched(masks: np.ndarray, size: int) -> Iterator[np.ndarray]:
    """Yield ``masks`` in chunks of ``size`` rows (views, no copies)."""
    for start in range(0, len(masks), size):
        yield masks[start : start + size]


def rechunk(chunks: Iterable[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """The rows of ``chunks`` regrouped into chunks of exactly ``size`` rows (the last fewer):
    what :func:`batched` gives on their concatenation, without building it."""
    pending: list[np.ndarray] = []
    held = 0
    for chunk in chunks:
        while len(chunk):
            take = chunk[: size - held]
            chunk = chunk[len(take) :]
            pending.append(take)
            held += len(take)
            if held == size:
                yield pending[0] if len(pending) == 1 else np.concatenate(pending)
                pending, held = [], 0
    if held:
        yield pending[0] if len(pending) == 1 else np.concatenate(pending)


def _prepare(model: Model, x: np.ndarray, baseline, *, background: bool):
    """``x`` and the baseline as float tensors on the model's device (or float arrays)."""
    x = np.asarray(x)
    base = np.asarray(baseline, dtype=np.float64)
    expected = (x.ndim + 1) if background else x.ndim
    if base.ndim not in (0, expected) or (base.ndim and base.shape[-x.ndim :] != x.shape):
        want = f"(R, {', '.join(map(str, x.shape))})" if background else f"{x.shape} or a number"
        raise ValueError(f"baseline: expected shape {want}, got shape {base.shape}")
    if model.is_torch:
        dtype = attribution_dtype(model.module)
        x_t = torch.as_tensor(x, dtype=dtype, device=model.device)
        base_t = torch.as_tensor(base, dtype=dtype, device=model.device)
        return x_t, base_t
    dtype = np.float64 if x.dtype == np.float64 else np.float32
    return x.astype(dtype, copy=False), base.astype(dtype, copy=False)


def _component_index(components: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Flat component id of every element of an input of ``shape`` (channels share ids)."""
    components = np.asarray(components)
    if components.shape != shape[len(shape) - components.ndim :]:
        raise ValueError(
            f"components: expected the input's shape {shape} or its trailing axes, got shape "
            f"{components.shape}"
        )
    return np.broadcast_to(components, shape).reshape(-1).astype(np.int64)


def _masked_tensors(x, base, chunk: np.ndarray, components, *, background: bool):
    """One chunk of masked inputs as tensors: one broadcast ``lerp`` writes them.

    The keep-masks stay at the size of a component map or spatial mask ``(b, 1, H, W)``, and
    the blend broadcasts them over the channels (and background rows): no ``(b, C, H, W)``
    mask is built (RGB: a third of the memory traffic), and the values are those of the
    element-wise blend, bit for bit.
    """
    mask = torch.as_tensor(chunk, device=x.device)
    b = len(chunk)
    if components is not None:
        shape = tuple(components.shape)
        keep = torch.index_select(mask, 1, components.reshape(-1))  # each element's component
    else:
        shape = chunk.shape[1:]
        if shape != tuple(x.shape[x.ndim - len(shape) :]):
            raise ValueError(
                f"masks: expected masks of shape (b, "
                f"{', '.join(map(str, x.shape[x.ndim - len(shape) :]))}), got {chunk.shape}"
            )
        keep = mask
    keep = keep.reshape(b, *([1] * (x.ndim - len(shape))), *shape).to(x.dtype)
    if background:  # (b, R, *x.shape): every mask on every background row
        out = torch.lerp(base[None], x[None, None], keep[:, None])
        return out.reshape(b * base.shape[0], *x.shape)
    return torch.lerp(base, x, keep)  # base is a number or of x's shape: broadcasts


def _masked_inputs(x, base, chunk: np.ndarray, comp_index, *, background: bool):
    """One chunk of masked inputs as arrays (a NumPy callable's), vectorised over the masks."""
    b = len(chunk)
    if comp_index is not None:
        keep = chunk[:, comp_index]  # (b, prod(shape)): each element takes its component's bit
    else:
        spatial = chunk.shape[1:]
        lead = x.ndim - len(spatial)
        if spatial != tuple(x.shape[lead:]):
            raise ValueError(
                f"masks: expected masks of shape (b, {', '.join(map(str, x.shape[lead:]))}), "
                f"got {chunk.shape}"
            )
        keep = np.broadcast_to(chunk.reshape(b, *([1] * lead), *spatial), (b, *x.shape))
        keep = keep.reshape(b, -1)
    keep = keep.astype(x.dtype, copy=False)
    flat_x = x.reshape(1, -1)
    if background:
        flat_base = base.reshape(1, base.shape[0], -1)  # (1, R, P)
        out = _blend(flat_base, flat_x[:, None, :], keep[:, None, :])  # (b, R, P)
        return out.reshape(b * base.shape[0], *x.shape)
    flat_base = base.reshape(1, -1) if base.ndim else base
    return _blend(flat_base, flat_x, keep).reshape(b, *x.shape)


def _blend(base, x, keep):
    """base where keep is 0, x where it is 1, exactly; linear in between (RISE's soft masks).

    ``keep * x + (1 - keep) * base`` with one array of the output's size, C-ordered so that the
    caller's reshape is a view (a broadcast product may come out in another order).
    """
    shape = np.broadcast_shapes(np.shape(base), np.shape(x), np.shape(keep))
    out = np.multiply(1 - keep, base, out=np.empty(shape, np.result_type(keep, x, base)))
    out += keep * x
    return out
