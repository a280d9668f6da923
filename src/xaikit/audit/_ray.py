"""The audit's Ray backend: the same shards, explained by actors that load the model once.

The driver puts the model into Ray's object store once (``ray.put``); each actor receives it in
its constructor and keeps it, together with the batch sizes the driver settled (so its shards
batch, and therefore round, exactly like a local run). The driver hands out shards (at most two
in flight per actor), and it alone writes the returned shards, atomically, as they arrive: a
killed run leaves whole shards only, and resumes with either backend.
"""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from xaikit.audit import _store

#: Seconds to wait for a Ray address to accept a connection before calling it unreachable.
CONNECT_TIMEOUT = 3.0
#: Workers of a local Ray started for one call, when ``workers`` is not given.
LOCAL_WORKERS = 2


def run_ray(wrapped, job, todo: list[int], folder: Path, bar, chosen: tuple, *, address, workers):
    """Explain the shards ``todo`` on Ray actors, each with the ``(batch sizes, layouts)`` of
    ``chosen`` installed, and write them as they come back."""
    try:
        import ray
    except ImportError as err:  # the optional extra is missing
        raise ImportError(
            "backend: 'ray' needs the ray package; install it with pip install 'xaikit[ray]'"
        ) from err
    started = False
    if not ray.is_initialized():
        if address is None:
            ray.init(
                num_cpus=workers or LOCAL_WORKERS,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
            started = True
        else:
            check_reachable(address)
            try:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
            except ConnectionError as err:
                raise ValueError(
                    f"address: could not join the Ray cluster at {address!r} ({err})"
                ) from err
            started = True
    if workers is None:
        workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
    actors = []
    try:
        model_ref = ray.put(wrapped.module if wrapped.is_torch else wrapped.function)
        spec = {
            "output": wrapped.output,
            "batch_size": wrapped.batch_size,
            "input_shape": wrapped.input_shape,
        }
        worker = ray.remote(num_cpus=1)(_Worker)
        actors = [worker.remote(model_ref, spec, *chosen) for _ in range(workers)]
        queue = list(todo)
        pending: dict = {}  # object ref -> (shard index, actor)

        def submit(actor) -> None:
            index = queue.pop(0)
            x, targets = job.inputs(index)
            ref = actor.explain.remote(x, targets, job.method, job.params, job.factor)
            pending[ref] = (index, actor)

        for actor in actors:
            for _ in range(2):
                if queue:
                    submit(actor)
        while pending:
            (ready,), _ = ray.wait(list(pending), num_returns=1)
            index, actor = pending.pop(ready)
            arrays = ray.get(ready)
            rows = job.rows(index)
            arrays["indices"] = np.arange(rows.start, rows.stop)
            _store.write_shard(_store.shard_path(folder, index), arrays, run=job.run)
            bar.advance(len(rows))
            if queue:
                submit(actor)
    finally:
        for actor in actors:
            with contextlib.suppress(Exception):
                ray.kill(actor)
        if started:
            ray.shutdown()


class _Worker:
    """A Ray actor holding one copy of the model; explains shards like the local loop."""

    def __init__(self, module, spec: dict, sizes: dict, layouts: dict) -> None:
        import torch

        from xaikit import layout
        from xaikit.batching import preset_batch_sizes
        from xaikit.model import Model

        # One CPU per actor: torch's own threads would only compete with the other actors.
        torch.set_num_threads(1)
        self.model = Model(module, **spec)
        preset_batch_sizes(self.model, sizes)
        if self.model.is_torch:
            layout.preset(self.model.module, layouts)

    def explain(self, x, targets, method, params, factor):
        from xaikit.audit.shard import explain_shard

        return explain_shard(self.model, x, targets, method=method, params=params, factor=factor)


def check_reachable(address: str) -> None:
    """Raise a ValueError naming ``address`` when nothing accepts a connection there, quickly.

    ``ray.init`` itself may wait a long time for an address that never answers.
    """
    if address == "auto":
        return
    if not isinstance(address, str):
        raise TypeError(
            f"address: expected 'host:port', 'ray://host:port' or 'auto', got "
            f"{type(address).__name__}"
        )
    parts = urlsplit(address if "://" in address else f"ray://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or port is None:
        raise ValueError(
            f"address: expected 'host:port', 'ray://host:port' or 'auto', got {address!r}"
        )
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT):
            pass
    except OSError as err:
        raise ValueError(
            f"address: no Ray cluster answers at {address!r} ({err}); start one with "
            "`ray start --head` or give address=None for a local Ray"
        ) from err
