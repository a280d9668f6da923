"""The audit's folder: a manifest that says which run the shards belong to, and the shards.

Layout of ``out``::

    manifest.json           identity of the run (model hash, method, params, data hash, ...)
                            and ``run``, the hash of that identity
    shard-00000.npz ...     maps of items [i * shard_size, (i + 1) * shard_size), each naming
                            its run

Every file is written to a temporary name in the same folder and renamed into place, so a run
killed at any moment leaves only whole shards and temporary files, which the next run removes.
A shard is read into a result only when it names this run, covers its items, has the expected
shapes and finite values (:func:`read_shard`); any other one (copied from another run,
damaged, truncated, empty) is named and explained again.
No pickle anywhere: shards are ``.npz`` of plain arrays, the manifest is JSON.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xaikit import _files
from xaikit._torch import module_settings

FORMAT = "xaikit-audit-shards"
VERSION = 2  # 2: the manifest has a run id and every shard names it
MANIFEST = "manifest.json"
_SHARD = re.compile(r"^shard-(\d{5,})\.npz$")
_OURS = re.compile(r"^(shard-\d{5,}\.npz|manifest\.json)$")  # files this folder may hold
SHARD_KEYS = ("indices", "maps", "background", "targets", "predictions")


class ShardError(ValueError):
    """A shard that cannot be read into this run's result; the message says why."""


def model_hash(module: Any) -> str:
    """SHA-256 of a module's class and state (names, dtypes, shapes, bytes), or a callable's name.

    Two runs with the same weights get the same hash whatever object holds them, so a resumed
    run in a new process recognises its shards; any changed weight gives another hash.
    """
    h = hashlib.sha256()
    if isinstance(module, torch.nn.Module):
        h.update(f"{type(module).__module__}.{type(module).__qualname__}".encode())
        for name, tensor in module.state_dict().items():
            _hash_tensor(h, name, tensor)
        return "sha256:" + h.hexdigest()
    # A callable on NumPy batches has no weights to hash: its qualified name is the best we have.
    owner = getattr(module, "__self__", module)
    name = f"{type(owner).__module__}.{type(owner).__qualname__}"
    return "callable:" + getattr(module, "__qualname__", name)


def model_code(module: Any) -> str | None:
    """SHA-256 of what a model computes besides its weights (None for a callable): every
    submodule's path and class, the source of its forward, and its plain settings (numbers,
    strings, flags, tensors held as attributes). With the same weights, an edited forward or a
    changed attribute (a temperature, a patch position) is another run. Stable across
    processes, so a resumed run recognises its own.
    """
    if not isinstance(module, torch.nn.Module):
        return None
    h = hashlib.sha256()
    for name, m in module.named_modules(remove_duplicate=False):
        cls = type(m)
        h.update(f"{name}:{cls.__module__}.{cls.__qualname__}:".encode())
        h.update(_forward_source(cls).encode())
        h.update(str(getattr(m, "code", "")).encode())  # a TorchScript module's own code
        for key, value in module_settings(m):
            if isinstance(value, torch.Tensor):
                _hash_tensor(h, key, value)
            else:
                h.update(f"{key}={value!r};".encode())
    return "sha256:" + h.hexdigest()


def _hash_tensor(h, name: str, tensor: torch.Tensor) -> None:
    """Add a tensor's name, dtype, shape and bytes to the hash ``h``."""
    t = tensor.detach().cpu().contiguous()
    h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


@functools.cache
def _forward_source(cls: type) -> str:
    forward = getattr(cls, "forward", None)
    try:
        return inspect.getsource(forward)
    except (OSError, TypeError):  # built in, or defined where no source is kept
        return str(getattr(forward, "__qualname__", forward))


def array_hash(arrays) -> str:
    """SHA-256 over a sequence of arrays (shape, dtype and bytes of each)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}:{a.shape}".encode())
        h.update(a.tobytes())
    return "sha256:" + h.hexdigest()


def json_params(params: dict[str, Any]) -> dict[str, Any]:
    """Method parameters as JSON: arrays (a baseline image) by their hash, numbers as numbers."""
    out: dict[str, Any] = {}
    for key, value in sorted(params.items()):
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        if isinstance(value, np.ndarray):
            out[key] = {"array": array_hash([value])}
        elif isinstance(value, np.generic):
            out[key] = value.item()
        elif value is None or isinstance(value, (bool, int, float, str)):
            out[key] = value
        elif isinstance(value, (list, tuple)):
            out[key] = json_params({str(i): v for i, v in enumerate(value)})
        else:
            out[key] = repr(value)
    return out


def shard_path(out: Path, index: int) -> Path:
    return out / f"shard-{index:05d}.npz"


def existing_shards(out: Path) -> dict[int, Path]:
    """Shard number -> path of every whole shard in ``out`` (temporary files are not shards)."""
    if not out.is_dir():
        return {}
    found = {}
    for path in out.iterdir():
        match = _SHARD.match(path.name)
        if match:
            found[int(match.group(1))] = path
    return found


def run_id(identity: dict[str, Any]) -> str:
    """The run's name: SHA-256 of its identity as canonical JSON (what every shard carries)."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def prepare(out: Path, identity: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Create ``out`` with its manifest, or check that its manifest is this run's.

    Returns the manifest in force (an existing one keeps its ``extra`` entries, e.g. the batch
    sizes a first attempt chose, so a resumed run batches exactly as the first), with ``run``.
    Temporary files left by a killed run are removed.
    """
    if out.exists() and not out.is_dir():
        raise ValueError(f"out: expected a folder, got the file {str(out)!r}")
    out.mkdir(parents=True, exist_ok=True)
    for leftover in _files.stale_temp_files(out, _OURS):
        leftover.unlink(missing_ok=True)
    manifest_file = out / MANIFEST
    shards = existing_shards(out)
    if not manifest_file.exists():
        if shards:
            raise ValueError(
                f"out: {str(out)!r} holds {len(shards)} audit shards but no {MANIFEST}; they "
                "cannot be matched to this run (choose another folder or delete them)"
            )
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "identity": identity,
            "run": run_id(identity),
            **extra,
        }
        write_bytes(manifest_file, json.dumps(manifest, indent=2, sort_keys=True).encode())
        return manifest
    try:
        manifest = json.loads(_files.read_text(manifest_file, name="out"))
        theirs = manifest["identity"]
        if not isinstance(theirs, dict):
            raise TypeError(f"its identity is {type(theirs).__name__}, not a mapping")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"out: {str(manifest_file)!r} is not an audit manifest ({err})") from err
    older = {k: v for k, v in identity.items() if k != "model_code"}
    if "model_code" not in theirs and theirs == older:
        identity = theirs  # a folder from before runs named the model's code: as it was checked
    if manifest.get("format") != FORMAT or theirs != identity:
        differ = sorted(k for k in set(theirs) | set(identity) if theirs.get(k) != identity.get(k))
        raise ValueError(
            f"out: {str(out)!r} holds the shards of another run (differs in: "
            f"{', '.join(differ) or 'format'}); mixing them would give wrong findings, so "
            "choose another folder or delete this one"
        )
    if manifest.get("run") != run_id(identity):  # a folder of version 1: its shards are unnamed
        manifest = {**manifest, "version": VERSION, "run": run_id(identity)}
        write_bytes(manifest_file, json.dumps(manifest, indent=2, sort_keys=True).encode())
    return manifest


def write_shard(path: Path, arrays: dict[str, np.ndarray], *, run: str) -> None:
    """Write one shard ``.npz`` atomically, naming its run; non-finite maps are refused."""
    import io

    for key in ("maps", "background"):
        if not np.isfinite(arrays[key]).all():
            rows = arrays["indices"]
            raise ValueError(
                f"method: the explanations of items {rows[0]}..{rows[-1]} hold NaN or infinite "
                f"values ({key}); nothing was written for them"
            )
    buffer = io.BytesIO()
    np.savez(buffer, **arrays, run=np.array(run))
    write_bytes(path, buffer.getvalue())


def read_shard(
    path: Path,
    *,
    run: str,
    rows: range,
    map_shape: tuple[int, int],
    labels: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Read one shard of run ``run`` covering ``rows``, or raise :class:`ShardError` saying why.

    Checked: the file (sizes declared before reading, CRC, truncation), the run it names,
    the keys, the items it covers, the shapes (``map_shape`` per item), finite maps and, with
    ``labels``, that it explained the labels of its items.
    """
    try:
        data = _files.load_npz(path, name="shard")
    except ValueError as err:
        reason = str(err).removeprefix("shard: ").replace(repr(str(path)), "the file", 1)
        raise ShardError(reason) from err
    except OSError as err:
        raise ShardError(f"unreadable: {err}") from err
    if "run" not in data or data["run"].shape != () or data["run"].dtype.kind != "U":
        raise ShardError("names no run (written by another xaikit or copied in)")
    if str(data["run"]) != run:
        raise ShardError(f"of another run ({str(data['run'])[:19]}...; this run is {run[:19]}...)")
    missing = [k for k in SHARD_KEYS if k not in data]
    if missing:
        raise ShardError(f"lacks {', '.join(missing)}")
    n = len(rows)
    expected = {"maps": (n, *map_shape), "background": (n, *map_shape)}
    expected.update({k: (n,) for k in ("indices", "targets", "predictions")})
    for key, shape in expected.items():
        if data[key].shape != shape:
            raise ShardError(f"{key} of shape {data[key].shape}, expected {shape}")
    for key in ("indices", "targets", "predictions"):
        if data[key].dtype.kind not in "iu":
            raise ShardError(f"{key} of dtype {data[key].dtype}, expected integers")
    for key in ("maps", "background"):
        if data[key].dtype.kind != "f":
            raise ShardError(f"{key} of dtype {data[key].dtype}, expected floats")
        if not np.isfinite(data[key]).all():
            raise ShardError(f"{key} hold NaN or infinite values")
    if not np.array_equal(data["indices"], np.arange(rows.start, rows.stop)):
        raise ShardError(f"covers other items than {rows.start}..{rows.stop - 1}")
    if labels is not None and not np.array_equal(data["targets"], labels[rows.start : rows.stop]):
        raise ShardError("explains other classes than the labels of its items")
    rule = data.get("background_rule")
    arrays = {k: data[k] for k in SHARD_KEYS}
    # Shards written before the rule was named have none; their maps are still this run's.
    arrays["background_rule"] = str(rule) if rule is not None and rule.dtype.kind == "U" else ""
    return arrays


def write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` whole or not at all (:func:`xaikit._files.atomic_write`)."""
    _files.write_bytes_atomic(path, payload)
