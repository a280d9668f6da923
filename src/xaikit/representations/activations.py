"""Streaming capture of layer activations over a data set.

Every representation tool (projection, probing, reconstruction) starts here: run the model over
the data once, record what one or more layers output, and keep it. The data can be larger than
memory, so the capture streams: the data is cut into chunks, each chunk is one
``Model.scores`` call with one hook per layer (``Model.layer``, several at once), the chunk's
activations are optionally pooled on the fly (``transform=``, before they leave the device) and
copied into the result. The result lives in memory while it fits in ``memory_budget`` and is
written to disk (``.npy`` files opened as NumPy memmaps) past it, so the process holds one chunk
plus the in-memory result, never both the data's activations and a copy of them.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xaikit._progress import progress_bar
from xaikit._torch import has_embedding
from xaikit._validation import check_choice, check_positive_int, describe
from xaikit.model import Model, as_model
from xaikit.representations._common import resolve_layers
from xaikit.representations._data import Source, gather_targets, to_numpy
from xaikit.representations._store import INPUTS, Store

__all__ = ["DEFAULT_MEMORY_BUDGET", "Activations", "activations"]

#: Bytes of activations held in memory before they go to disk (1 GiB).
DEFAULT_MEMORY_BUDGET = 2**30
POOLS = ("mean", "max")
# One chunk's activations are at most this many bytes, and at most a quarter of the budget, so
# the chunk in flight never dominates the memory that the budget is meant to bound.
_CHUNK_BYTES = 64 * 2**20
# The first chunk is small: it measures how many bytes one item's activations take.
_FIRST_CHUNK = 64
_MAX_CHUNK = 8192


class Activations(Mapping):
    """Recorded activations: a read-only mapping from layer path to an array ``(N, ...)``.

    Attributes
    ----------
    layers : tuple of str
        The recorded layer paths, in the order asked for.
    n : int
        Number of items.
    spilled : bool
        True when the arrays are NumPy memmaps on disk (the result exceeded the memory budget,
        or ``out`` was given).
    paths : dict of str to Path
        The ``.npy`` file of each layer when written to ``out``; empty otherwise (a spill to a
        temporary directory is unlinked at once and freed when the arrays are).
    targets : np.ndarray or None
        The second element of each item when the data yields ``(input, target, ...)`` tuples
        with one scalar target per item (a labelled Dataset or DataLoader), else None.
    """

    def __init__(
        self,
        arrays: dict[str, np.ndarray],
        *,
        spilled: bool,
        paths: dict[str, Path],
        targets: np.ndarray | None,
        inputs: np.ndarray | None = None,
    ) -> None:
        self._arrays = arrays
        self.layers = tuple(arrays)
        self.n = len(next(iter(arrays.values())))
        self.spilled = spilled
        self.paths = paths
        self.targets = targets
        self.inputs = inputs  # the inputs in capture order; internal, for reconstruction

    def __getitem__(self, layer: str) -> np.ndarray:
        try:
            return self._arrays[layer]
        except KeyError:
            raise KeyError(f"layer {layer!r} was not recorded; recorded: {self.layers}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._arrays)

    def __len__(self) -> int:
        return len(self._arrays)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k!r}: {tuple(v.shape)}" for k, v in self._arrays.items())
        where = "on disk" if self.spilled else "in memory"
        return f"Activations({{{shapes}}}, {where})"


def activations(
    model: Any,
    data: Any,
    *,
    layers: str | list[str],
    pool: str | Callable[[torch.Tensor], torch.Tensor] | None = None,
    batch_size: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    out: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
) -> Activations:
    """Record the outputs of one or more layers over a whole data set, in one pass.

    Parameters
    ----------
    model : nn.Module or Model
        A PyTorch model (or an :class:`xaikit.Model` around one).
    data : array, tensor, Dataset or DataLoader
        Inputs with a leading item axis; or a torch ``Dataset``/``DataLoader`` whose items or
        batches are inputs or ``(input, target, ...)`` tuples (the first element is the input;
        a scalar second element is kept as :attr:`Activations.targets`).
    layers : str or list of str
        Layer paths from ``named_modules()``, e.g. ``"conv2"`` or ``["pool1", "fc1"]``. A
        layer must run once per forward with its items on axis 0.
    pool : {"mean", "max"} or callable, optional
        Reduce each item's activation map as it is recorded, so a large data set need not be
        held at full size. ``"mean"``/``"max"`` pool an ``(N, C, *spatial)`` output over its
        spatial axes to ``(N, C)``; for a token model (one with an ``nn.Embedding``) an
        ``(N, L, D)`` sequence output is pooled over its tokens to ``(N, D)``, one vector per
        sequence. A callable receives each batch's tensor and returns ``(N, ...)`` (e.g.
        ``lambda t: t[:, 0]`` for a first token, or a masked mean that skips padding). ``None``
        keeps every position: ``(N, L, D)`` per token, reshaped to ``(N * L, D)`` for one row
        per token.
    batch_size : int, optional
        Items per chunk (and per forward when ``model`` is a raw module). Default: chunks of
        at most 64 MiB of activations (a quarter of ``memory_budget`` when that is smaller),
        each forwarded at the batch size the Model measures as fastest.
    memory_budget : int
        Bytes of activations kept in memory; a larger result goes to ``.npy`` files opened as
        read-only memmaps. Default 1 GiB.
    out : path-like, optional
        Directory for the ``.npy`` files (one per layer, ``<layer>.npy``: characters other than
        letters, digits, ``.``, ``_`` and ``-`` become ``_``, a long name is shortened with a
        hash, and names that would collide get a hash of the layer path); when given the
        result is always written there and stays after the call. Default: a temporary
        directory, used only past the budget and unlinked at once (the space is freed with
        the arrays).
    progress : bool, optional
        Show a progress bar; ``None`` follows :func:`xaikit.set_progress` (on in the CLI).

    Returns
    -------
    Activations
        A mapping ``layer -> array (N, ...)`` (float32 for float16/bfloat16 layers), items in
        the order of ``data``.

    Notes
    -----
    The hooks are removed when the call ends, also on error, and the model's training flags
    are restored (``Model.layer``, ``Model.scores``). Peak memory is one chunk's activations
    plus the result when it is in memory; past the budget it is one chunk.

    Examples
    --------
    >>> from xaikit.datasets import load_default_cnn, load_mnist
    >>> X, y = load_mnist("test")
    >>> acts = activations(load_default_cnn(), X, layers=["pool1", "relu3"], pool="mean")
    >>> acts["pool1"].shape, acts["relu3"].shape
    ((1000, 16), (1000, 64))
    """
    return capture(
        model,
        data,
        layers=layers,
        pool=pool,
        batch_size=batch_size,
        memory_budget=memory_budget,
        out=out,
        progress=progress,
    )


def capture(
    model: Any,
    data: Any,
    *,
    layers: Any,
    pool: Any = None,
    batch_size: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    out: Any = None,
    progress: bool | None = None,
    keep_inputs: bool = False,
    layers_name: str = "layers",
) -> Activations:
    """:func:`activations` with two internal options: keep the inputs too (reconstruction
    needs them aligned with the activations, also from a shuffling DataLoader), and the name of
    the argument that holds the layers (``layer`` for :func:`project`)."""
    if batch_size is not None:
        batch_size = check_positive_int(batch_size, name="batch_size")
    budget = check_positive_int(memory_budget, name="memory_budget")
    # A raw module forwards each chunk whole; a given Model keeps its own batching.
    if batch_size is None or isinstance(model, Model):
        m = as_model(model)
    else:
        m = as_model(model, batch_size=batch_size)
    names = resolve_layers(m, layers, name=layers_name)
    transform = _pool_transform(pool, token_model=has_embedding(m.module))
    source = Source(data)
    streams = names + ([INPUTS] if keep_inputs else [])
    store = Store(streams, expected_n=source.n, budget=budget, out=out)
    size = [batch_size or _FIRST_CHUNK]  # a cell: the source asks for it before each chunk
    targets: list[np.ndarray] | None = []
    try:
        with (
            contextlib.ExitStack() as stack,
            progress_bar(source.n or 0, "activations", enabled=progress) as bar,
        ):
            recordings = [
                stack.enter_context(m.layer(name, transform=transform, argument="layers"))
                for name in names
            ]
            for x, target in source.chunks(lambda: size[0]):
                rows = _forward(m, x, recordings)
                if keep_inputs:
                    rows[INPUTS] = [to_numpy(x)]
                store.put(rows)
                targets = gather_targets(targets, target, len(x))
                bar.advance(len(x))
                if batch_size is None:  # now that one item's bytes are known
                    size[0] = _chunk_items(store.item_bytes, budget)
        arrays, paths = store.finish()
    except BaseException:
        store.abort()
        raise
    if not arrays:
        raise ValueError(f"data: expected at least one item, got {describe(data)} with none")
    inputs = arrays.pop(INPUTS, None)
    targets_arr = np.concatenate(targets) if targets else None
    return Activations(
        arrays, spilled=store.on_disk, paths=paths, targets=targets_arr, inputs=inputs
    )


def data_length(data: Any) -> int | None:
    """Number of items ``data`` will yield when known without running it (for early checks)."""
    return Source(data).n


# ---------------------------------------------------------------------- pooling and rows


def _pool_transform(pool: Any, *, token_model: bool) -> Callable | None:
    if pool is None or callable(pool):
        return pool
    if not isinstance(pool, str):
        raise TypeError(f"pool: expected 'mean', 'max', a callable or None, got {describe(pool)}")
    check_choice(pool, name="pool", choices=POOLS)

    def transform(t: torch.Tensor) -> torch.Tensor:
        if t.ndim < 3:
            return t  # already one vector per item
        # Token models are batch-first (N, L, D): pool the tokens. Otherwise channels first
        # (N, C, *spatial): pool the positions.
        dims = (1,) if token_model and t.ndim == 3 else tuple(range(2, t.ndim))
        t = t if t.dtype.is_floating_point else t.float()
        return t.mean(dim=dims) if pool == "mean" else t.amax(dim=dims)

    return transform


def _forward(m: Model, x: Any, recordings: list) -> dict[str, list[np.ndarray]]:
    """One forward of a chunk; each layer's recorded rows, checked to be one per item.

    (The Model's batch-size search does not reach the recordings: its timing runs on copies
    of one item are not recorded.)
    """
    m.scores(x, progress=False)
    rows = {rec.name: _rows(rec.activation_batches, n=len(x), layer=rec.name) for rec in recordings}
    for rec in recordings:
        rec.clear()
    return rows


def _rows(batches: list[torch.Tensor], *, n: int, layer: str) -> list[np.ndarray]:
    """Recorded batches as NumPy arrays, checked to hold one row per item."""
    got = sum(len(b) for b in batches)
    if got != n:
        why = (
            "it did not run"
            if not batches
            else f"it produced {got} rows for {n} items (does it run more than once per "
            "forward, or put the items on another axis than 0? a pool callable can reshape)"
        )
        raise ValueError(f"layers: cannot record layer {layer!r}: {why}")
    return [to_numpy(b) for b in batches]


def _chunk_items(item_bytes: int, budget: int) -> int:
    """Items per chunk: within the chunk's byte limit, a power of two so that the Model's
    batch sizes (powers of two) divide it and no chunk ends in a small leftover batch."""
    limit = min(_CHUNK_BYTES, budget // 4)
    items = max(1, min(_MAX_CHUNK, limit // max(1, item_bytes)))
    return 2 ** int(math.log2(items))
