"""Where recorded rows are kept: in memory while they fit in the budget, else in ``.npy`` files
written chunk by chunk (header last, through a temporary name) and opened as memmaps."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import struct
import tempfile
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from xaikit import _files
from xaikit._files import short_name

# Room reserved for a .npy header written once the number of rows is known (a multiple of 64,
# the alignment NumPy uses, so the data of a memmap stays aligned).
_HEADER_BYTES = 512
INPUTS = "\0inputs"  # stream key of the inputs themselves (kept only for reconstruction)


class Store:
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
        taken: set[str] = set()
        for i, name in enumerate(self.streams):
            if self.out is None:
                final = directory / f"stream{i}.npy"
            else:
                final = directory / (
                    "_xaikit_inputs.npy" if name == INPUTS else _file_name(name, taken)
                )
            # Written in pieces over many chunks, so not through _files.atomic_write; the same
            # rules apply: a temporary name beside the file, fsync, then one rename in finish.
            tmp = _files.temp_path(final)
            handle = os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb")
            handle.write(b"\0" * _HEADER_BYTES)
            self.files[name] = _NpyFile(handle, tmp, final)
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
                if name != INPUTS:
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


def _file_name(layer: str, taken: set[str]) -> str:
    """``<layer>.npy`` for a layer path, with only portable characters and a bounded length (a
    module may be named ``a/b`` or very long; the file must stay inside ``out``), unique among
    ``taken`` (``a/b`` and ``a_b`` must not share a file)."""
    stem = short_name(re.sub(r"[^A-Za-z0-9._-]+", "_", layer).strip(".") or "layer")
    if stem.lower() in taken:  # case too: some file systems ignore it
        stem = short_name(f"{stem}-{hashlib.sha256(layer.encode()).hexdigest()[:10]}")
    taken.add(stem.lower())
    return f"{stem}.npy"


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
        self.handle.flush()
        os.fsync(self.handle.fileno())
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
    return "the inputs" if name == INPUTS else f"layer {name!r}"
