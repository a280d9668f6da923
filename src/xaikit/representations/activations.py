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
import shutil
import struct
import tempfile
import weakref
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from xaikit._progress import progress_bar
from xaikit._validation import check_batch, check_choice, check_positive_int, describe
from xaikit.model import Model, _has_embedding, as_model
from xaikit.representations._common import resolve_layers

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
# Room reserved for a .npy header written once the number of rows is known (a multiple of 64,
# the alignment NumPy uses, so the data of a memmap stays aligned).
_HEADER_BYTES = 512
_INPUTS = "\0inputs"  # stream key of the inputs themselves (kept only for reconstruction)


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
        Directory for the ``.npy`` files (one per layer, ``<layer>.npy``); when given the
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
    transform = _pool_transform(pool, token_model=_has_embedding(m.module))
    source = _Source(data)
    streams = names + ([_INPUTS] if keep_inputs else [])
    store = _Store(streams, expected_n=source.n, budget=budget, out=out)
    size = [batch_size or _FIRST_CHUNK]  # a cell: the source asks for it before each chunk
    targets: list[np.ndarray] | None = []
    try:
        with (
            contextlib.ExitStack() as stack,
            progress_bar(source.n or 0, "activations", enabled=progress) as bar,
        ):
            recordings = [stack.enter_context(m.layer(name, transform=transform)) for name in names]
            for x, target in source.chunks(lambda: size[0]):
                rows = _forward(m, x, recordings)
                if keep_inputs:
                    rows[_INPUTS] = [_to_numpy(x)]
                store.put(rows)
                targets = _gather_targets(targets, target, len(x))
                bar.advance(len(x))
                if batch_size is None:  # now that one item's bytes are known
                    size[0] = _chunk_items(store.item_bytes, budget)
        arrays, paths = store.finish()
    except BaseException:
        store.abort()
        raise
    if not arrays:
        raise ValueError(f"data: expected at least one item, got {describe(data)} with none")
    inputs = arrays.pop(_INPUTS, None)
    targets_arr = np.concatenate(targets) if targets else None
    return Activations(
        arrays, spilled=store.on_disk, paths=paths, targets=targets_arr, inputs=inputs
    )


def data_length(data: Any) -> int | None:
    """Number of items ``data`` will yield when known without running it (for early checks)."""
    return _Source(data).n


# ---------------------------------------------------------------------- the data


class _Source:
    """Chunks of inputs (and targets) from an array, a tensor, a Dataset or a DataLoader."""

    def __init__(self, data: Any) -> None:
        self.data = data
        if isinstance(data, DataLoader):
            self.kind = "loader"
            self.n = _loader_length(data)
        elif isinstance(data, IterableDataset):
            self.kind, self.n = "iterable", None
        elif isinstance(data, Dataset):
            self.kind = "dataset"
            try:
                self.n = len(data)
            except TypeError as err:
                raise TypeError(
                    "data: a map-style Dataset needs __len__; wrap it in a DataLoader"
                ) from err
        else:
            self.kind = "array"
            self.data = check_batch(data, name="data")
            self.n = len(self.data)

    def chunks(self, size: Callable[[], int]) -> Iterator[tuple[Any, Any]]:
        """Yield ``(inputs, targets or None)``; ``size()`` is asked before each chunk."""
        if self.kind == "array":
            start = 0
            while start < self.n:
                end = min(start + size(), self.n)
                yield self.data[start:end], None
                start = end
        elif self.kind == "loader":
            for batch in self.data:  # the loader decides the batches
                yield _split(batch, batched=True)
        else:
            items = (
                (self.data[i] for i in range(self.n)) if self.kind == "dataset" else iter(self.data)
            )
            while True:
                group = [
                    _split(item, batched=False)
                    for _, item in zip(range(size()), items, strict=False)
                ]
                if not group:
                    return
                xs, ts = zip(*group, strict=True)
                yield _stack(xs), (None if any(t is None for t in ts) else list(ts))


def _loader_length(loader: DataLoader) -> int | None:
    # Only when the loader makes its own batches from a sized sampler is the count certain
    # before iterating; otherwise the capture finds out as it goes.
    try:
        if loader.batch_size is None:
            return None
        if loader.drop_last:
            return len(loader) * loader.batch_size
        return len(loader.sampler)
    except TypeError:  # an IterableDataset or a sampler without __len__
        return None


def _split(item: Any, *, batched: bool) -> tuple[Any, Any]:
    """The input (first element of a tuple) and the target (second element), if any."""
    if isinstance(item, Mapping):
        raise TypeError(
            "data: items are dicts; give a Dataset/DataLoader that yields inputs or "
            "(input, target) tuples"
        )
    if isinstance(item, (tuple, list)):
        if not item:
            raise ValueError("data: an item is an empty tuple")
        x, target = item[0], (item[1] if len(item) > 1 else None)
    else:
        x, target = item, None
    if target is not None:
        target = target.detach().cpu().numpy() if isinstance(target, torch.Tensor) else target
        target = np.asarray(target)
        expected = 1 if batched else 0
        if target.ndim != expected or target.dtype.kind not in "biufUS":
            target = None  # not one scalar per item (e.g. a mask): not a label, ignore it
        elif not batched:
            target = target.item()
    return x, target


def _stack(xs: tuple) -> Any:
    if all(isinstance(x, torch.Tensor) for x in xs):
        return torch.stack(xs)
    try:
        return np.stack([np.asarray(x) for x in xs])
    except ValueError as err:
        raise ValueError(f"data: items of different shapes cannot form a batch ({err})") from err


def _gather_targets(targets: list | None, target: Any, n: int) -> list | None:
    if targets is None or target is None:
        return None  # one chunk without targets: no targets at all
    arr = np.asarray(target)
    if arr.shape != (n,):
        return None
    targets.append(arr)
    return targets


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        return x.numpy()
    return np.asarray(x)


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

    A chunk may be run twice: the first call with a new item shape may also run the Model's
    batch-size search, whose timing forwards reach the hooks too. The search is remembered,
    so a second call records exactly the chunk's rows.
    """
    for attempt in range(2):
        m.scores(x, progress=False)
        counts = [sum(len(b) for b in rec.activation_batches) for rec in recordings]
        if attempt == 0 and any(c != len(x) for c in counts):
            for rec in recordings:
                rec.clear()
            continue
        break
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
    return [_to_numpy(b) for b in batches]


def _chunk_items(item_bytes: int, budget: int) -> int:
    """Items per chunk: within the chunk's byte limit, a power of two so that the Model's
    batch sizes (powers of two) divide it and no chunk ends in a small leftover batch."""
    limit = min(_CHUNK_BYTES, budget // 4)
    items = max(1, min(_MAX_CHUNK, limit // max(1, item_bytes)))
    return 2 ** int(math.log2(items))


# ---------------------------------------------------------------------- where rows are kept


class _Store:
    """Rows of several streams (one per layer), in memory until the budget sends them to disk.

    The choice is made when the first chunk shows each item's size: in memory (preallocated
    for the expected count) when everything fits in the budget, else on disk. A data set that
    yields more rows than expected moves to disk mid-way. Disk files are ``.npy`` files whose
    header is written last, once the row count is known, through a temporary name.
    """

    def __init__(self, streams: list[str], *, expected_n: int | None, budget: int, out: Any):
        self.streams = streams
        self.expected_n = expected_n
        self.budget = budget
        self.out = None if out is None else Path(out)
        if self.out is not None and self.out.exists() and not self.out.is_dir():
            raise ValueError(f"out: expected a directory, got the file {str(self.out)!r}")
        self.buffers: dict[str, np.ndarray] = {}
        self.files: dict[str, Any] = {}
        self.filled = 0
        self.layout: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        self.item_bytes = 0
        self.on_disk = False
        self.tmpdir: Path | None = None

    def put(self, rows: dict[str, list[np.ndarray]]) -> None:
        k = sum(len(a) for a in rows[self.streams[0]])
        if not self.layout:
            self._start(rows)
        for name, parts in rows.items():
            for part in parts:
                shape = self.layout[name][0]
                if part.shape[1:] != shape:
                    raise ValueError(
                        f"data: items of {_label(name)} have shape {part.shape[1:]} in one "
                        f"batch and {shape} in another; pool them (pool='mean') or give "
                        "inputs of one size"
                    )
        if not self.on_disk and self.filled + k > len(next(iter(self.buffers.values()))):
            self._spill()  # more rows than expected: continue on disk
        for name, parts in rows.items():
            at = self.filled
            for part in parts:
                if self.on_disk:
                    self.files[name].write(np.ascontiguousarray(part, dtype=self.layout[name][1]))
                else:
                    self.buffers[name][at : at + len(part)] = part
                at += len(part)
        self.filled += k

    def _start(self, rows: dict[str, list[np.ndarray]]) -> None:
        for name, parts in rows.items():
            self.layout[name] = (parts[0].shape[1:], parts[0].dtype)
            self.item_bytes += int(np.prod(parts[0].shape[1:], dtype=np.int64)) * (
                parts[0].dtype.itemsize
            )
        total = None if self.expected_n is None else self.expected_n * self.item_bytes
        if self.out is not None or total is None or total > self.budget:
            self._open_files()
        else:
            self.buffers = {
                name: np.empty((self.expected_n, *shape), dtype=dtype)
                for name, (shape, dtype) in self.layout.items()
            }

    def _open_files(self) -> None:
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            directory = self.out
        else:
            self.tmpdir = Path(tempfile.mkdtemp(prefix="xaikit-activations-"))
            directory = self.tmpdir
        for i, name in enumerate(self.streams):
            if self.out is None:
                final = directory / f"stream{i}.npy"
            else:
                final = directory / ("_xaikit_inputs.npy" if name == _INPUTS else f"{name}.npy")
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=final.name, suffix=".tmp")
            handle = os.fdopen(fd, "wb")
            handle.write(b"\0" * _HEADER_BYTES)
            self.files[name] = _NpyFile(handle, Path(tmp), final)
        self.on_disk = True

    def _spill(self) -> None:
        buffers, self.buffers = self.buffers, {}
        self._open_files()
        for name, buffer in buffers.items():
            self.files[name].write(buffer[: self.filled])

    def finish(self) -> tuple[dict[str, np.ndarray], dict[str, Path]]:
        if not self.layout:
            return {}, {}
        if not self.on_disk:
            # Fewer rows than expected (a loader that drops some): a view of the filled part.
            return {k: b[: self.filled] for k, b in self.buffers.items()}, {}
        arrays, paths = {}, {}
        for name, f in self.files.items():
            shape, dtype = self.layout[name]
            f.close(shape=(self.filled, *shape), dtype=dtype)
        fits = self.filled * self.item_bytes <= self.budget
        for name, f in self.files.items():
            if self.out is not None:
                arrays[name] = np.load(f.final, mmap_mode="r")
                if name != _INPUTS:
                    paths[name] = f.final
            elif fits:  # the count was unknown and it fits after all: read it back, no file
                arrays[name] = np.load(f.final)
            else:
                arrays[name] = _anonymous_memmap(f.final)
        if self.out is None and fits:
            self.on_disk = False
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
        return arrays, paths

    def abort(self) -> None:
        """Close and delete everything written so far (nothing half-written stays)."""
        for f in self.files.values():
            f.discard()
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)


class _NpyFile:
    """A ``.npy`` file written row chunk by row chunk; its header is written on close."""

    def __init__(self, handle: Any, tmp: Path, final: Path) -> None:
        self.handle, self.tmp, self.final = handle, tmp, final

    def write(self, rows: np.ndarray) -> None:
        self.handle.write(np.ascontiguousarray(rows).data)

    def close(self, *, shape: tuple[int, ...], dtype: np.dtype) -> None:
        header = {
            "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
            "fortran_order": False,
            "shape": shape,
        }
        text = repr(header).encode("latin1")
        room = _HEADER_BYTES - 10  # magic (6), version (2), header length (2)
        if len(text) + 1 > room:
            raise ValueError(f"layers: shape {shape} is too long for the file header")
        self.handle.seek(0)
        # Format 1.0 header, padded with spaces and ended by a newline as NumPy writes it.
        self.handle.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", room))
        self.handle.write(text + b" " * (room - len(text) - 1) + b"\n")
        self.handle.close()
        os.replace(self.tmp, self.final)

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.handle.close()
        with contextlib.suppress(OSError):
            self.tmp.unlink()


def _anonymous_memmap(path: Path) -> np.ndarray:
    """Open ``path`` as a read-only memmap and unlink it: the space is freed with the array."""
    array = np.load(path, mmap_mode="r")
    try:
        path.unlink()  # POSIX: the mapping stays valid without a name
    except OSError:  # Windows cannot unlink a mapped file: delete it when the array goes
        weakref.finalize(array, _unlink_quietly, path)
    return array


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def _label(name: str) -> str:
    return "the inputs" if name == _INPUTS else f"layer {name!r}"
