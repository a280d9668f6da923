"""The result of every local explanation method, with plotting and a pickle-free file format.

An :class:`Explanation` holds the attribution values (the shape of the input), the input, the
explained target, the model's prediction, the method and its parameters, an optional component
map, and the scores that metrics add later. ``save`` writes one ``.npz`` file: every array as a
plain ``.npy`` member and one JSON metadata member (UTF-8 bytes in a ``uint8`` array), so
``np.load(path, allow_pickle=False)`` reads it and nothing in it can run code when loaded.
"""

from __future__ import annotations

import json
import math
import operator
import os
import zipfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from xaikit import _files
from xaikit._plotting import plain
from xaikit._repr import HTMLRepr
from xaikit._validation import check_int
from xaikit._version import __version__

__all__ = ["Explanation"]

KINDS = ("image", "tabular", "text")
FORMAT = "xaikit.explanation"
FORMAT_VERSION = 1
META_KEY = "__xaikit__"
ARRAY_MARK = "__xaikit_array__"  # JSON stand-in for an array stored as its own npz member
ARRAY_FIELDS = ("values", "x", "prediction", "components", "component_values")
MAX_GRID = 16


def _json_safe(obj: Any, *, key: str, arrays: dict[str, np.ndarray], notes: list[str]) -> Any:
    """Return ``obj`` as JSON-able data; arrays go to ``arrays[key]``, leaving a marker.

    NumPy scalars become Python numbers, tuples become lists, object arrays become lists, and
    anything else that JSON cannot hold (a callable, a model) becomes its ``repr`` string with
    a line in ``notes``. Nothing is ever pickled.
    """
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if type(obj).__module__.startswith("torch") and hasattr(obj, "detach"):
        tensor = obj.detach().cpu()  # a tensor (a baseline passed as one): its values
        obj = (tensor.float() if str(tensor.dtype) == "torch.bfloat16" else tensor).numpy()
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            return _json_safe(obj.tolist(), key=key, arrays=arrays, notes=notes)
        while key in arrays:  # {"a/b": ...} and {"a": {"b": ...}} would share a name
            key += "'"
        arrays[key] = obj
        return {ARRAY_MARK: key}
    if isinstance(obj, (list, tuple)):
        return [
            _json_safe(v, key=f"{key}/{i}", arrays=arrays, notes=notes) for i, v in enumerate(obj)
        ]
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                notes.append(f"{key}: key {k!r} is not a string; stored as {str(k)!r}")
            out[str(k)] = _json_safe(v, key=f"{key}/{k}", arrays=arrays, notes=notes)
        return out
    notes.append(f"{key}: {type(obj).__name__} is not JSON-able; stored as its repr, not pickled")
    return repr(obj)


def _from_json(obj: Any, arrays: Any) -> Any:
    """Invert :func:`_json_safe`: put the stored arrays back in place of their markers."""
    if isinstance(obj, dict):
        if set(obj) == {ARRAY_MARK}:
            return arrays[obj[ARRAY_MARK]]
        return {k: _from_json(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_from_json(v, arrays) for v in obj]
    return obj


def _same(a: Any, b: Any) -> bool:
    """Deep equality: arrays by dtype, shape and contents (NaN too); NumPy scalars as numbers."""
    a, b = (v.item() if isinstance(v, np.generic) else v for v in (a, b))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
            return False
        if a.dtype != b.dtype or a.shape != b.shape:
            return False
        nan_ok = a.dtype.kind in "fc"
        return bool(np.array_equal(a, b, equal_nan=nan_ok))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(u, v) for u, v in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def _numeric(name: str, value: Any) -> np.ndarray:
    arr = np.asarray(value)
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool) or arr.dtype.kind == "c":
        raise ValueError(f"{name}: expected a real numeric array, got dtype {arr.dtype}")
    return arr


@dataclass(eq=False, kw_only=True)
class Explanation(HTMLRepr):
    """The attributions of one local explanation method for one input (or a batch of inputs).

    Parameters
    ----------
    values : array_like
        Attributions, the shape of ``x``; stored as floats (integers are cast to float64).
    x : array_like
        The explained input: ``(C, H, W)`` or ``(H, W)`` image, ``(F,)`` row, ``(L,)`` token ids;
        with a leading item axis when ``batch=True``.
    target : int or array_like of int
        The explained class; an int array of length N when ``batch`` (an int is repeated).
    prediction : array_like
        The model's scores for ``x``: ``(K,)``, or ``(N, K)`` when ``batch``.
    method : str
        The method's registered name, e.g. ``"occlusion"``.
    params : dict
        The method's parameters: JSON-able values or NumPy arrays (e.g. a baseline image).
    components : array_like of int, optional
        Component-id map, the shape of ``x`` without the channel axis (images: ``(H, W)``);
        with ``batch`` either one map per item ``(N, ...)`` or one map shared by all items.
        Ids are ``0 .. M-1``.
    component_values : array_like, optional
        One value per component, ``(M,)`` or ``(N, M)``: ``component_values[..., j]`` belongs
        to id ``j``. M is the number of ids, ``max id + 1``; a map may leave ids unused (an item
        of a batch), so the rule checked is ``max id < M``.
    scores : dict
        Metric name -> value, filled by the metrics.
    info : dict
        Method diagnostics, e.g. ``{"completeness_gap": 0.01}``: numbers, strings, lists or arrays.
    kind : {"image", "tabular", "text"}, optional
        Inferred when None: a 2-D or 3-D item is an image, a 1-D float item tabular, a 1-D
        integer item text.
    feature_names : list of str, optional
        Tabular only: one name per feature.
    tokens : list of str, optional
        Text only: one string per token (or, with ``batch``, one such list per item).
    batch : bool
        Whether the arrays carry a leading item axis.
    """

    values: np.ndarray
    x: np.ndarray
    target: int | np.ndarray
    prediction: np.ndarray
    method: str
    params: dict = field(default_factory=dict)
    components: np.ndarray | None = None
    component_values: np.ndarray | None = None
    scores: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    kind: str | None = None
    feature_names: list[str] | None = None
    tokens: list[str] | list[list[str]] | None = None
    batch: bool = False

    def __post_init__(self) -> None:
        self.batch = bool(self.batch)
        self.x = _numeric("x", self.x)
        self.values = _numeric("values", self.values)
        if not np.issubdtype(self.values.dtype, np.floating):
            self.values = self.values.astype(np.float64)
        if self.values.shape != self.x.shape:
            raise ValueError(
                f"values: expected the shape of x {self.x.shape}, got {self.values.shape}"
            )
        lead = 1 if self.batch else 0
        if self.x.ndim < lead + 1:
            raise ValueError(
                f"x: expected at least {lead + 1} dimensions, got shape {self.x.shape}"
            )
        n = self.x.shape[0] if self.batch else None
        item = self.x.shape[lead:]
        if not isinstance(self.method, str) or not self.method:
            raise ValueError(f"method: expected a non-empty string, got {self.method!r}")
        for name in ("params", "scores", "info"):
            d = getattr(self, name)
            if not isinstance(d, dict) or not all(isinstance(k, str) for k in d):
                raise TypeError(f"{name}: expected a dict with string keys, got {d!r}")
            setattr(self, name, dict(d))
        if self.kind is None:
            if len(item) in (2, 3):
                self.kind = "image"
            elif len(item) == 1:
                integer = np.issubdtype(self.x.dtype, np.integer)
                self.kind = "text" if integer else "tabular"
            else:
                raise ValueError(
                    f"kind: cannot infer from an item of shape {item}; pass kind= one of {KINDS}"
                )
        if self.kind not in KINDS:
            raise ValueError(f"kind: expected one of {KINDS}, got {self.kind!r}")
        want = (2, 3) if self.kind == "image" else (1,)
        if len(item) not in want:
            raise ValueError(f"x: a {self.kind} item must have {want} dimensions, got {item}")
        if self.batch:
            t = np.asarray(self.target)
            if not np.issubdtype(t.dtype, np.integer):
                raise TypeError(f"target: expected ints of length {n}, got {self.target!r}")
            if t.ndim > 1:
                raise ValueError(f"target: expected ints of length {n}, got {self.target!r}")
            self.target = np.broadcast_to(t, (n,)).copy() if t.ndim == 0 else t
            if self.target.shape != (n,):
                raise ValueError(f"target: expected length {n}, got shape {self.target.shape}")
        else:
            if isinstance(self.target, bool):
                raise TypeError(f"target: expected an int, got {self.target!r}")
            try:
                self.target = operator.index(self.target)
            except TypeError:
                raise TypeError(f"target: expected an int, got {self.target!r}") from None
        self.prediction = _numeric("prediction", self.prediction)
        if self.prediction.ndim != lead + 1 or (self.batch and self.prediction.shape[0] != n):
            want_p = f"({n}, K)" if self.batch else "(K,)"
            raise ValueError(f"prediction: expected shape {want_p}, got {self.prediction.shape}")
        k = self.prediction.shape[-1]
        if not np.all((np.asarray(self.target) >= 0) & (np.asarray(self.target) < k)):
            raise ValueError(f"target: expected class ids in [0, {k}), got {self.target!r}")
        self._check_components(n, item)
        self._check_names(n, item)

    def _check_components(self, n: int | None, item: tuple[int, ...]) -> None:
        spatial = item[-2:] if self.kind == "image" else item
        if self.components is not None:
            c = _numeric("components", self.components)
            if not np.issubdtype(c.dtype, np.integer):
                raise TypeError(f"components: expected integer ids, got dtype {c.dtype}")
            if c.shape not in (spatial, (n, *spatial)):
                raise ValueError(
                    f"components: expected shape {spatial} (x without channels), got {c.shape}"
                )
            if c.size and c.min() < 0:
                raise ValueError(f"components: ids must be >= 0, got {c.min()}")
            self.components = c
        if self.component_values is None:
            return
        if self.components is None:
            raise ValueError("component_values: given without components")
        cv = _numeric("component_values", self.component_values)
        if not np.issubdtype(cv.dtype, np.floating):
            cv = cv.astype(np.float64)
        want_ndim = 2 if self.batch else 1
        if cv.ndim != want_ndim or (self.batch and cv.shape[0] != n):
            raise ValueError(
                f"component_values: expected shape {'(N, M)' if self.batch else '(M,)'} "
                f"with N={n}, got {cv.shape}"
            )
        top = int(self.components.max()) + 1 if self.components.size else 0
        if cv.shape[-1] < top:
            raise ValueError(
                f"component_values: expected M >= max component id + 1 = {top}, got {cv.shape}"
            )
        self.component_values = cv

    def _check_names(self, n: int | None, item: tuple[int, ...]) -> None:
        for name, kind in (("feature_names", "tabular"), ("tokens", "text")):
            names = getattr(self, name)
            if names is None:
                continue
            if self.kind != kind:
                raise ValueError(f"{name}: only for kind={kind!r}, got kind={self.kind!r}")
            names = list(names)
            nested = self.batch and bool(names) and not isinstance(names[0], str)
            rows = [list(r) for r in names] if nested else [names]
            if nested and len(rows) != n:
                raise ValueError(f"{name}: expected {n} lists (one per item), got {len(rows)}")
            for row in rows:
                if len(row) != item[0] or not all(isinstance(s, str) for s in row):
                    raise ValueError(f"{name}: expected {item[0]} strings, got {row!r}")
            setattr(self, name, rows if nested else names)

    # ------------------------------------------------------------------ container protocol

    def __len__(self) -> int:
        if not self.batch:
            raise TypeError("len() of an Explanation of one input; only batch=True has a length")
        return self.x.shape[0]

    def __getitem__(self, i: int | slice) -> Explanation:
        """Return item ``i`` (an int) as a single Explanation, or a slice as a batch.

        ``info`` and ``scores`` values with one entry per item (an array or list of length N)
        are taken at ``i``, so ``Explanation.stack([e[0], e[1], ...])`` gives ``e`` back;
        ``params`` and the other values are shared and copied as they are.
        """
        n = len(self)
        spatial_ndim = 2 if self.kind == "image" else 1
        per_item = self.components is not None and self.components.ndim == spatial_ndim + 1
        nested_tokens = (
            self.tokens is not None and bool(self.tokens) and not isinstance(self.tokens[0], str)
        )
        if isinstance(i, slice):
            idx: Any = i
            tokens = self.tokens[i] if nested_tokens else self.tokens
        else:
            idx = operator.index(i)
            if not -n <= idx < n:
                raise IndexError(f"index {i} out of range for a batch of {n}")
            tokens = self.tokens[idx] if nested_tokens else self.tokens
        pick = lambda a: None if a is None else a[idx]  # noqa: E731
        target = self.target[idx]
        return Explanation(
            values=self.values[idx],
            x=self.x[idx],
            target=target if isinstance(i, slice) else int(target),
            prediction=self.prediction[idx],
            method=self.method,
            params=dict(self.params),
            components=pick(self.components) if per_item else self.components,
            component_values=pick(self.component_values),
            scores={k: _item_of(v, idx, n) for k, v in self.scores.items()},
            info={k: _item_of(v, idx, n) for k, v in self.info.items()},
            kind=self.kind,
            feature_names=self.feature_names,
            tokens=tokens,
            batch=isinstance(i, slice),
        )

    @classmethod
    def from_array(
        cls,
        values: Any,
        x: Any,
        *,
        model: Any = None,
        target: Any = None,
        prediction: Any = None,
        method: str = "external",
        batch: bool = False,
        **fields_: Any,
    ) -> Explanation:
        """Another library's attributions as an Explanation, for our metrics, checks and report.

        ``values`` and ``x`` are arrays or tensors of one shape (one input, or a batch with
        ``batch=True``). The model's scores for ``x`` become ``prediction`` (give ``model=``,
        or ``prediction=`` yourself); ``target`` defaults to the predicted class. Other
        fields (``feature_names``, ``tokens``, ``params``, ``info``) pass through.
        """
        values, x = _plain_array(values, "values"), _plain_array(x, "x")
        if prediction is None:
            if model is None:
                raise TypeError(
                    "model: give the model (or prediction=, its scores for x) so that the "
                    "explanation knows the explained class and score"
                )
            from xaikit.model import as_model

            prediction = as_model(model).scores(x if batch else x[None])
            prediction = prediction if batch else prediction[0]
        prediction = np.asarray(prediction)
        if target is None:
            target = prediction.argmax(axis=-1)
            target = target if batch else int(target)
        return cls(
            values=values,
            x=x,
            target=target,
            prediction=prediction,
            method=method,
            batch=batch,
            **fields_,
        )

    @classmethod
    def from_captum(
        cls, attributions: Any, x: Any, *, model: Any = None, method: str = "captum", **kw: Any
    ) -> Explanation:
        """Captum's attributions (a tensor with the batch axis, as ``attribute`` returns them)
        for inputs ``x`` ``(N, ...)`` as a batch Explanation; see :meth:`from_array`."""
        if isinstance(attributions, tuple):
            if len(attributions) != 1:
                raise ValueError(
                    f"attributions: expected one tensor (one input), got a tuple of "
                    f"{len(attributions)}"
                )
            (attributions,) = attributions
        return cls.from_array(attributions, x, model=model, method=method, batch=True, **kw)

    def to_shap(self) -> Any:
        """This explanation as a ``shap.Explanation`` (for shap's plots; shap imported now).

        ``base_values`` is the explained score minus the attributions' sum (the component
        values' sum when there are components) for the methods whose attributions add up to it
        (KernelSHAP, Integrated Gradients, DeepLIFT, ...), else None. With components (LIME or
        KernelSHAP on superpixels) each component's value is spread evenly over its elements,
        so that shap's rule holds: base value plus the sum of ``values`` is the score (here
        every element carries its component's whole value, which would count it many times).
        """
        import shap

        values = np.asarray(self.values)
        if self.component_values is not None:
            values = self._spread_component_values()
        data = np.asarray(self.x)
        base = None
        if self.method in ADDITIVE_METHODS:
            # With components (KernelSHAP on superpixels) every element carries its component's
            # whole value: the component values are what adds up.
            additive = values if self.component_values is None else self.component_values
            additive = np.asarray(additive)
            lead = additive.shape[0] if self.batch else None
            flat = additive.reshape(lead, -1) if self.batch else additive.reshape(1, -1)
            rows = np.atleast_2d(self.prediction)
            targets = np.atleast_1d(self.target)
            explained = rows[np.arange(len(rows)), targets]
            base = explained - flat.sum(axis=1)
            base = base if self.batch else float(base[0])
        return shap.Explanation(
            values=values,
            base_values=base,
            data=data,
            feature_names=self.feature_names,
        )

    def _spread_component_values(self) -> np.ndarray:
        """Values of the shape of ``values``: each component's value divided evenly among its
        elements (all channels of its pixels for images)."""
        values = np.asarray(self.values)
        item_shape = values.shape[1:] if self.batch else values.shape
        spatial = item_shape[-2:] if self.kind == "image" else item_shape
        per_position = int(np.prod(item_shape)) // int(np.prod(spatial))  # channels
        values_cv = np.atleast_2d(np.asarray(self.component_values, dtype=np.float64))
        maps = np.asarray(self.components)
        out = np.empty((len(values_cv), *item_shape), dtype=np.float64)
        for i, cv in enumerate(values_cv):
            ids = maps[i] if maps.ndim > len(spatial) else maps
            counts = np.bincount(ids.ravel(), minlength=len(cv))[: len(cv)] * per_position
            density = np.divide(cv, counts, out=np.zeros_like(cv), where=counts > 0)
            out[i] = np.broadcast_to(density[ids], item_shape)
        out = out.astype(values.dtype if values.dtype.kind == "f" else np.float64)
        return out if self.batch else out[0]

    @classmethod
    def stack(cls, items: list[Explanation]) -> Explanation:
        """Single-input explanations of one method as one batch (the inverse of ``e[i]``).

        Per-item ``info`` and ``scores`` values become arrays with an item axis where they
        stack, else lists (a value all items share stays one value); ``params`` are the first
        item's.
        """
        if not items or any(not isinstance(e, Explanation) or e.batch for e in items):
            raise TypeError("items: expected a non-empty list of single-input Explanations")
        first = items[0]
        if any(e.method != first.method or e.kind != first.kind for e in items):
            raise ValueError("items: expected explanations of one method and kind")

        def gather(values: list) -> Any:
            if any(v is None for v in values):
                return None
            if all(type(v) in _SHARED for v in values) and all(v == values[0] for v in values):
                return values[0]  # a value the batch shared (a note, a count): e[i] copied it
            arrays = [np.asarray(v) for v in values]
            if all(a.shape == arrays[0].shape and a.dtype != object for a in arrays):
                return np.stack(arrays)
            return list(values)

        info_keys = [k for k in first.info if all(k in e.info for e in items)]
        score_keys = [k for k in first.scores if all(k in e.scores for e in items)]
        return cls(
            values=np.stack([e.values for e in items]),
            x=np.stack([e.x for e in items]),
            target=np.array([e.target for e in items]),
            prediction=np.stack([e.prediction for e in items]),
            method=first.method,
            params=dict(first.params),
            components=gather([e.components for e in items]),
            component_values=gather([e.component_values for e in items]),
            info={k: gather([e.info[k] for e in items]) for k in info_keys},
            scores={k: gather([e.scores[k] for e in items]) for k in score_keys},
            kind=first.kind,
            feature_names=first.feature_names,
            tokens=None if first.tokens is None else [e.tokens for e in items],
            batch=True,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Explanation):
            return NotImplemented
        return all(_same(getattr(self, f.name), getattr(other, f.name)) for f in fields(self))

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def __repr__(self) -> str:
        target = self.target.tolist() if isinstance(self.target, np.ndarray) else self.target
        if isinstance(target, list) and len(target) > 6:
            target = f"[{', '.join(map(str, target[:6]))}, ...]"
        parts = [f"method={self.method!r}", f"kind={self.kind!r}", f"target={target}"]
        parts.append(f"shape={self.values.shape}")
        if self.batch:
            parts.append(f"batch={len(self)}")
        if self.component_values is not None:
            parts.append(f"components={self.component_values.shape[-1]}")
        if self.scores:
            parts.append(f"scores={self.scores!r}")
        return f"Explanation({', '.join(parts)})"

    def top(self, k: int = 10) -> np.ndarray:
        """Indices of the ``k`` largest ``|values|``, largest first (ties: lower index first).

        Returns component ids ``(k,)`` when ``component_values`` exist, feature/token indices
        ``(k,)`` for a 1-D input, else coordinates ``(k, ndim)`` (e.g. ``(c, h, w)`` rows).
        With ``batch`` the result has a leading item axis.
        """
        k = check_int(k, name="k", minimum=0)
        if self.batch:
            return np.stack([self[i].top(k) for i in range(len(self))])
        v = self.component_values if self.component_values is not None else self.values
        order = np.argsort(-np.abs(v), axis=None, kind="stable")[:k]
        if v.ndim == 1:
            return order
        return np.stack(np.unravel_index(order, v.shape), axis=-1)

    # ------------------------------------------------------------------ files

    def save(self, path: str | os.PathLike, *, compress: bool = False) -> Path:
        """Write one ``.npz`` file (suffix added if missing) atomically; return its path.

        Arrays are stored as ``.npy`` members (``params/...``, ``info/...``, ``scores/...`` for
        array-valued entries), everything else as one JSON member; no pickle. The file is written
        to a temporary name in the same folder and renamed into place, so on any error no
        partial file exists and a file already at ``path`` is left unchanged.
        """
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        if not path.parent.is_dir():
            raise FileNotFoundError(f"path: folder {str(path.parent)!r} does not exist")
        arrays: dict[str, np.ndarray] = {f: getattr(self, f) for f in ARRAY_FIELDS}
        arrays = {k: v for k, v in arrays.items() if v is not None}
        notes: list[str] = []
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "xaikit_version": __version__,
            "method": self.method,
            "kind": self.kind,
            "batch": self.batch,
            "feature_names": self.feature_names,
            "tokens": self.tokens,
        }
        for name in ("target", "params", "info", "scores"):
            meta[name] = _json_safe(getattr(self, name), key=name, arrays=arrays, notes=notes)
        meta["notes"] = notes
        text = json.dumps(meta, allow_nan=True, ensure_ascii=False)
        arrays[META_KEY] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
        mode = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
        with (
            _files.atomic_write(path) as fh,
            zipfile.ZipFile(fh, "w", compression=mode, allowZip64=True) as zf,
        ):
            for key, arr in arrays.items():
                with zf.open(key + ".npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, arr, allow_pickle=False)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Explanation:
        """Read a file written by :meth:`save` (``allow_pickle=False``).

        Raises
        ------
        FileNotFoundError
            If neither ``path`` nor ``path + ".npz"`` exists.
        ValueError
            If the file is not an xaikit explanation, is damaged, or declares arrays larger
            than ``XAIKIT_MAX_LOAD_BYTES`` (default 2 GiB; see docs/cli.md).
        """
        path = Path(path)
        if (
            not path.exists()
            and path.suffix != ".npz"
            and path.with_name(path.name + ".npz").exists()
        ):
            path = path.with_name(path.name + ".npz")
        if not path.is_file():
            raise FileNotFoundError(f"path: no explanation file at {str(path)!r}")
        # Member sizes are checked against XAIKIT_MAX_LOAD_BYTES before anything is read.
        arrays = _files.load_npz(path, name="path")
        try:
            meta = json.loads(bytes(arrays.pop(META_KEY)).decode("utf-8"))
            if meta.get("format") != FORMAT or not isinstance(meta.get("version"), int):
                raise ValueError("no xaikit metadata")
        except Exception as err:
            raise ValueError(f"path: {str(path)!r} is not an xaikit explanation ({err})") from err
        if meta["version"] > FORMAT_VERSION:
            raise ValueError(
                f"path: {str(path)!r} has format version {meta['version']}; this xaikit reads "
                f"up to {FORMAT_VERSION}; upgrade xaikit"
            )
        try:
            return cls(
                **{f: arrays.get(f) for f in ARRAY_FIELDS},
                **{k: _from_json(meta[k], arrays) for k in ("target", "params", "info", "scores")},
                **{k: meta[k] for k in ("method", "kind", "feature_names", "tokens", "batch")},
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"path: {str(path)!r} holds an invalid explanation ({err})") from err

    # ------------------------------------------------------------------ plotting

    def plot(
        self,
        *,
        ax: Any = None,
        cmap: str | None = None,
        signed: bool | None = None,
        top_k: int = 20,
        title: str | None = None,
        show_input: bool = True,
    ) -> Any:
        """Draw the explanation and return the matplotlib ``Figure``.

        Images: the input in gray with the channel-summed attributions over it and a colour
        bar, in a diverging map (``"RdBu_r"``, limits symmetric around 0) when any value is
        negative, else a sequential one (``"inferno"``); ``signed`` overrides the choice.
        Tabular: horizontal bars of the ``top_k`` features by ``|value|``. Text: the tokens on
        backgrounds coloured by their values (diverging map). A batch: a grid of the first
        16 items (``ax`` must be None). No GUI backend is used; nothing is shown.
        """
        top_k = check_int(top_k, name="top_k", minimum=1)
        return _plot(
            self, ax=ax, cmap=cmap, signed=signed, top_k=top_k, title=title, show_input=show_input
        )


# Methods whose attributions sum to the explained score minus a reference score.
ADDITIVE_METHODS = frozenset(
    {"kernel_shap", "integrated_gradients", "expected_gradients", "deeplift", "deeplift_shap"}
)


def _plain_array(value: Any, name: str) -> np.ndarray:
    """A copy of ``value`` as an array: the explanation must not change with the caller's."""
    if hasattr(value, "detach"):  # a torch tensor, without importing torch here
        value = value.detach().cpu().numpy()
    return np.array(value, copy=True)


# ---------------------------------------------------------------------- plotting helpers


def _plot(e: Explanation, *, ax: Any, title: str | None, **kw: Any) -> Any:
    from xaikit._plotting import new_figure

    if e.kind == "text" and ax is None:  # tokens size their own figure, one block per item
        if not e.batch:
            label = f"{e.method} · target {e.target}" if title is None else title
            return plot_token_maps([(e, label)], cmap=kw["cmap"])
        shown = min(len(e), MAX_GRID)
        items = [(e[i], f"#{i} · target {e.target[i]}") for i in range(shown)]
        return plot_token_maps(items, cmap=kw["cmap"])
    if not e.batch:
        if ax is None:
            size = {"image": (5, 4), "tabular": (6, 1.2 + 0.3 * min(kw["top_k"], e.x.size))}
            ax = new_figure(size.get(e.kind, (8, 2))).add_subplot()
        _draw(e, ax, title=f"{e.method} · target {e.target}" if title is None else title, **kw)
        return ax.figure
    if ax is not None:
        raise ValueError("ax: a batch draws its own grid; pass ax=None or plot one item e[i]")
    n = len(e)
    shown = min(n, MAX_GRID)
    cols = min(4, shown)
    rows = -(-shown // cols)
    fig = new_figure((4.5 * cols, 3.5 * rows))
    for i, a in enumerate(fig.subplots(rows, cols, squeeze=False).ravel()):
        if i < shown:
            _draw(e[i], a, title=f"#{i} · target {e.target[i]}", **kw)
        else:
            a.set_axis_off()
    note = f"first {shown} of {n} items" if shown < n else f"{n} items"
    fig.suptitle(plain(f"{e.method} · {note}" if title is None else f"{title} ({note})"))
    return fig


def _finite_range(a: np.ndarray) -> tuple[float, float]:
    """(min, max) of the finite entries of ``a``; (0, 0) when there are none."""
    a = a[np.isfinite(a)]
    return (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)


def _draw(e: Explanation, ax: Any, *, cmap, signed, top_k, title, show_input) -> None:
    from matplotlib import colormaps

    fig = ax.figure
    v = np.asarray(e.values, dtype=np.float64)
    ax.set_title(plain(title))
    if e.kind == "image":
        if v.ndim == 3:
            v = v.sum(axis=0)
        lo, top = _finite_range(v)
        signed = lo < 0 if signed is None else signed
        hi = max(-lo, top)
        if signed:
            lim = (-hi, hi) if hi > 0 else (-1.0, 1.0)
        else:
            lim = (min(lo, 0.0), top) if top > min(lo, 0.0) else (min(lo, 0.0), min(lo, 0.0) + 1)
        if show_input:
            gray = np.asarray(e.x, dtype=np.float64)
            gray = gray.mean(axis=0) if gray.ndim == 3 else gray
            g0, g1 = _finite_range(gray)
            gray = (gray - g0) / (g1 - g0) if g1 > g0 else np.zeros_like(gray)
            ax.imshow(gray, cmap="gray", vmin=0.0, vmax=1.0)
        name = cmap or ("RdBu_r" if signed else "inferno")
        im = ax.imshow(v, cmap=name, vmin=lim[0], vmax=lim[1], alpha=0.6 if show_input else 1.0)
        fig.colorbar(im, ax=ax, shrink=0.85)
        ax.set_axis_off()
    elif e.kind == "tabular":
        names = e.feature_names or [f"x[{i}]" for i in range(v.size)]
        order = np.argsort(-np.abs(v), kind="stable")[:top_k][::-1]  # largest at the top
        pos, neg = (colormaps[cmap](0.9), colormaps[cmap](0.1)) if cmap else ("#b2182b", "#2166ac")
        ax.barh(np.arange(order.size), v[order], color=[pos if v[i] >= 0 else neg for i in order])
        ax.set_yticks(np.arange(order.size), labels=[plain(names[i]) for i in order])
        ax.axvline(0.0, color="black", linewidth=0.8)
        more = f" (top {order.size} of {v.size} by |value|)" if order.size < v.size else ""
        ax.set_xlabel("attribution" + more)
    else:
        _draw_text(e, ax, v, colormaps[cmap or "RdBu_r"])


# Token maps: sizes in points and inches, so that the layout does not depend on the figure.
_TOKEN_PT = 11.0  # token font size
_CHAR_IN = 0.6 * _TOKEN_PT / 72  # advance of one monospace character
_LINE_IN = 1.9 * _TOKEN_PT / 72  # one line of tokens, boxes included
_MARGIN_IN = 0.15
_HEADER_IN = 0.42  # title on the left, colour bar with its tick labels on the right
_GAP_IN = 0.12
_BAR_IN = (2.0, 0.09)  # width, height of a colour bar


def _token_lines(tokens: list[str], width_in: float) -> tuple[list[tuple[float, int]], int]:
    """(column in inches, line) of each token, wrapped at ``width_in``; and the line count."""
    places, col, line = [], 0.0, 0
    for tok in tokens:
        width = (len(tok) + 1) * _CHAR_IN
        if col > 0 and col + width > width_in:
            col, line = 0.0, line + 1
        places.append((col, line))
        col += width
    return places, line + 1


def _tokens_of(e: Explanation) -> list[str]:
    return e.tokens or [str(t) for t in np.asarray(e.x).tolist()]


def _token_norm(v: np.ndarray) -> Any:
    from matplotlib.colors import Normalize

    hi = max(np.abs(_finite_range(v)))
    return Normalize(-hi, hi) if hi > 0 else Normalize(-1.0, 1.0)


def plot_token_maps(
    items: list[tuple[Explanation, str]], *, cmap: str | None = None, width: float = 9.0
) -> Any:
    """Token explanations one under the other, each titled, with its own colour bar.

    ``items`` are ``(explanation, title)`` pairs of text explanations (one input each). The
    figure is ``width`` inches wide and as tall as the wrapped tokens need: each block is a
    header (the title on the left, a horizontal colour bar with its ticks on top on the
    right) above the tokens on backgrounds coloured by their values (diverging map, limits
    symmetric around 0). Sizes are in inches, so nothing overlaps whatever the token count.
    """
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable

    from xaikit._plotting import new_figure

    if not items:
        raise ValueError("items: expected at least one (explanation, title) pair")
    cm = colormaps[cmap or "RdBu_r"]
    text_w = width - 2 * _MARGIN_IN
    blocks = []
    for e, title in items:
        tokens = _tokens_of(e)
        places, lines = _token_lines(tokens, text_w)
        blocks.append((e, title, tokens, places, lines * _LINE_IN + 0.08))
    height = sum(_HEADER_IN + h + _GAP_IN for *_, h in blocks) + _GAP_IN
    fig = new_figure((width, height), layout=None)
    top = height - _GAP_IN  # inches from the bottom of the figure
    for e, title, tokens, places, body in blocks:
        v = np.asarray(e.values, dtype=np.float64).ravel()
        norm = _token_norm(v)
        bottom = top - _HEADER_IN - body
        ax = fig.add_axes((_MARGIN_IN / width, bottom / height, text_w / width, body / height))
        ax.set_axis_off()
        ax.set_title(title, loc="left", fontsize=10, pad=4)
        bar_w, bar_h = _BAR_IN
        cax = fig.add_axes(
            ((width - _MARGIN_IN - bar_w) / width, (bottom + body + 0.08) / height,
             bar_w / width, bar_h / height)
        )  # fmt: skip
        bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cm), cax=cax, orientation="horizontal")
        bar.set_ticks(
            [norm.vmin, 0.0, norm.vmax], labels=[f"{norm.vmin:.3g}", "0", f"{norm.vmax:.3g}"]
        )
        cax.xaxis.set_ticks_position("top")
        cax.tick_params(labelsize=7, length=2, pad=1)
        _draw_tokens(ax, tokens, v, cm, norm, places, width_in=text_w, height_in=body)
        top = bottom - _GAP_IN
    return fig


def _draw_tokens(ax, tokens, v, cm, norm, places, *, width_in, height_in) -> None:
    """Each token in its coloured box at ``places`` (inches), in axes coordinates."""
    for tok, value, (col, row) in zip(tokens, v, places, strict=True):
        r, g, b, _ = cm(norm(value))
        ink = "white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black"
        box = {"facecolor": (r, g, b), "edgecolor": "none", "pad": 1.5}
        ax.text(
            col / width_in,
            1.0 - (0.04 + (row + 0.5) * _LINE_IN) / height_in,
            plain(tok),
            transform=ax.transAxes,
            ha="left",
            va="center",
            family="monospace",
            fontsize=_TOKEN_PT,
            color=ink,
            bbox=box,
        )


def _draw_text(e: Explanation, ax: Any, v: np.ndarray, cm: Any) -> None:
    """Tokens in a given axes: wrapped at its width, a colour bar taken from its space."""
    from matplotlib.cm import ScalarMappable

    fig = ax.figure
    norm = _token_norm(v)
    fig.colorbar(ScalarMappable(norm=norm, cmap=cm), ax=ax, orientation="horizontal", shrink=0.6)
    box = ax.get_position()
    width_in, height_in = box.width * fig.get_figwidth(), box.height * fig.get_figheight()
    tokens = _tokens_of(e)
    places, _ = _token_lines(tokens, width_in)
    _draw_tokens(ax, tokens, v.ravel(), cm, norm, places, width_in=width_in, height_in=height_in)
    ax.set_axis_off()


# Types of info values a batch shares (e[i] copies them); per-item values come out of their
# arrays as NumPy scalars or arrays.
_SHARED = (int, float, bool, str)


def _item_of(value: Any, idx: Any, n: int) -> Any:
    """``value[idx]`` for a per-item value of a batch of ``n`` (array or list), else ``value``."""
    if isinstance(value, np.ndarray) and value.ndim >= 1 and len(value) == n:
        return value[idx]
    if isinstance(value, list) and len(value) == n:
        return value[idx]
    return value
