"""``xk.audit``: explain every item of a data set, shard by shard, then look for shortcuts.

The run is a loop over shards of ``shard_size`` consecutive items. Each shard is explained as
one batch (``explain(..., batch=True)``, which batches through the Model adapter), its maps are
summed over channels and pooled to at most ``map_size`` cells a side, and the shard is written
atomically under ``out``. The manifest in ``out`` names the run (model hash, method, params,
data and labels hashes, shard size, map size) and every shard names the run (the hash of that
identity), so a run started again with the same ``out`` explains only the missing shards, a
folder of another run is refused rather than mixed, and a shard that is not this run's whole
shard (copied from another run, damaged, truncated, empty, non-finite) is named in a warning
and explained again.
The Ray backend (:mod:`xaikit.audit._ray`) explains the same shards in actors; the driver
alone writes them, so both backends leave the same files.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, SequentialSampler

from xaikit import _files, layout
from xaikit._progress import progress_bar
from xaikit._validation import check_batch, check_choice, check_positive_int, check_targets
from xaikit.attribution.api import explain
from xaikit.audit import _store
from xaikit.audit.analysis import analyze
from xaikit.audit.result import Audit
from xaikit.audit.shard import BACKGROUND_RULE, explain_shard, pooled_background
from xaikit.batching import chosen_batch_sizes, preset_batch_sizes
from xaikit.model import Model, as_model

BACKENDS = ("local", "ray")


def audit(
    model: Any,
    data: Any,
    *,
    labels: Any = None,
    method: str = "integrated_gradients",
    backend: str = "local",
    out: str | Path | None = None,
    params: dict[str, Any] | None = None,
    shard_size: int = 256,
    map_size: int = 32,
    address: str | None = None,
    workers: int | None = None,
    progress: bool | None = None,
) -> Audit:
    """Audit a whole data set for Clever-Hans shortcuts (Lapuschkin et al. 2019).

    Every item is explained (``method`` with ``params``) for its label, or for the predicted
    class when ``labels`` is None. The maps are kept, pooled, in shards under ``out``. Then the
    analysis (:func:`xaikit.audit.analyze`) computes per-class mean relevance maps, the share
    of relevance per region, SpRAy clusters per class, and the findings: classes or clusters
    whose relevance concentrates in a small region, consistent across their images and unlike
    the other classes, or sits on the background rather than on the object.

    Parameters
    ----------
    model : nn.Module, xaikit.Model, or callable on NumPy batches
    data : array or tensor (N, C, H, W) or (N, H, W); a map-style Dataset (items ``x`` or
        ``(x, y)``); or a DataLoader over one that does not shuffle.
    labels : sequence of int, optional
        One class per item. Default: the ``y`` of a Dataset's ``(x, y)`` items, else none
        (items are then explained and grouped by the predicted class).
    method : str
        Attribution method (``xk.methods()``); Integrated Gradients by default.
    backend : {"local", "ray"}
        ``"ray"``: explain the shards in Ray actors (the ``xaikit[ray]`` extra).
    out : path, optional
        Folder for the manifest and shards; the run resumes from it. Default: a temporary
        folder removed after the analysis.
    params : dict, optional
        The method's parameters (e.g. ``{"steps": 32}``).
    shard_size : int
        Items per shard (one ``explain`` batch, one file).
    map_size : int
        Maps are sum-pooled by an integer factor to at most this many cells a side.
    address : str, optional
        Ray only: the address of a running cluster (``"host:port"``, ``"ray://host:port"`` or
        ``"auto"``). ``None`` starts a local Ray for this call with ``workers`` CPUs.
    workers : int, optional
        Ray only: number of actors (default 2 locally, the cluster's CPU count otherwise).
    progress : bool, optional
        Progress bar; ``None`` follows :func:`xaikit.set_progress`.

    Returns
    -------
    Audit
        ``findings``, ``class_maps``, ``clusters``, ``save(dir)``, ``plot()``.

    References
    ----------
    Lapuschkin et al., "Unmasking Clever Hans predictors and assessing what machines really
    learn", Nature Communications 10, 1096 (2019).
    """
    backend = check_choice(backend, name="backend", choices=BACKENDS)
    shard_size = check_positive_int(shard_size, name="shard_size")
    map_size = check_positive_int(map_size, name="map_size")
    if workers is not None:
        workers = check_positive_int(workers, name="workers")
    if backend == "local" and (address is not None or workers is not None):
        which = "address" if address is not None else "workers"
        raise ValueError(f"{which}: only for backend='ray', got backend='local'")
    if backend == "ray" and address is not None:
        from xaikit.audit._ray import check_reachable

        check_reachable(address)  # before any work: an address that does not answer fails fast
    params = dict(params or {})
    if not isinstance(method, str):
        raise TypeError(f"method: expected a method name (str), got {type(method).__name__}")
    wrapped = as_model(model)
    source = _Source(data)
    if len(source.item_shape) == 2 and _first_convolution_channels(wrapped) == 1:
        source.channel_axis = True  # (H, W) items for a one-channel CNN: (1, H, W)
        source.item_shape = (1, *source.item_shape)
    if labels is None:
        labels = source.labels
    if labels is not None:
        labels = check_targets(labels, n=source.n, n_classes=None, name="labels")
    if wrapped.n_classes is None:  # one item's forward tells K and checks the items' shape
        try:
            wrapped.scores(source.get(0, 1))
        except ValueError as err:  # the items are the audit's data: say so
            if str(err).startswith("x: "):
                raise ValueError(f"data: {str(err)[3:]}") from err
            raise
    if labels is not None:
        labels = check_targets(labels, n=source.n, n_classes=wrapped.n_classes, name="labels")
    factor = max(1, math.ceil(max(source.item_shape[-2:]) / map_size))
    identity = {
        "model": _store.model_hash(wrapped.module if wrapped.is_torch else wrapped.function),
        "model_code": _store.model_code(wrapped.module),
        "method": method,
        "params": _store.json_params(params),
        "data": {
            "n": source.n,
            "item_shape": list(source.item_shape),
            "hash": source.hash,
        },
        "labels": None if labels is None else _store.array_hash([labels]),
        "shard_size": shard_size,
        "pool": factor,
    }

    _remove_dead_scratch()
    with tempfile.TemporaryDirectory(prefix=f"{SCRATCH}{os.getpid()}-") as scratch:
        folder = Path(out).expanduser() if out is not None else Path(scratch)
        manifest = _store.prepare(folder, identity, {})
        sizes, layouts = _settle_batch_sizes(
            wrapped, source, labels, manifest, folder, method, params
        )
        n_shards = -(-source.n // shard_size)
        map_shape = (-(-source.item_shape[-2] // factor), -(-source.item_shape[-1] // factor))
        job = _Job(source, labels, shard_size, method, params, factor)
        job.run, job.map_shape = manifest["run"], map_shape
        done = _usable_shards(folder, job, n_shards)
        todo = [i for i in range(n_shards) if i not in done]
        with progress_bar(source.n, "audit", enabled=progress) as bar:
            bar.advance(sum(len(job.rows(i)) for i in done))
            if backend == "local":
                _run_local(wrapped, job, todo, folder, bar)
            else:
                from xaikit.audit._ray import run_ray

                run_ray(
                    wrapped, job, todo, folder, bar, (sizes, layouts),
                    address=address, workers=workers,
                )  # fmt: skip
        shards = _gather(folder, job, n_shards)
        return analyze(
            maps=shards["maps"],
            background=shards["background"],
            targets=shards["targets"],
            predictions=shards["predictions"],
            labels=labels,
            pool=factor,
            input_shape=source.item_shape[-2:],
            examples=lambda idx: source.get_items(idx),
            predict=lambda inputs: wrapped.scores(inputs, progress=False).argmax(axis=1),
            info={
                "method": method,
                "params": identity["params"],
                "model": identity["model"],
                "n": source.n,
                "out": None if out is None else str(folder),
            },
        )


class _Job:
    """What every shard needs: where its items come from and how they are explained."""

    def __init__(self, source, labels, shard_size, method, params, factor) -> None:
        self.source, self.labels, self.shard_size = source, labels, shard_size
        self.method, self.params, self.factor = method, params, factor
        self.run = ""  # the manifest's run id, named by every shard
        self.map_shape = (0, 0)  # pooled (h, w) of one item's map

    def read(self, folder: Path, index: int) -> dict[str, np.ndarray]:
        """Shard ``index`` if it is this run's and whole; else :class:`_store.ShardError`."""
        return _store.read_shard(
            _store.shard_path(folder, index),
            run=self.run,
            rows=self.rows(index),
            map_shape=self.map_shape,
            labels=self.labels,
        )

    def rows(self, index: int) -> range:
        start = index * self.shard_size
        return range(start, min(start + self.shard_size, self.source.n))

    def inputs(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        rows = self.rows(index)
        x = self.source.get(rows.start, rows.stop)
        targets = None if self.labels is None else self.labels[rows.start : rows.stop]
        return x, targets


def _run_local(wrapped: Model, job: _Job, todo: list[int], folder: Path, bar) -> None:
    for index in todo:
        x, targets = job.inputs(index)
        arrays = explain_shard(
            wrapped, x, targets, method=job.method, params=job.params, factor=job.factor
        )
        arrays["indices"] = np.arange(job.rows(index).start, job.rows(index).stop)
        _store.write_shard(_store.shard_path(folder, index), arrays, run=job.run)
        bar.advance(len(x))


def _settle_batch_sizes(wrapped, source, labels, manifest, folder, method, params) -> tuple:
    """The batch sizes and memory layouts every shard uses, the same in every attempt and
    every Ray actor: ``(sizes, layouts)``, each keyed by call.

    Float results depend in their last bits on the batch size and the layout, so shards
    written by a first attempt, a resumed one and Ray actors agree only if all batch alike.
    The first attempt lets the Model search (one small explain of nine items, whose result is
    discarded) and records both in the manifest; later attempts and actors install them
    before work. (Manifests of earlier versions record sizes only: the default layout.)
    """
    recorded = manifest.get("batch_sizes")
    if recorded is None:
        if wrapped.batch_size == "auto":
            x = source.get(0, min(9, source.n))
            targets = None if labels is None else labels[: len(x)]
            explain(wrapped, x, method=method, target=targets, batch=True, **params)
        layouts = wrapped.chosen_layouts
        recorded = [
            [k[0], list(k[1]), k[2], k[3], int(v), layouts.get(k, "contiguous")]
            for k, v in chosen_batch_sizes(wrapped).items()
        ]
        manifest = {**manifest, "batch_sizes": recorded}
        _store.write_bytes(folder / _store.MANIFEST, _json(manifest))
    try:
        sizes = {(k, tuple(s), d, dev): int(v) for k, s, d, dev, v, *_ in recorded}
        layouts = {(k, tuple(s), d, dev): rest[0] for k, s, d, dev, _, *rest in recorded if rest}
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"out: the batch sizes in {str(folder / _store.MANIFEST)!r} are not readable "
            f"({err}); restore the manifest or choose another folder"
        ) from err
    preset_batch_sizes(wrapped, sizes)
    if wrapped.is_torch:
        layout.preset(wrapped.module, layouts)
    return sizes, layouts


def _json(obj) -> bytes:
    import json

    return json.dumps(obj, indent=2, sort_keys=True).encode()


def _usable_shards(folder: Path, job: _Job, n_shards: int) -> set[int]:
    """The shards already in ``folder`` that are this run's and whole; the others are named in
    one warning and will be explained again (writing over them)."""
    done, bad = set(), []
    for index, path in sorted(_store.existing_shards(folder).items()):
        if index >= n_shards:
            continue
        try:
            job.read(folder, index)
        except _store.ShardError as err:
            bad.append(f"{path.name} ({err})")
        else:
            done.add(index)
    if bad:
        warnings.warn(
            f"out: {len(bad)} shard(s) in {str(folder)!r} are not this run's whole shards and "
            f"are explained again: {'; '.join(bad)}",
            stacklevel=3,
        )
    return done


def _gather(folder: Path, job: _Job, n_shards: int) -> dict[str, np.ndarray]:
    """Concatenate the shards in order, each checked again (items, run, shapes, values).

    A shard written under another background rule (an older xaikit) keeps its maps; its
    background is recomputed from its items, which needs no model, and written back.
    """
    parts = []
    for index in range(n_shards):
        try:
            part = job.read(folder, index)
        except _store.ShardError as err:  # changed under our feet since it was written
            raise ValueError(
                f"out: {_store.shard_path(folder, index).name} in {str(folder)!r} changed while "
                f"the audit ran ({err}); run it again"
            ) from err
        if part.pop("background_rule") != BACKGROUND_RULE:
            x, _ = job.inputs(index)
            part["background"] = pooled_background(x, job.factor)
            arrays = {**part, "background_rule": np.array(BACKGROUND_RULE)}
            _store.write_shard(_store.shard_path(folder, index), arrays, run=job.run)
        parts.append(part)
    return {k: np.concatenate([p[k] for p in parts]) for k in _store.SHARD_KEYS}


SCRATCH = "xaikit-audit-"  # prefix of the temporary folder of a run without ``out``


def _remove_dead_scratch() -> None:
    """Remove temporary folders of audits whose process is gone (killed before cleaning up)."""
    pattern = re.compile(rf"^{SCRATCH}(\d+)-")
    try:
        entries = list(os.scandir(tempfile.gettempdir()))
    except OSError:
        return
    for entry in entries:
        match = pattern.match(entry.name)
        if match and not _files.pid_alive(int(match.group(1))) and entry.is_dir():
            shutil.rmtree(entry.path, ignore_errors=True)


class _Source:
    """Random access to the items: an array/tensor, a map-style Dataset, or a plain DataLoader."""

    def __init__(self, data: Any) -> None:
        if isinstance(data, DataLoader):
            if not isinstance(data.sampler, SequentialSampler) or not isinstance(
                data.dataset, Dataset
            ):
                raise TypeError(
                    "data: a DataLoader must read a map-style Dataset in order (no shuffle, "
                    "no custom sampler) so that a resumed audit sees the same items"
                )
            data = data.dataset
        self.labels = None
        self.channel_axis = False  # items get a channel axis on their way out
        if isinstance(data, Dataset):
            self.dataset = data
            self.array = None
            try:
                self.n = len(data)
            except TypeError as err:
                raise TypeError("data: a Dataset needs __len__ for an audit") from err
            self.hash, self.item_shape, self.labels = self._scan()
        else:
            arr = check_batch(data, name="data")
            if isinstance(arr, torch.Tensor):
                arr = arr.detach().cpu().numpy()
            self.array, self.dataset, self.n = arr, None, len(arr)
            self.item_shape = tuple(arr.shape[1:])
            self.hash = _store.array_hash([arr])
        if len(self.item_shape) not in (2, 3):
            raise ValueError(
                "data: expected images, items of shape (C, H, W) or (H, W), got items of shape "
                f"{self.item_shape}"
            )

    def _scan(self):
        # One pass over the Dataset: its hash (to recognise it on resume), shape and labels.
        import hashlib

        h, labels, shape = hashlib.sha256(), [], None
        for start in range(0, self.n, 256):
            x, y = self._items(range(start, min(start + 256, self.n)))
            shape = shape or tuple(x.shape[1:])
            h.update(np.ascontiguousarray(x).tobytes())
            labels = None if y is None or labels is None else [*labels, *y]
        return "sha256:" + h.hexdigest(), shape, None if labels is None else np.asarray(labels)

    def _items(self, idx) -> tuple[np.ndarray, list | None]:
        xs, ys = [], []
        for i in idx:
            item = self.dataset[int(i)]
            if isinstance(item, (tuple, list)):
                xs.append(item[0])
                y = item[1] if len(item) > 1 else None
                ys.append(int(y) if y is not None and np.ndim(y) == 0 else None)
            else:
                xs.append(item)
                ys.append(None)
        x = np.stack(
            [t.detach().cpu().numpy() if torch.is_tensor(t) else np.asarray(t) for t in xs]
        )
        x = check_batch(x, name="data")
        return x, (None if any(y is None for y in ys) else ys)

    def get(self, start: int, stop: int) -> np.ndarray:
        if self.array is not None:
            return self._shaped(self.array[start:stop])
        return self._shaped(self._items(range(start, stop))[0])

    def get_items(self, idx) -> np.ndarray:
        if self.array is not None:
            return self._shaped(self.array[np.asarray(idx, dtype=np.int64)])
        return self._shaped(self._items(idx)[0])

    def _shaped(self, x: np.ndarray) -> np.ndarray:
        return x[:, None] if self.channel_axis else x


def _first_convolution_channels(model) -> int | None:
    """The input channels of a torch model's first 2-D convolution (None without one)."""
    if not model.is_torch:
        return None
    first = next((m for m in model.module.modules() if isinstance(m, torch.nn.Conv2d)), None)
    return None if first is None else first.in_channels
