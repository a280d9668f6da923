"""Where the inputs come from: chunks of an array or tensor, items of a Dataset, batches of a
DataLoader; the first element of a tuple is the input, a scalar second element its target."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from xaikit._validation import check_batch


class Source:
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


def gather_targets(targets: list | None, target: Any, n: int) -> list | None:
    if targets is None or target is None:
        return None  # one chunk without targets: no targets at all
    arr = np.asarray(target)
    if arr.shape != (n,):
        return None
    targets.append(arr)
    return targets


def to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        return x.numpy()
    return np.asarray(x)
