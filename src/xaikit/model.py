"""The Model adapter: one object that answers ``scores``, ``gradients`` and ``layer`` for any model.

Whatever the user has (an ``nn.Module``, a TorchScript file, or a ``predict_proba``-style
callable on NumPy batches), every method in xaikit talks to it through this adapter, which

- chunks any number of inputs into batches of a size it finds by measuring throughput (once
  per model, kind of call and input shape, then remembered);
- leaves no trace on the user's model: every module's training flag is restored, BatchNorm
  statistics are never updated (the call runs in eval mode), parameters' ``requires_grad`` and
  ``.grad`` are untouched, and every hook it adds is removed, also when the forward raises.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import os
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xaikit import batching, layout
from xaikit._progress import progress_bar
from xaikit._tables import Table, is_frame
from xaikit._torch import (
    first_tensor,
    float_dtype,
    float_output,
    has_embedding,
    input_mismatch,
    is_torchscript,
    model_output,
    module_device,
    preserved_state,
)
from xaikit._validation import (
    check_batch,
    check_choice,
    check_finite,
    check_positive_int,
    check_targets,
    describe,
)

OUTPUTS = ("logits", "probabilities", "log_probabilities", "scores")
GRADIENT_OF = ("score", "probability", "log_probability", "loss")
PROBABILITY_SLACK = 1e-4  # float rounding of a softmax or a calibrated model's output


class Model:
    """Adapter around a PyTorch module, a TorchScript file or a callable on NumPy batches.

    Parameters
    ----------
    model : nn.Module, str or os.PathLike, callable, or object with ``predict_proba``
        The model to explain. A path is loaded as TorchScript. A callable receives a NumPy
        batch ``(N, ...)`` and must return scores ``(N, K)``; an object with ``predict_proba``
        (scikit-learn style) is called through that method.
    output : {"logits", "probabilities", "log_probabilities", "scores"}, optional
        What the model returns. Default: ``"logits"`` for PyTorch models, ``"probabilities"``
        for callables. Metrics that need probabilities apply softmax to logits.
    device : str or torch.device, optional
        Where a PyTorch model runs. Default: the device of its first parameter (CPU if none).
    batch_size : int or "auto"
        Items per forward pass, at most (a call's items run in even batches: 100 at 32 as four
        of 25). ``"auto"`` measures throughput on the first large calls
        (largest batch that fits and still gains, on a GPU) and remembers the best size per
        kind of call and input shape.
    input_shape : tuple of int, optional
        Shape of one input item; when given, every call checks it up front.
    forward_kwargs : dict, optional
        Extra keyword arguments for a PyTorch model's forward (a Hugging Face model's
        ``attention_mask`` or ``token_type_ids``). An array or tensor with one row is given to
        every batch (expanded to its size); one with a row per item of a call follows the
        batch (each batch gets its rows); anything else is passed as it is.
    table : xaikit.Table, optional
        The columns of a table model (from pandas DataFrames, :meth:`xaikit.Table.of`):
        a callable then receives each batch as a DataFrame with these column names and
        dtypes. Found by itself for an estimator fitted on a DataFrame (``feature_names_in_``).

    The model's output may be a tensor, a Hugging Face output object (its ``logits`` are
    used) or a tuple (its first tensor); a regressor's ``(N,)`` output is one score per item.
    An object with ``predict_proba`` is called through it; one with only ``predict`` (a
    scikit-learn regressor) through ``predict``, its output explained as is (``"scores"``).

    Examples
    --------
    >>> m = Model(torch.nn.Linear(3, 2))
    >>> m.scores(np.zeros((5, 3), dtype=np.float32)).shape
    (5, 2)
    """

    def __init__(
        self,
        model: Any,
        *,
        output: str | None = None,
        device: str | torch.device | None = None,
        batch_size: int | str = "auto",
        input_shape: tuple[int, ...] | None = None,
        forward_kwargs: dict[str, Any] | None = None,
        table: Table | None = None,
    ) -> None:
        if isinstance(model, Model):
            raise TypeError("model: already an xaikit.Model; use it directly (or xaikit.as_model)")
        self.module: nn.Module | None = None
        self.function: Callable[[np.ndarray], Any] | None = None
        if isinstance(model, (str, os.PathLike)):
            model = _load_torchscript(model, device=device)
        default_output = "probabilities"
        if isinstance(model, nn.Module):
            self.module = model
            default_output = "logits"
        elif hasattr(model, "predict_proba") and callable(model.predict_proba):
            self.function = model.predict_proba
        elif _margin_classifier(model):
            # A classifier without probabilities (SVC, RidgeClassifier): its decision function
            # scores the classes; its predict gives labels, not scores
            self.function = _Margins(model)
            default_output = "scores"
        elif hasattr(model, "predict") and callable(model.predict) and not callable(model):
            self.function = model.predict  # a regressor: its predictions are the scores
            default_output = "scores"
        elif callable(model):
            self.function = model
        else:
            raise TypeError(
                "model: expected an nn.Module, a TorchScript file path, a callable on NumPy "
                f"batches or an object with predict_proba or predict, got {describe(model)}"
            )
        if forward_kwargs is not None and not isinstance(forward_kwargs, dict):
            raise TypeError(f"forward_kwargs: expected a dict, got {describe(forward_kwargs)}")
        if forward_kwargs and self.module is None:
            raise TypeError("forward_kwargs: only a PyTorch model's forward takes them")
        self.forward_kwargs = dict(forward_kwargs or {})
        if table is not None and not isinstance(table, Table):
            raise TypeError(f"table: expected an xaikit.Table, got {describe(table)}")
        self.table = table if table is not None else Table.fitted_on(model)
        self.output = check_choice(output or default_output, name="output", choices=OUTPUTS)
        self._output_given = output is not None
        self._warned_output = False
        if batch_size != "auto":
            batch_size = check_positive_int(batch_size, name="batch_size")
        self.batch_size = batch_size
        self.input_shape = None if input_shape is None else _check_input_shape(input_shape)
        self.device = _check_device(device) if device is not None else module_device(self.module)
        held_on = module_device(self.module)
        if self.module is not None and held_on.type != self.device.type:
            raise ValueError(
                f"device: the model's tensors are on {held_on}, got device='{self.device}'; "
                "move the model first (xaikit never moves a user's model)"
            )
        self.n_classes: int | None = None
        # Batch-size search: seconds per item measured for each tried size (for inspection),
        # and the sizes this Model has used per (call kind, item shape, dtype, device).
        self._timings: dict[tuple, dict[int, float]] = {}
        self._chosen: dict[tuple, int] = {}
        self._searching = False
        # Rows that must share a batch come in groups of this many (DeepLIFT's item and
        # reference rows are pairs): every batch's size is a multiple of it.
        self._rows_per_group = 1

    # ------------------------------------------------------------------ public calls

    @property
    def is_torch(self) -> bool:
        """True when the model is a PyTorch module (gradients and layers are available)."""
        return self.module is not None

    def scores(
        self,
        x: Any,
        *,
        as_numpy: bool = True,
        progress: bool | None = None,
        check: bool = True,
    ):
        """Model outputs for a batch ``x`` of shape ``(N, ...)``: an ``(N, K)`` array.

        Runs without gradients, in batches, in eval mode; the user's model is left as it was.
        ``check=False`` skips the input checks (NaN scan included), for inputs that xaikit's
        engines build from inputs already checked.
        """
        x = self._check_x(x) if check else x
        if self.module is None:
            step = self._function_step
        else:
            key = batching.call_key(x, "scores", self.device)
            fast = self._may_relayout(x) and layout.may_use_channels_last(
                self.module, x, self.forward_kwargs
            )
            # The copy is looked up once per call: only the copy runs, so the user's weights
            # cannot change between batches, and checking them costs ~1 ms per batch.
            held: list[torch.nn.Module] = []

            def step(xb, rows):
                with torch.inference_mode():
                    if fast and layout.chosen_layout(self.module, key) == "channels_last":
                        # the change of layout is the batch's copy (see _to_tensor's why)
                        tensor = layout.fresh_channels_last(self._to_tensor(xb, fresh=False))
                        if not held:  # fused where it scores the first item (and noise) alike
                            held.append(layout.channels_last_copy(self.module, example=tensor[:1]))
                        out = self._forward(tensor, rows, module=held[0])
                    else:
                        out = self._forward(self._to_tensor(xb), rows)
                out = float_output(out)
                return (out.cpu().numpy(),) if as_numpy else (out,)

            step.channels_last = fast  # the search may try the layout for this call

        with self._user_state_preserved():
            (out,) = self._map_batches(x, step, kind="scores", progress=progress)
        return out

    def probabilities(self, x: Any, *, progress: bool | None = None) -> np.ndarray:
        """Class probabilities ``(N, K)``: softmax of logits, or the outputs when already so."""
        out = self.scores(x, progress=progress)
        return to_probabilities(out, output=self.output)

    def predict(self, x: Any) -> np.ndarray:
        """The predicted class (argmax of the scores) for each item."""
        return self.scores(x).argmax(axis=1)

    def gradients(
        self,
        x: Any,
        target: Any = None,
        *,
        of: str = "score",
        as_numpy: bool = True,
        progress: bool | None = None,
        check: bool = True,
    ):
        """Scores and the gradient of each item's target output with respect to its input.

        Parameters
        ----------
        x : array or tensor (N, ...)
        target : int, sequence of int, or None
            Class per item (or one for all); ``None`` uses each item's predicted class.
        of : {"score", "probability", "log_probability", "loss"}
            What is differentiated: the raw output for the target (default), its softmax
            probability, its log-probability, or the cross-entropy loss against the target as
            a label (the loss-gradient saliency of Simonyan et al. 2014).
        check : bool
            ``False`` skips the input checks, for points built by xaikit from checked inputs.

        Returns
        -------
        scores : (N, K) array
        gradients : array of the shape of ``x``
        """
        if self.module is None:
            raise TypeError(
                "model: gradients need a PyTorch model; this Model wraps a callable on NumPy "
                "batches (use a perturbation method such as occlusion, lime or kernel_shap)"
            )
        of = check_choice(of, name="of", choices=GRADIENT_OF)
        x = self._check_x(x) if check else x
        n = len(x)
        # Types and length are checked now; the class range as soon as K is known.
        targets = None if target is None else check_targets(target, n=n, n_classes=self.n_classes)
        checked: list[bool] = []
        key = batching.call_key(x, "gradients", self.device)
        fast = self._may_relayout(x) and layout.may_use_channels_last(
            self.module, x, self.forward_kwargs
        )

        def step(xb, rows):
            inp = self._to_tensor(xb, fresh=False).detach()
            if fast and layout.chosen_layout(self.module, key) == "channels_last":
                inp = layout.as_channels_last(inp)  # the user's module, fed NHWC: no copy of it
            if not inp.dtype.is_floating_point:
                raise TypeError(
                    f"x: gradients need floating-point inputs, got dtype {inp.dtype}; for token "
                    "ids attribute to the embedding layer instead"
                )
            inp.requires_grad_(True)
            with torch.enable_grad():
                # The forward gets a copy: a model that changes its input in place then works
                # (autograd allows it on a non-leaf) and never reaches the caller's memory.
                out = self._forward(inp.clone(), rows)
                objective = self._target_objective(out, targets, rows, checked, of=of)
                if not objective.requires_grad:
                    raise ValueError(
                        "model: its output does not depend on the input through autograd (a "
                        ".detach(), torch.no_grad() or non-torch step inside forward?)"
                    )
                (grad,) = torch.autograd.grad(objective.sum(), inp, allow_unused=True)
            if grad is None:
                raise ValueError(
                    "model: its output does not depend on the input (a .detach() inside forward?)"
                )
            out = float_output(out.detach())
            # the input's layout, whichever ran; half precision as float32, as the scores
            grad = float_output(grad.contiguous())
            if as_numpy:
                return out.cpu().numpy(), grad.cpu().numpy()
            return out, grad

        step.channels_last = fast  # the search may try the layout for this call
        with self._user_state_preserved():
            return self._map_batches(x, step, kind="gradients", progress=progress)

    def layer_gradients(
        self,
        x: Any,
        target: Any = None,
        *,
        layer: str,
        values: torch.Tensor | np.ndarray | None = None,
        of: str = "score",
        as_numpy: bool = True,
    ):
        """Gradient of each item's target output with respect to a layer's output.

        With ``values`` (one per item, the layer output's shape), the layer's output is
        replaced by them for the forward pass, e.g. points on a path in embedding space, as
        layer Integrated Gradients needs. Works for integer inputs (token ids).

        Returns
        -------
        scores : (N, K)
        layer_values : the layer outputs used (computed, or ``values``)
        gradients : d target / d layer output, same shape
        """
        if self.module is None:
            raise TypeError("model: layer gradients need a PyTorch model, not a callable")
        of = check_choice(of, name="of", choices=GRADIENT_OF)
        module = self.find_layer(layer, argument="layer")
        x = self._check_x(x)
        n = len(x)
        targets = None if target is None else check_targets(target, n=n, n_classes=self.n_classes)
        checked: list[bool] = []
        if values is not None and len(values) != n:
            raise ValueError(f"values: expected one layer output per item ({n}), got {len(values)}")

        def step(xb, rows):
            leaf = {}

            def replace(_module, _inputs, output):
                if "value" in leaf:
                    raise ValueError(_runs_twice(layer))
                rest = None
                if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
                    output, rest = output[0], output[1:]  # a transformer layer's (hidden, ...)
                if not isinstance(output, torch.Tensor):
                    raise ValueError(
                        f"layer: {layer!r} must return one tensor, got {describe(output)}"
                    )
                if output.ndim == 0 or len(output) != len(xb):
                    raise ValueError(
                        f"layer: {layer!r} gives an output of shape {tuple(output.shape)} for "
                        f"{len(xb)} items, not one row per item (windows of a Swin block, a "
                        "sequence-first layer?); pick a layer whose output starts with the "
                        "batch axis"
                    )
                tensor = output
                if values is not None:
                    given = torch.as_tensor(values[rows], device=self.device)
                    if tuple(given.shape) != tuple(tensor.shape):
                        raise ValueError(
                            f"values: expected layer outputs of shape {tuple(tensor.shape)}, got "
                            f"{tuple(given.shape)}"
                        )
                    tensor = given.to(tensor.dtype)
                leaf["value"] = tensor.detach().requires_grad_(True)
                # The forward goes on with a copy: an in-place op after the layer (a
                # ReLU(inplace=True)) must change neither the leaf nor the values returned.
                onward = leaf["value"].clone()
                return onward if rest is None else (onward, *rest)

            try:
                handle = module.register_forward_hook(replace)
            except RuntimeError as err:  # TorchScript modules refuse hooks added after scripting
                raise TypeError(f"layer: {layer!r} does not accept hooks ({err})") from err
            try:
                with torch.enable_grad():
                    out = self._forward(self._to_tensor(xb), rows)
                    objective = self._target_objective(out, targets, rows, checked, of=of)
                    (grad,) = torch.autograd.grad(objective.sum(), leaf["value"], allow_unused=True)
            finally:
                handle.remove()
            if grad is None:
                raise ValueError(f"layer: the output does not depend on layer {layer!r}")
            result = tuple(float_output(r) for r in (out.detach(), leaf["value"].detach(), grad))
            return tuple(r.cpu().numpy() for r in result) if as_numpy else result

        with self._user_state_preserved():
            return self._map_batches(x, step, kind=f"layer_gradients:{layer}", progress=None)

    @contextlib.contextmanager
    def layer(
        self,
        name: str,
        *,
        gradients: bool = False,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        argument: str = "name",
    ) -> Iterator[LayerRecording]:
        """Record one layer's outputs (and their gradients) during the calls inside the block.

        >>> with m.layer("conv2", gradients=True) as rec:
        ...     m.gradients(x, target=3)
        >>> rec.activations.shape, rec.gradients.shape

        ``name`` is a path from ``named_modules()`` (e.g. ``"features.3"``). ``transform`` is
        applied to each batch of activations before it is kept (e.g. spatial pooling), so a
        large data set need not be held at full size. The hook is removed when the block
        ends, also on error. ``argument``: the caller's name for the path, which errors name
        (``layers`` for ``xk.activations``).
        """
        module = self.find_layer(name, argument=argument)
        recording = LayerRecording(name)

        calls = [0]  # the layer's calls in the current forward

        def start(_module, _inputs):
            calls[0] = 0

        def hook(_module, _inputs, output):
            if self._searching:  # the batch-size search's timing runs are not the user's data
                return
            calls[0] += 1
            if calls[0] > 1:
                raise ValueError(_runs_twice(name, argument))
            tensor = first_tensor(output)
            if tensor is None:
                return
            kept = tensor.detach()
            kept = transform(kept) if transform else kept
            if kept.untyped_storage().data_ptr() == tensor.untyped_storage().data_ptr():
                # an in-place op after the layer (ReLU(inplace=True)) would overwrite it
                kept = kept.clone()
            recording._activations.append(kept)
            if gradients and tensor.requires_grad:
                tensor.register_hook(lambda g: recording._gradients.append(g.detach()))

        try:
            handle = module.register_forward_hook(hook)
        except RuntimeError as err:  # TorchScript modules refuse hooks added after scripting
            raise TypeError(f"{argument}: layer {name!r} does not accept hooks ({err})") from err
        handles = [handle]
        # counts the layer's calls per forward (not on a TorchScript model, which refuses it)
        with contextlib.suppress(RuntimeError):
            handles.append(self.module.register_forward_pre_hook(start))
        try:
            yield recording
        finally:
            for h in handles:
                h.remove()

    def find_layer(self, name: str, *, argument: str = "name") -> nn.Module:
        """The submodule at path ``name``; the error lists close matches when there is none.

        ``argument``: the caller's name for the path, which the error names (``layer`` for
        ``explain(..., layer=...)``).
        """
        if self.module is None:
            raise TypeError("model: layers exist only for PyTorch models, not for a callable")
        modules = dict(self.module.named_modules())
        if not isinstance(name, str) or name not in modules:
            close = difflib.get_close_matches(str(name), [k for k in modules if k], n=5)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(f"{argument}: no layer {name!r} in the model{hint}")
        return modules[name]

    def layer_names(self) -> list[str]:
        """Paths of all submodules, in registration order (the model itself excluded)."""
        if self.module is None:
            return []
        return [k for k, _ in self.module.named_modules() if k]

    @property
    def batch_owner(self) -> Any:
        """The user's model object (module or function) that chosen batch sizes belong to."""
        return self.module if self.module is not None else self.function

    @property
    def chosen_batch_sizes(self) -> dict[tuple, int]:
        """Batch sizes this Model used per (call kind, item shape, dtype, device)."""
        return dict(self._chosen)

    def __repr__(self) -> str:
        inner = type(self.module).__name__ if self.module is not None else repr(self.function)
        return f"Model({inner}, output={self.output!r}, device='{self.device}')"

    # ------------------------------------------------------------------ internals

    def _check_x(self, x: Any):
        if is_frame(x):
            if self.table is None or not any(self.table.categories):
                self.table = Table.of(x)  # the frame's categories (a fitted table has none)
            x = self.table.array(x, name="x")
        x = check_batch(x, name="x", item_shape=self.input_shape)
        if self.module is None and isinstance(x, torch.Tensor):
            x = x.cpu().numpy()
        return x

    def _to_tensor(self, xb, *, fresh: bool = True) -> torch.Tensor:
        """``xb`` as a tensor of the model's dtype on its device.

        ``fresh=True`` (the default) guarantees memory of its own: a forward that changes its
        input in place (``x.mul_(0.5)``) must never reach an array or tensor the caller owns.
        One copy of a batch costs far less than the forward pass it feeds.
        """
        tensor = xb if isinstance(xb, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(xb))
        if tensor.dtype.is_floating_point or not has_embedding(self.module):
            dtype = float_dtype(self.module)
        else:  # integer token ids for a model that embeds them
            dtype = torch.long
        return tensor.to(device=self.device, dtype=dtype, copy=fresh)

    def _forward(
        self, tensor: torch.Tensor, rows: np.ndarray | None = None, *, module: nn.Module = None
    ) -> torch.Tensor:
        kwargs = self._batch_kwargs(len(tensor), rows)
        try:
            out = (module or self.module)(tensor, **kwargs)
        except Exception as err:
            hint = None if kwargs else input_mismatch(self.module, tensor)
            if hint is None and is_torchscript(self.module) and isinstance(err, RuntimeError):
                # TorchScript reports a failed op as a long interpreter traceback: its last line
                # says what failed
                lines = [line.strip() for line in str(err).splitlines() if line.strip()]
                hint = f"the TorchScript model fails on these items: {lines[-1] if lines else err}"
            if hint:
                # The item shape, not the batch's: a method's batch is its own (IG stacks
                # the input and its baseline), which the user never passed.
                if "items of shape" not in hint:
                    hint += f"; the items have shape {tuple(tensor.shape[1:])}"
                raise ValueError(f"x: {hint}") from err
            raise
        out = model_output(out)
        if isinstance(out, torch.Tensor) and out.ndim == 1 and len(out) == len(tensor):
            out = out[:, None]  # a regressor: one score per item
        self._check_output(out, len(tensor))
        return out

    def _target_objective(self, out, targets, rows, checked: list, *, of: str) -> torch.Tensor:
        """Per item, what is differentiated: ``of`` for its target (default: its argmax)."""
        if targets is None:
            tb = out.detach().argmax(dim=1)
        else:
            _check_range_once(targets, out.shape[1], checked)
            tb = torch.as_tensor(targets[rows], device=out.device)
        return _objective(out, tb, of=of, output=self.output)

    def _batch_kwargs(self, size: int, rows: np.ndarray | None) -> dict[str, Any]:
        """``forward_kwargs`` for one batch: one-row values expanded, per-item values sliced."""
        kwargs = {}
        for name, value in self.forward_kwargs.items():
            if isinstance(value, np.ndarray):
                value = torch.from_numpy(value)
            if isinstance(value, torch.Tensor) and value.ndim >= 1:
                if len(value) == 1:
                    value = value.expand(size, *value.shape[1:])
                elif rows is not None and len(value) > int(rows.max(initial=0)):
                    value = value[torch.as_tensor(rows, dtype=torch.long)]
                else:
                    raise ValueError(
                        f"forward_kwargs: {name!r} has {len(value)} rows; expected 1 (for every "
                        f"item) or one per item of the call (a batch of {size} made from them)"
                    )
                # Memory of its own, as for x: a forward that edits its mask in place must
                # not reach the caller's tensor.
                value = value.to(self.device, copy=True)
            kwargs[name] = value
        return kwargs

    def item_view(self, i: int) -> Model:
        """This Model with per-item ``forward_kwargs`` cut to item ``i`` (one row for all).

        Methods that perturb an item run many copies of it in one call; each copy must get the
        item's own attention mask, so :func:`xaikit.explain` explains such items one by one.
        """
        view = copy.copy(self)
        view.forward_kwargs = {
            name: value[i : i + 1] if self._per_item(value) else value
            for name, value in self.forward_kwargs.items()
        }
        return view

    @property
    def per_item_kwargs(self) -> bool:
        """True when some ``forward_kwargs`` value has one row per item (not one for all)."""
        return any(self._per_item(v) for v in self.forward_kwargs.values())

    @staticmethod
    def _per_item(value: Any) -> bool:
        return isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim >= 1 and len(value) > 1

    def _function_step(self, xb: np.ndarray, _rows: np.ndarray):
        batch = np.array(xb, copy=True)
        if self.table is not None:  # a model fitted on a DataFrame gets one
            batch = self.table.frame(batch)
        try:  # a copy: the function may change its argument in place, and xb may be the caller's
            out = self.function(batch)
        except (ValueError, TypeError) as err:
            # What a predict_proba raises on an input it cannot take (scikit-learn: "X has 4
            # features, but ... is expecting 5"): name the argument, keep the model's words.
            kind = TypeError if isinstance(err, TypeError) else ValueError
            raise kind(
                f"x: the model refused a batch of shape {tuple(np.shape(xb))}: {err}"
            ) from err
        if isinstance(out, torch.Tensor):
            out = out.detach().cpu().numpy()
        if not isinstance(out, np.ndarray):
            with contextlib.suppress(TypeError, ValueError):  # _check_output names what came
                out = np.asarray(out)
        if isinstance(out, np.ndarray):
            if out.dtype == bool or out.dtype.kind not in "fiu":
                raise ValueError(
                    f"model: expected numeric scores of shape (N, K), got {describe(out)}"
                )
            out = out.astype(np.float64 if out.dtype == np.float64 else np.float32, copy=False)
            if out.ndim == 1 and len(out) == len(xb):
                out = out[:, None]  # a regressor's predict: one score per item
        self._check_output(out, len(xb))
        return (out,)

    def _check_output(self, out: Any, n: int) -> None:
        if not isinstance(out, (torch.Tensor, np.ndarray)):
            raise ValueError(
                f"model: expected its output to be scores of shape (N, K), got "
                f"{describe(out)}; wrap the model so it returns one tensor (or an output with "
                "a 'logits' field)"
            )
        shape = tuple(out.shape)
        if len(shape) == 2 and shape[0] == n and shape[1] == 0:
            raise ValueError(f"model: returned 0 scores per input (shape {shape}); expected K >= 1")
        if len(shape) != 2 or shape[0] != n:
            raise ValueError(
                f"model: expected scores of shape (N, K) = ({n}, K) for {n} inputs, got shape "
                f"{shape}"
                + ("; reshape the output to (N, 1) for a single score" if len(shape) == 1 else "")
            )
        if self.n_classes is None:
            self.n_classes = shape[1]
        elif shape[1] != self.n_classes:
            raise ValueError(
                f"model: returned {shape[1]} scores per input, earlier calls gave {self.n_classes}"
            )
        values = out.detach() if isinstance(out, torch.Tensor) else out
        check_finite(values, name="model output")
        if self.output == "probabilities":
            low, high = float(values.min()), float(values.max())
            outside = low < -PROBABILITY_SLACK or high > 1 + PROBABILITY_SLACK
            if outside and not self._output_given:
                # The default for callables: say so once, but never change what the outputs
                # are taken to be (a switch would make results depend on the data seen first);
                # one column is a regressor's prediction, no class probability
                if not self._warned_output and shape[1] > 1:
                    self._warned_output = True
                    warnings.warn(
                        f"model: its outputs range from {low:.4g} to {high:.4g}, outside [0, "
                        "1], but are taken as probabilities (the default for a callable); "
                        "pass output='logits' or output='scores' for raw scores",
                        stacklevel=4,
                    )
            elif outside:
                raise ValueError(
                    f"model: output='probabilities', but it returned values from {low:.4g} to "
                    f"{high:.4g}, outside [0, 1]; for raw scores pass output='logits' (softmax "
                    "is taken where probabilities are needed) or output='scores'"
                )

    def _user_state_preserved(self):
        """Eval mode for the call, every module's own training flag restored afterwards."""
        return preserved_state(self.module)

    def _may_relayout(self, x) -> bool:
        """Whether a call on ``x`` may use the layout a search chose: not a small call that runs
        as one batch without searching, which keeps the default layout whether or not a larger
        call searched before it, so a repeated call is bit-identical."""
        return self.batch_size != "auto" or len(x) > batching.SMALL_CALL

    def _map_batches(self, x, step, *, kind: str, progress: bool | None):
        """Apply ``step(chunk, rows)`` to consecutive chunks of ``x``; gather its outputs.

        ``rows`` are the chunk's item indices in ``x`` (for per-item targets or values).
        """
        n = len(x)
        if self.batch_size != "auto":
            size = self.batch_size
        elif n <= batching.SMALL_CALL:
            size = n  # one small batch: nothing to tune
        else:
            size = self._tuned_batch_size(x, step, kind)
        sink = _Sink(n)
        with progress_bar(n, kind, enabled=progress) as bar:
            for start, stop in _even_batches(n, size, group=self._rows_per_group):
                sink.put(start, step(x[start:stop], np.arange(start, stop)))
                bar.advance(stop - start)
        return sink.result()

    def _tuned_batch_size(self, x, step, kind: str) -> int:
        """The remembered batch size for this kind of call and item shape; search it once.

        See :mod:`xaikit.batching`: the search runs on copies of the first item, so every
        call batches its real inputs the same way and a repeated call is bit-identical.
        """
        key = batching.call_key(x, kind, self.device)
        memo = batching.memo_of(self)
        if key not in memo:
            self._searching = True  # layer recordings skip the timing runs
            try:
                memo[key], timings = batching.search_batch_size(
                    x[:1], step, device=self.device, numpy_function=self.module is None
                )
                if getattr(step, "channels_last", False):
                    self._choose_layout(x[:1], step, key, memo[key])
            finally:
                self._searching = False
            self._timings[key] = timings
        self._chosen[key] = memo[key]
        return memo[key]

    def _choose_layout(self, first, step, key: tuple, size: int) -> None:
        """Time the default and the channels-last layout at ``size``; keep the faster one
        whose results (scores, and gradients for a gradient call) equal the default's (see
        :mod:`xaikit.layout`; a layout that fails is not kept)."""
        batch = np.ascontiguousarray(np.broadcast_to(first, (size, *first.shape[1:])))
        rows = np.zeros(size, dtype=np.int64)
        results, seconds = {}, {}
        for name in ("contiguous", "channels_last", "contiguous", "channels_last"):
            layout.choose(self.module, key, name)  # interleaved: one busy moment hits both
            start = time.perf_counter()
            try:
                results[name] = step(batch, rows)
            except Exception:
                if name == "contiguous":
                    raise  # the user's own forward: its error is the caller's
                # The copy's (e.g. a forward that reads a folded BatchNorm's attributes): the
                # user's module works, so it is used as it is.
                layout.choose(self.module, key, "contiguous")
                return
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            seconds[name] = min(seconds.get(name, np.inf), time.perf_counter() - start)
        faster = seconds["channels_last"] <= layout.GAIN * seconds["contiguous"]
        same = all(
            layout.equal_scores(_as_numpy(a), _as_numpy(b))
            for a, b in zip(results["contiguous"], results["channels_last"], strict=True)
        )
        layout.choose(self.module, key, "channels_last" if faster and same else "contiguous")

    @property
    def chosen_layouts(self) -> dict[tuple, str]:
        """The memory layout chosen per score call key (see :mod:`xaikit.layout`)."""
        return {} if self.module is None else layout.chosen_layouts(self.module)


class LayerRecording:
    """What ``Model.layer`` recorded: activations (and gradients) of one layer, in call order."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._activations: list[torch.Tensor] = []
        self._gradients: list[torch.Tensor] = []

    @property
    def activation_batches(self) -> list[torch.Tensor]:
        """The recorded activations, one detached tensor per forward pass."""
        return list(self._activations)

    @property
    def gradient_batches(self) -> list[torch.Tensor]:
        """The recorded gradients, one detached tensor per backward pass."""
        return list(self._gradients)

    @property
    def activations(self) -> np.ndarray:
        """All recorded activations as one NumPy array (items of every call, in order)."""
        return _concat(self._activations, what="activations", name=self.name)

    @property
    def gradients(self) -> np.ndarray:
        """All recorded gradients as one NumPy array (items of every call, in order)."""
        return _concat(self._gradients, what="gradients", name=self.name)

    def clear(self) -> None:
        """Forget what was recorded so far (the hook stays while the block is open)."""
        self._activations.clear()
        self._gradients.clear()


def as_model(model: Any, **kwargs: Any) -> Model:
    """Return ``model`` as a :class:`Model` (unchanged when it already is one)."""
    if isinstance(model, Model):
        if kwargs:
            raise TypeError(
                f"model: already an xaikit.Model; options {sorted(kwargs)} apply only when "
                "wrapping a raw model"
            )
        return model
    return Model(model, **kwargs)


def to_probabilities(scores: np.ndarray, *, output: str) -> np.ndarray:
    """Turn model outputs of kind ``output`` into probabilities (softmax for logits)."""
    if output == "probabilities":
        return scores
    if output == "log_probabilities":
        return np.exp(scores)
    shifted = scores - scores.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------------- helpers


def _even_batches(n: int, size: int, *, group: int = 1) -> list[tuple[int, int]]:
    """``(start, stop)`` of as few batches of at most ``size`` items as cover ``n``, their sizes
    differing by at most one group: 97 items at 8 run as 6 x 8 + 7 x 7, not 12 x 8 + 1 (a small
    last batch costs more per item, up to 1.7x at one item on a CPU; ResNet-18 on this CPU
    scores one image in a fifth of the time of eight). Batches hold whole groups of ``group``
    rows (pairs that must stay together); a partial last group ends the last batch."""
    if n <= 0:
        return []
    units, rest = divmod(n, group)
    per_batch = max(1, size // group)
    batches = max(1, -(-units // per_batch))
    small, extra = divmod(units, batches)  # the first ``extra`` batches take one group more
    bounds, start = [], 0
    for b in range(batches):
        stop = start + (small + (b < extra)) * group
        bounds.append((start, stop))
        start = stop
    if rest and n - bounds[-1][0] <= max(size, group):
        bounds[-1] = (bounds[-1][0], n)
    elif rest:
        bounds.append((start, n))
    return [(a, b) for a, b in bounds if b > a]


class _Sink:
    """Gathers per-batch outputs into preallocated arrays (or tensors) of ``n`` rows."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.parts: list | None = None

    def put(self, start: int, outputs: tuple) -> None:
        if self.parts is None:
            self.parts = [_empty_like_rows(o, self.n) for o in outputs]
        for part, out in zip(self.parts, outputs, strict=True):
            part[start : start + len(out)] = out

    def result(self):
        return tuple(self.parts)


def _as_numpy(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().float().cpu().numpy()
    return np.asarray(value)


def _check_input_shape(shape: Any) -> tuple[int, ...]:
    """One item's shape: a sequence of positive whole numbers."""
    try:
        sizes = list(shape)
        if not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in sizes):
            raise TypeError
    except TypeError:
        raise TypeError(
            f"input_shape: expected one item's shape as whole numbers, e.g. (1, 28, 28), got "
            f"{describe(shape)}"
        ) from None
    if not sizes or min(sizes) < 1:
        raise ValueError(f"input_shape: expected sizes >= 1, got {tuple(sizes)}")
    return tuple(int(s) for s in sizes)


class _Margins:
    """A classifier's decision function as class scores ``(N, K)``: a binary one's single
    margin m (positive for ``classes_[1]``) becomes the two columns (-m, m), so that the
    argmax is its prediction and each class has a score (a picklable object, for Ray)."""

    def __init__(self, classifier: Any) -> None:
        self.classifier = classifier

    def __call__(self, x: Any) -> np.ndarray:
        margin = np.asarray(self.classifier.decision_function(x))
        return np.stack([-margin, margin], axis=1) if margin.ndim == 1 else margin


def _margin_classifier(model: Any) -> bool:
    """A fitted classifier with a decision function and no predict_proba (scikit-learn)."""
    try:
        return callable(getattr(model, "decision_function", None)) and hasattr(model, "classes_")
    except Exception:  # a property that raises on an unfitted estimator
        return False


def _runs_twice(layer: str, argument: str = "layer") -> str:
    return (
        f"{argument}: {layer!r} runs more than once in one forward (one module used in several "
        "places, like a ReLU shared by a block's two activations), so its output is not one "
        "map per item; pick a layer that runs once (e.g. the convolution or block before it)"
    )


def _check_range_once(targets: np.ndarray, n_classes: int, checked: list) -> None:
    """Check the targets' class range at the first forward, once K is known."""
    if not checked:
        check_targets(targets, n=len(targets), n_classes=n_classes)
        checked.append(True)


def _empty_like_rows(sample, n: int):
    if isinstance(sample, torch.Tensor):
        return torch.empty((n, *sample.shape[1:]), dtype=sample.dtype, device=sample.device)
    return np.empty((n, *sample.shape[1:]), dtype=sample.dtype)


def _objective(out: torch.Tensor, target: torch.Tensor, *, of: str, output: str) -> torch.Tensor:
    """Per-item quantity whose input gradient is wanted."""
    if of == "score":
        return out.gather(1, target[:, None])[:, 0]
    if output == "probabilities":
        log_p = torch.log(out.clamp_min(torch.finfo(out.dtype).tiny))
    elif output == "log_probabilities":
        log_p = out
    elif output == "logits":
        log_p = F.log_softmax(out, dim=1)
    else:
        raise ValueError(f"of: {of!r} needs class probabilities; the model's output is {output!r}")
    picked = log_p.gather(1, target[:, None])[:, 0]
    if of == "probability":
        return picked.exp()
    if of == "log_probability":
        return picked
    return -picked  # cross-entropy loss against the target label


def _concat(batches: list[torch.Tensor], *, what: str, name: str) -> np.ndarray:
    if not batches:
        raise ValueError(
            f"name: nothing was recorded for layer {name!r} ({what}); call the model inside "
            "the block"
        )
    # float32 for half-precision layers, float64 kept for a float64 model
    keep = lambda b: b if b.dtype == torch.float64 else b.float()  # noqa: E731
    return torch.cat([keep(b).cpu() for b in batches]).numpy()


def _check_device(device: Any) -> torch.device:
    if isinstance(device, bool) or not isinstance(device, (str, torch.device, int)):
        raise TypeError(
            f"device: expected a device name such as 'cpu' or 'cuda:0', got {describe(device)}"
        )
    try:
        return torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise ValueError(
            f"device: {device!r} is not a torch device; expected 'cpu', 'cuda', 'cuda:N' or 'mps'"
        ) from err


def _load_torchscript(path: str | os.PathLike, *, device) -> nn.Module:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model: no file {path!r}")
    if path.endswith(".onnx"):
        raise ValueError(f"model: {path!r} is an ONNX file; ONNX models are not supported yet")
    try:
        with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; users still have files
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(path, map_location=device or "cpu")
    except Exception as err:  # torch raises several kinds for a file that is no TorchScript
        raise ValueError(
            f"model: {path!r} is not a TorchScript file ({type(err).__name__}); save the model "
            "with torch.jit.script(...).save(path), or pass the nn.Module itself"
        ) from err
