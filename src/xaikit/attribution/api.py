"""``xk.explain`` and ``xk.methods``: one call shape for every local explanation method.

Everything common to all methods (wrapping the model, checking ``x`` and ``target``, the
predicted class as default target, building the :class:`Explanation`) lives here, so a method
file only says what it computes. The methods themselves register in ``registry.py``.
"""

from __future__ import annotations

import dataclasses
import difflib
import warnings
from typing import Any

import numpy as np
import torch

from xaikit._tables import Table, frame_input, is_frame
from xaikit._torch import embedding_layer_name, has_embedding, is_torchscript
from xaikit._validation import check_batch, check_targets, describe
from xaikit.attribution.defaults import DEFAULT_METHOD
from xaikit.attribution.registry import METHODS, torchscript_methods
from xaikit.explanation import Explanation
from xaikit.model import Model, as_model


def methods() -> dict[str, dict[str, Any]]:
    """Registered method names with their parameters' defaults, gradient need and paper."""
    _load_methods()
    return {
        name: {
            "params": dict(m.defaults),
            "needs_gradients": m.needs_gradients,
            "needs": m.needs,
            "needs_hooks": m.needs_hooks,
            "reference": m.reference,
        }
        for name, m in sorted(METHODS.items())
    }


def explain(
    model: Any,
    x: Any,
    *,
    method: str = DEFAULT_METHOD,
    target: Any = None,
    batch: bool = False,
    feature_names: list[str] | None = None,
    tokens: list[str] | None = None,
    **params: Any,
) -> Explanation:
    """Explain the model's output for ``target`` on input ``x`` with a local method.

    Parameters
    ----------
    model : nn.Module, xaikit.Model, or callable on NumPy batches
    x : array or tensor
        One input without a batch axis: ``(C, H, W)`` image, ``(F,)`` row, ``(L,)`` token ids;
        with ``batch=True``, a leading item axis and each item is explained.
    method : str
        A name from :func:`methods`; default occlusion, which works on every model (see
        :mod:`xaikit.attribution.defaults` and docs/methods.md for why).
    target : int, sequence of int, or None
        The explained class; ``None`` explains the predicted class (per item).
    feature_names, tokens : list of str, optional
        Names of a row's features, or the token strings, carried into the result and its plot.
    **params
        The method's parameters (see ``xk.methods()[method]["params"]``).

    Returns
    -------
    Explanation
        ``values`` of the shape of ``x``; with ``batch=True`` every array has the item axis.
    """
    _load_methods()
    if not isinstance(batch, (bool, np.bool_)):  # a truthy string or 1 read as True
        raise TypeError(f"batch: expected True or False, got {describe(batch)}")
    spec = METHODS.get(method) if isinstance(method, str) else None
    if spec is None:
        close = difflib.get_close_matches(str(method), list(METHODS), n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"method: expected one of {sorted(METHODS)}, got {method!r}{hint}")
    unknown = sorted(set(params) - set(spec.defaults))
    if unknown:
        raise TypeError(
            f"{unknown[0]}: not a parameter of method {method!r}; its parameters are "
            f"{sorted(spec.defaults)}"
        )
    wrapped: Model = as_model(model)
    if spec.needs_gradients and not wrapped.is_torch:
        raise TypeError(
            f"model: method {method!r} needs {spec.needs}, so a PyTorch model; got a callable "
            "on NumPy arrays (use occlusion, lime, kernel_shap or rise)"
        )
    if spec.needs_hooks and is_torchscript(wrapped.module):
        usable = torchscript_methods()
        raise TypeError(
            f"method: {method!r} needs forward hooks on the model's layers, which a TorchScript "
            f"module does not run; load the nn.Module itself, or use one of {usable}"
        )
    if (
        spec.needs_gradients
        and "layer" in spec.defaults
        and params.get("layer") is None
        and _token_ids(x)
        and wrapped.is_torch
        and embedding_layer_name(wrapped.module) is not None
    ):  # token ids have no gradient: attribute to their embeddings, one value per token
        params = {**params, "layer": embedding_layer_name(wrapped.module)}
    elif (
        spec.needs_gradients
        and "layer" not in spec.defaults
        and method != "attention_rollout"  # its own refusal points to xaikit.text
        and _token_ids(x)
        and wrapped.is_torch
        and has_embedding(wrapped.module)
    ):
        with_layer = sorted(
            n for n, m in METHODS.items() if "layer" in m.defaults and not n.startswith("gradcam")
        )
        raise TypeError(
            f"x: {method!r} differentiates or blends the input itself, and the token ids of "
            f"{type(wrapped.module).__name__} have no gradient; use one of {with_layer} (they "
            "attribute to the token embeddings) or occlusion, lime or kernel_shap"
        )
    if is_frame(x):  # a DataFrame row (or rows): its columns name the features
        rows_given = is_frame(params.get("baseline"))
        x, params, wrapped = _from_table(x, params, wrapped, batch=batch)
        if "baseline" in spec.defaults and not rows_given:
            _refuse_categorical_removal(wrapped.table)
        if feature_names is None:
            feature_names = wrapped.table.feature_names
    elif feature_names is None and wrapped.table is not None:
        feature_names = wrapped.table.feature_names
    if batch and not spec.needs_gradients and _deleted_padding(x):
        # Padding (-1) is taken out of a sequence by the model; as a component it would be
        # "removed" into a real token (and change the other tokens' values): each row is
        # explained without its padding, which gets 0.
        items = []
        for i in range(len(x)):
            row = _row(x, i)
            one = explain(
                wrapped,
                row[~_padding(row)],
                method=method,
                target=None if target is None else _target_of(target, i),
                feature_names=feature_names,
                **params,
            )
            items.append(_padded_back(one, row, tokens=None if tokens is None else tokens[i]))
        return Explanation.stack(_same_component_count(items))
    if batch and wrapped.per_item_kwargs:
        # Perturbed copies of an item need that item's attention mask: one item at a time.
        items = [
            explain(
                wrapped.item_view(i),
                x[i],
                method=method,
                target=None if target is None else _target_of(target, i),
                feature_names=feature_names,
                tokens=None if tokens is None else tokens[i],
                **params,
            )
            for i in range(len(x))
        ]
        return Explanation.stack(items)
    if not batch:
        suggest_batch(wrapped, x)
    xb = _as_batch(x, batch=batch)
    if not spec.needs_gradients:  # the perturbation methods read rows as background data
        _warn_if_per_item_baseline(params.get("baseline"), xb, batch=batch)
    if not batch and (np.ndim(target) != 0 or isinstance(target, (str, bytes))):
        raise TypeError(
            f"target: expected one class index (int) for one input, got {describe(target)}"
        )
    if spec.scores_at_input:  # the method's own forward pass gives the scores and the class
        targets = None
        if target is not None:
            if wrapped.n_classes is None:  # one item's forward tells K, so the range is
                wrapped.scores(xb[:1])  # checked before the method runs, as for the others
            targets = check_targets(target, n=len(xb), n_classes=wrapped.n_classes)
        result = spec.function(wrapped, xb, targets, **params)
        scores = np.asarray(result.scores)
        targets = scores.argmax(axis=1) if targets is None else targets
    else:
        scores = wrapped.scores(xb)
        targets = scores.argmax(axis=1)
        if target is not None:
            targets = check_targets(target, n=len(xb), n_classes=scores.shape[1])
        result = spec.function(wrapped, xb, targets, **params)
    used = {**spec.defaults, **params, **result.params}
    # a tensor (a baseline) kept as its values: the Explanation holds NumPy data
    used = {k: _as_numpy(v) if isinstance(v, torch.Tensor) else v for k, v in used.items()}
    info = dict(result.info)
    if wrapped.output == "scores" and scores.shape[1] == 1:
        info["explained"] = "prediction"  # a regressor: there is no class to name
    if not batch:
        info = {k: _first(v, len(xb)) for k, v in info.items()}
    return Explanation(
        values=result.values if batch else result.values[0],
        x=np.asarray(xb if batch else xb[0]),
        target=targets if batch else int(targets[0]),
        prediction=scores if batch else scores[0],
        method=method,
        params=used,
        components=_item(result.components, batch),
        component_values=_item(result.component_values, batch),
        info=info,
        batch=batch,
        feature_names=None if feature_names is None else [str(n) for n in feature_names],
        tokens=tokens,
    )


def _as_numpy(tensor: torch.Tensor) -> np.ndarray:
    t = tensor.detach().cpu()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()


def _refuse_categorical_removal(table: Table) -> None:
    """Refuse to remove a categorical column by a number: its code would stand for whichever
    category sorts first among the rows at hand (a row's own value when it is alone, so the
    column got exactly 0; another one in a batch). Background rows give real values."""
    names = [n for n, cats in zip(table.feature_names, table.categories, strict=True) if cats]
    if names:
        raise ValueError(
            f"baseline: column {names[0]!r} is categorical, and a number cannot stand for its "
            "removal; pass background rows as a DataFrame (baseline=frame.sample(50), or the "
            "training rows), whose values replace a removed feature"
        )


def _from_table(x: Any, params: dict, model: Model, *, batch: bool):
    """A DataFrame ``x`` (and DataFrame parameters such as ``background``) as float arrays,
    and the model's view that gets DataFrames back (:func:`xaikit._tables.frame_input`)."""
    frames = {k: v for k, v in params.items() if is_frame(v)}
    rows, view, frame_rows = frame_input(model, x, name="x", others=frames)
    if not batch:
        if len(rows) != 1:
            raise ValueError(
                f"x: one input is one row; got a DataFrame of {len(rows)} rows (pass batch=True "
                "to explain each row)"
            )
        rows = rows[0]
    return rows, {**params, **frame_rows}, view


def _padding(ids: np.ndarray) -> np.ndarray:
    """Where token ids are :data:`xaikit.text.DELETED` (-1): padding the model takes out."""
    from xaikit.text.tokenizer import DELETED  # here: xaikit.text imports this module

    return np.asarray(ids) == DELETED


def _deleted_padding(x: Any) -> bool:
    """Token ids ``(N, L)`` padded with :data:`xaikit.text.DELETED` (-1)."""
    return _token_ids(x) and np.ndim(x) == 2 and bool(_padding(np.asarray(x)).any())


def _row(x: Any, i: int) -> np.ndarray:
    return np.asarray(x[i].cpu() if isinstance(x, torch.Tensor) else x[i])


def _padded_back(e: Explanation, row: np.ndarray, *, tokens: Any) -> Explanation:
    """``e`` of a row without its padding, laid out on the padded row (padding: value 0)."""
    keep = ~_padding(row)
    values = np.zeros(row.shape, dtype=e.values.dtype)
    values[keep] = e.values
    components, component_values = e.components, e.component_values
    if components is not None and component_values is not None:
        # the padding as one more component, of value 0
        components = np.full(row.shape, len(component_values), dtype=np.asarray(components).dtype)
        components[keep] = e.components
        component_values = np.append(component_values, 0.0)
    elif components is not None:
        components = None  # a map over the unpadded row only
    return dataclasses.replace(
        e,
        values=values,
        x=row.copy(),
        components=components,
        component_values=component_values,
        tokens=tokens,
    )


def _same_component_count(items: list[Explanation]) -> list[Explanation]:
    """Items' ``component_values`` padded with 0 to the largest count, as a batch has them."""
    counts = [len(e.component_values) for e in items if e.component_values is not None]
    if len(counts) != len(items):
        return items
    width = max(counts)
    return [
        dataclasses.replace(
            e, component_values=np.pad(e.component_values, (0, width - len(e.component_values)))
        )
        for e in items
    ]


def _token_ids(x: Any) -> bool:
    dtype = getattr(x, "dtype", None)
    if isinstance(dtype, torch.dtype):
        return not dtype.is_floating_point and dtype != torch.bool
    return dtype is not None and np.dtype(dtype).kind in "iu"


def _target_of(target: Any, i: int) -> Any:
    return target if np.ndim(target) == 0 else np.asarray(target)[i]


def _warn_if_per_item_baseline(baseline: Any, xb: Any, *, batch: bool) -> None:
    """For a perturbation method, an array of the batch's shape reads as background rows
    (R = N), not one baseline per item as Captum takes it (and as Integrated Gradients here
    does): say so, since every item is then explained against all rows."""
    shape = getattr(baseline, "shape", None)
    if batch and shape is not None and len(xb) > 1 and tuple(shape) == tuple(np.shape(xb)):
        warnings.warn(
            f"baseline: an array of the batch's shape {tuple(shape)} is taken as {len(xb)} "
            "background rows, used alike for every item (not one baseline per item); for "
            "per-item baselines explain the items one at a time",
            stacklevel=3,
        )


def suggest_batch(
    model: Model,
    x: Any,
    *,
    remedy: str = "pass batch=True to explain every item (or x[0] for the first)",
) -> None:
    """One input with a batch axis, e.g. ``X[:1]`` of shape ``(1, C, H, W)`` for a model whose
    first convolution takes ``(C, H, W)`` items: say what to do (``remedy``) instead of failing
    later on a ``(1, 1, C, H, W)`` batch."""
    from torch import nn

    if model.module is None or isinstance(x, (str, bytes)):
        return
    first = next(
        (m for m in model.module.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))),
        None,
    )
    if first is None:
        return
    item_ndim = len(first.kernel_size) + 1  # by the kernel: a subclass (timm's StdConv2d) too
    shape = tuple(np.shape(x))
    if len(shape) == item_ndim + 1:
        raise ValueError(
            f"x: expected one input of {item_ndim} axes (C, ...) for the model's first "
            f"convolution, got shape {shape}, which looks like a batch of {shape[0]}; {remedy}"
        )


def _as_batch(x: Any, *, batch: bool) -> np.ndarray:
    """``x`` as a batch in memory of its own: the explanation keeps it, and the caller may
    change their array afterwards (explanations hold NumPy arrays)."""
    arr = check_batch(x if batch else _with_item_axis(x), name="x")
    if isinstance(arr, torch.Tensor):
        if arr.dtype == torch.bfloat16:  # NumPy has no bfloat16; float32 holds it exactly
            arr = arr.float()
        arr = arr.cpu().numpy()
    return np.array(arr, copy=True, order="C")


def _with_item_axis(x: Any):
    if hasattr(x, "unsqueeze"):
        return x.unsqueeze(0)
    if isinstance(x, (str, bytes)) or x is None:
        return x  # check_batch names the problem
    return np.asarray(x)[None]


def _item(value: np.ndarray | None, batch: bool) -> np.ndarray | None:
    if value is None or batch:
        return value
    return value[0]


def _first(value: Any, n: int) -> Any:
    if isinstance(value, np.ndarray) and value.ndim >= 1 and len(value) == n:
        item = value[0]
        return item.item() if np.ndim(item) == 0 else item
    return value


def _load_methods() -> None:
    """Import the method modules so their ``register`` calls run."""
    from xaikit.attribution import _catalogue  # noqa: F401
