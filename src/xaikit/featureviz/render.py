"""The optimisation loop: :func:`visualize` finds inputs that maximise an objective.

This is where the three parts meet (Olah et al. 2017; Lucid's ``render``): an objective (what
to maximise, :mod:`~xaikit.featureviz.objectives`), a parameterisation (how the image is made,
:mod:`~xaikit.featureviz.param`, or a generator's latent ``z``) and random transforms (how the
image is perturbed at each step, :mod:`~xaikit.featureviz.transforms`).

Guarantees
----------
- The user's model is left as it was: it runs in eval mode for the call and every module's own
  training flag is restored (:func:`xaikit._torch.preserved_state`); the forward hooks that
  record activations are removed in ``finally``; gradients are taken with
  ``torch.autograd.grad`` with respect to the image parameters only, so no parameter's ``.grad``
  or ``requires_grad`` changes. The same holds for a ``generator``.
- Items of a batch are independent: each has its own seed (``seed + i``) for its initial noise
  and its transforms, its own objective, and Adam's updates are element-wise, so visualising
  all channels of a layer in one batch gives the same images as one call per channel.
- Images stay in the data range: a sigmoid maps the parameters into ``value_range``.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from xaikit._plotting import new_figure, plain
from xaikit._progress import progress_bar
from xaikit._repr import HTMLRepr
from xaikit._torch import first_tensor, float_dtype, input_mismatch, preserved_state
from xaikit._validation import (
    check_memory,
    check_number,
    check_positive_int,
    describe,
)
from xaikit.featureviz import generator as _gen
from xaikit.featureviz import param as _param
from xaikit.featureviz import transforms as _tf
from xaikit.featureviz.objectives import Context, Objective, ObjectiveBatch
from xaikit.model import Model, as_model

__all__ = ["Visualization", "visualize"]

# Square sizes tried, largest first, when the input size must be guessed from the model: the
# ImageNet size, 128 px photographs, then small-image data sets.
# Optimisation steps when none are given, in the API and in `xaikit visualize` alike.
DEFAULT_STEPS = 256
_GUESS_SIZES = (224, 128, 96, 64, 32, 28)
# Transform draws made per block of steps (numbers), and steps of history gathered per array:
# memory stays bounded whatever ``steps`` is (the history itself is 4 bytes per item and step).
_DRAW_BLOCK = 2**16
_HISTORY_BLOCK = 1024


@dataclass
class Visualization(HTMLRepr):
    """The result of :func:`visualize`.

    Attributes
    ----------
    images : np.ndarray, shape (B, C, H, W)
        The optimised inputs, in ``value_range`` (for a generator: ``G(z*)``).
    objective_values : np.ndarray, shape (B,)
        Each item's objective on its final image, evaluated without transforms.
    initial_values : np.ndarray, shape (B,)
        Each item's objective on its starting image, without transforms.
    history : np.ndarray, shape (steps, B)
        The objective at every step, on the transformed image the step used.
    objectives : list of str
        Each item's objective as text.
    seeds : list of int
        Each item's seed.
    latents : np.ndarray or None
        ``z*`` (B, latent_dim) when a generator was used.
    params : dict
        The settings of the call (steps, lr, param, transforms, value_range, prior).
    """

    images: np.ndarray
    objective_values: np.ndarray
    initial_values: np.ndarray
    history: np.ndarray
    objectives: list[str]
    seeds: list[int]
    latents: np.ndarray | None = None
    params: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    def plot(
        self,
        *,
        columns: int | None = None,
        titles: bool = True,
        cmap: str = "gray",
        size: float = 1.5,
    ) -> Any:
        """A grid of the images; returns a matplotlib ``Figure`` (no GUI backend, not shown).

        Grey images use ``cmap``; 3-channel images are drawn as RGB. Each title is the item's
        objective and its final value.
        """
        n = len(self.images)
        columns = min(n, columns or math.ceil(math.sqrt(n * 1.5)))
        rows = math.ceil(n / columns)
        fig = new_figure((size * columns, (size + (0.3 if titles else 0)) * rows), layout=None)
        low, high = self.params.get("value_range", (0.0, 1.0))
        for i in range(rows * columns):
            ax = fig.add_subplot(rows, columns, i + 1)
            ax.set_axis_off()
            if i >= n:
                continue
            img = self.images[i]
            if img.ndim == 3 and img.shape[0] == 3:
                ax.imshow(np.clip((img.transpose(1, 2, 0) - low) / (high - low), 0, 1))
            else:
                shown = img[0] if img.ndim == 3 and img.shape[0] == 1 else img
                if shown.ndim == 1:  # a flat input: show it as a strip
                    shown = shown[None]
                elif shown.ndim == 3:  # other channel counts: their mean
                    shown = shown.mean(axis=0)
                ax.imshow(shown, cmap=cmap, vmin=low, vmax=high, interpolation="nearest")
            if titles:
                label = self.objectives[i].replace("channel(", "ch(")
                if len(label) > 24:  # a long sum: its first term names the item well enough
                    label = label.split(" ")[0] + " ..."
                ax.set_title(plain(f"{label}\n{self.objective_values[i]:.3g}"), fontsize=7)
        fig.subplots_adjust(wspace=0.05, hspace=0.5 if titles else 0.05)
        return fig


def visualize(
    model: Any,
    objective: Objective | ObjectiveBatch | Sequence[Objective],
    *,
    generator: nn.Module | None = None,
    start: Any = None,
    steps: int = DEFAULT_STEPS,
    lr: float = 0.05,
    batch: int | None = None,
    param: str | _param.Parameterization = "fourier",
    transforms: Any = "default",
    value_range: tuple[float, float] = (0.0, 1.0),
    prior: float = 0.01,
    seed: int | Sequence[int] = 0,
    progress: bool | None = None,
    input_shape: tuple[int, ...] | None = None,
) -> Visualization:
    """Find inputs that maximise an objective by gradient ascent (feature visualisation).

    Global explanation: ``X* = argmax_X sum_ij a_ij`` shows what a filter detects
    (Erhan et al. 2009), ``X* = argmax_X y_i + R(X)`` what a class looks like (Simonyan et al.
    2014; Yosinski et al. 2015), and ``X* = G(z*)``, ``z* = argmax_z y_i(G(z))`` the same
    constrained to what a generator makes (Nguyen et al. 2016). Adam on the image parameters,
    random transforms at each step, images kept in ``value_range`` by a sigmoid (Olah et al.
    2017).

    Parameters
    ----------
    model : nn.Module or xaikit.Model
        A PyTorch model (gradients are needed). It is not changed.
    objective : Objective, ObjectiveBatch or sequence of Objective
        What to maximise. One :class:`Objective` is applied to every item of the batch (see
        ``batch``); a sequence gives one objective per item; :func:`objectives.channels`
        gives one per channel of a layer. All items are optimised together, independently.
    generator : nn.Module, optional
        Maps latent vectors ``z (B, d)`` to model inputs; then ``z`` is optimised with the
        penalty ``prior * ||z||^2`` and the images are ``G(z)``. ``d`` is read from the
        generator's ``latent_dim`` attribute or its first linear layer.
    start : array or tensor, optional
        Starting images ``(B, C, H, W)`` (or one image ``(1, ...)`` shared by all items) in
        ``value_range``, instead of noise; with a generator, starting latent vectors ``(B, d)``.
    steps : int
        Optimisation steps.
    lr : float
        Adam's learning rate.
    batch : int, optional
        Number of items for a single objective (each from its own seed); default 1, or the
        number of ``start`` images.
    param : {"fourier", "pixels"} or Parameterization
        How images are made (:mod:`xaikit.featureviz.param`); ignored with a generator.
    transforms : "default", None or sequence of Transform
        Random transforms at each step (:mod:`xaikit.featureviz.transforms`); ``"default"`` is
        Lucid's set scaled to the image size, ``None`` none (raw maximisation).
    value_range : (float, float)
        The data range images are kept in (the model's input range; MNIST: (0, 1)).
    prior : float
        Weight of the latent penalty ``||z||^2`` with a generator.
    seed : int or sequence of int
        Item ``i`` uses ``seed + i`` (or ``seed[i]``) for its initial noise and transforms, so
        ``visualize(m, channel(l, k), seed=s + k)`` equals item ``k`` of
        ``visualize(m, channels(l), seed=s)``.
    progress : bool, optional
        Show a progress bar over the steps; ``None`` follows :func:`xaikit.set_progress`.
    input_shape : tuple of int, optional
        Shape of one input item. Default: from ``start`` or the generator, else guessed from
        the first layer (channels of the first convolution; square sizes 224, 128, 96, 64, 32,
        28 are tried, largest first) with an error asking for it when no guess works.

    Returns
    -------
    Visualization
        ``images`` (B, C, H, W), ``objective_values`` (B,), ``history`` (steps, B),
        ``plot()``.

    Raises
    ------
    ValueError
        Before any optimisation, when an objective names a missing layer (with close names), a
        channel or class out of range, or when the generator's output does not fit the model.

    References
    ----------
    .. [1] Erhan, Bengio, Courville, Vincent (2009). Visualizing higher-layer features of a
       deep network. Technical Report 1341, University of Montreal.
    .. [2] Simonyan, Vedaldi, Zisserman (2014). Deep inside convolutional networks. ICLR
       workshop.
    .. [3] Yosinski, Clune, Nguyen, Fuchs, Lipson (2015). Understanding neural networks through
       deep visualization. ICML Deep Learning workshop.
    .. [4] Nguyen, Dosovitskiy, Yosinski, Brox, Clune (2016). Synthesizing the preferred inputs
       for neurons in neural networks via deep generator networks. NeurIPS.
    .. [5] Olah, Mordvintsev, Schubert (2017). Feature visualization. Distill.

    Examples
    --------
    >>> from xaikit.featureviz import objectives as obj
    >>> v = visualize(cnn, obj.channels("conv2"), steps=128)              # doctest: +SKIP
    >>> v = visualize(cnn, obj.logit(7) - 0.05 * obj.l1(), param="pixels")  # doctest: +SKIP
    >>> v.plot()                                                          # doctest: +SKIP
    """
    m = as_model(model)
    if not m.is_torch:
        raise TypeError(
            "model: feature visualisation needs gradients, so a PyTorch model; this Model wraps "
            "a callable on NumPy batches"
        )
    steps = check_positive_int(steps, name="steps")
    lr = check_number(lr, name="lr", low=0, low_open=True)
    prior = check_number(prior, name="prior", low=0)
    low, high = _check_range(value_range)
    if batch is not None:
        batch = check_positive_int(batch, name="batch")
    if generator is not None and not isinstance(generator, nn.Module):
        raise TypeError(
            f"generator: expected an nn.Module mapping z to x, got {describe(generator)}"
        )
    # The generator is one more parameterisation (z -> G(z)); everything below asks it alone.
    source = _gen.Latent(generator, prior=prior) if generator is not None else _param.resolve(param)
    if input_shape is not None:
        input_shape = _check_shape(input_shape)
    elif m.input_shape is not None:
        input_shape = tuple(m.input_shape)
    dtype = float_dtype(m.module)

    spec = _ObjectiveSpec.from_argument(objective)
    layers = sorted(spec.layers)
    modules = {name: _find_layer(m, name, spec) for name in layers}

    acts: dict[str, torch.Tensor] = {}

    def record(name):
        def hook(_module, _inputs, output):
            # Raising inside the user's forward would be reported as the forward's failure;
            # keep what came and complain after the pass (in run).
            acts[name] = output
            if isinstance(output, torch.Tensor):
                # the forward goes on with a copy: an in-place op after the layer (a
                # ReLU(inplace=True)) must not change the activation the objective reads
                return output.clone()

        return hook

    with contextlib.ExitStack() as stack:
        stack.enter_context(preserved_state(m.module))
        for module in source.modules():
            stack.enter_context(preserved_state(module))
        handles = []
        stack.callback(lambda: [h.remove() for h in handles])
        for name, module in modules.items():
            handles.append(module.register_forward_hook(record(name)))
        stack.callback(acts.clear)  # drop references to the last activations

        # ---- what the items are: start images/latents, their shape, the objectives per item
        start_t = source.check_start(start, shape=input_shape, low=low, high=high, device=m.device)

        def forward(x: torch.Tensor) -> Any:
            acts.clear()
            return m.module(x)

        def context(out: Any, x: torch.Tensor) -> Context:
            return Context(_layer_tensors(acts, layers), out, x, m.output)

        def run(x: torch.Tensor) -> Context:
            return context(forward(x), x)

        # One forward pass on one item checks everything before optimising: the layers exist and
        # give tensors, channel and class indices are in range, the generator fits the model.
        with torch.no_grad():
            x0, culprit = source.first_image(
                start_t, shape=input_shape, low=low, high=high, dtype=dtype, device=m.device,
                guess_shape=lambda: _guess_input_shape(
                    m, forward, dtype=dtype, fill=(low + high) / 2
                ),
            )  # fmt: skip
            input_shape = tuple(x0.shape[1:])
            probe = _probe(m, forward, context, x0.to(dtype), culprit=culprit, dtype=dtype)
            item_objectives = spec.per_item(probe)
            for obj in spec.unique(item_objectives):
                obj.check(probe)
                obj(probe)  # and it evaluates to one value per item

        n_items = _count_items(item_objectives, batch=batch, start=start_t)
        # All items are optimised together: their images, parameters with gradients and Adam's
        # moments, and the model's activations on them (~16 input copies each, an estimate).
        item_bytes = 64 * math.prod(input_shape)
        check_memory(n_items, item_bytes, name="batch", what=f"items of shape {input_shape}")
        seeds = _item_seeds(seed, n_items)
        objs = item_objectives or [spec.single] * n_items
        per_item = item_objectives is not None

        # ---- parameters (Lucid's param_f): one slice per item, from the item's own seed
        raw, make_image = source.init(
            seeds, start=None if start_t is None else _broadcast(start_t, n_items),
            shape=input_shape, low=low, high=high, dtype=dtype, device=m.device,
        )  # fmt: skip

        chain = _tf.resolve(transforms, shape=input_shape)
        # The history (steps, items) is part of the result, float32 gathered in blocks and
        # joined at the end (twice its size then): refuse up front when it cannot fit.
        check_memory(
            steps, 8 * n_items, name="steps", what=f"steps of {n_items} item(s) (the history)"
        )
        # Each item's transform draws come from its own generator, a block of steps at a time
        # (the same numbers as drawing all steps at once; memory of one block).
        transform_draws = [np.random.default_rng([s, 1]) for s in seeds]
        block = max(1, _DRAW_BLOCK // max(1, chain.draws * n_items))

        def evaluate(ctx: Context) -> torch.Tensor:
            if per_item:
                return torch.cat([obj(ctx.item(i)) for i, obj in enumerate(objs)])
            return objs[0](ctx)

        def values_of(r: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return evaluate(run(make_image(r))).detach()

        initial = values_of(raw)
        optimizer = torch.optim.Adam([raw], lr=lr)
        history, recent = [], []
        with progress_bar(steps, "visualize", enabled=progress) as bar:
            for step in range(steps):
                if step % block == 0:
                    count = min(block, steps - step)
                    draws = torch.from_numpy(
                        np.stack([g.random((count, chain.draws)) for g in transform_draws])
                    ).to(m.device)
                image = make_image(raw)
                moved = chain(image, draws[:, step % block], fill=low)
                ctx = run(moved)
                ctx.image = image  # regularisers act on the image itself, not its moved copy
                values = evaluate(ctx)
                total = values.sum()
                penalty = source.penalty(raw)
                if penalty is not None:
                    total = total - penalty
                (grad,) = torch.autograd.grad(total, [raw], allow_unused=True)
                if grad is None:
                    raise ValueError(
                        f"objective: {spec.name} does not depend on the input (a .detach() or "
                        "torch.no_grad() in the model or the objective?)"
                    )
                raw.grad = -grad  # Adam minimises
                optimizer.step()
                recent.append(values.detach())
                if len(recent) == _HISTORY_BLOCK:  # 4 bytes per item and step, not a tensor each
                    history.append(torch.stack(recent).cpu().numpy())
                    recent = []
                bar.advance()
            if recent:
                history.append(torch.stack(recent).cpu().numpy())
        final = values_of(raw)
        with torch.no_grad():
            images = make_image(raw)

    return Visualization(
        images=images.detach().cpu().numpy(),
        objective_values=final.cpu().numpy(),
        initial_values=initial.cpu().numpy(),
        history=np.concatenate(history),
        objectives=[repr(o) for o in objs],
        seeds=seeds,
        latents=raw.detach().cpu().numpy() if generator is not None else None,
        params={
            "steps": steps,
            "lr": lr,
            "param": repr(source),
            "transforms": repr(chain),
            "value_range": (low, high),
            "prior": prior if generator is not None else None,
        },
    )


# ---------------------------------------------------------------------- objective handling


@dataclass
class _ObjectiveSpec:
    """The ``objective`` argument normalised: one shared objective, a list, or a batch."""

    single: Objective | None
    listed: list[Objective] | None
    batch: ObjectiveBatch | None
    layers: frozenset[str]
    name: str

    @classmethod
    def from_argument(cls, objective: Any) -> _ObjectiveSpec:
        if isinstance(objective, Objective):
            return cls(objective, None, None, objective.layers, repr(objective))
        if isinstance(objective, ObjectiveBatch):
            return cls(None, None, objective, objective.layers, repr(objective))
        if isinstance(objective, Sequence) and not isinstance(objective, (str, bytes)):
            items = list(objective)
            if not items or not all(isinstance(o, Objective) for o in items):
                raise TypeError(
                    "objective: expected an Objective, a non-empty sequence of Objectives or "
                    f"objectives.channels(...), got {describe(objective)}"
                )
            layers = frozenset().union(*(o.layers for o in items))
            return cls(None, items, None, layers, f"[{len(items)} objectives]")
        raise TypeError(
            "objective: expected an Objective (xaikit.objectives.channel, logit, ...), a "
            f"sequence of them or objectives.channels(...), got {describe(objective)}"
        )

    def per_item(self, probe: Context) -> list[Objective] | None:
        if self.batch is not None:
            return self.batch.resolve(probe)
        return self.listed

    def unique(self, items: list[Objective] | None) -> list[Objective]:
        return [self.single] if items is None else items


def _count_items(items, *, batch, start) -> int:
    n_start = None if start is None else len(start)
    if items is not None:
        n = len(items)
        if batch is not None and batch != n:
            raise ValueError(
                f"batch: the objective has {n} items (one per item), got batch={batch}"
            )
    else:
        n = batch or n_start or 1
    if n_start is not None and n_start not in (1, n):
        raise ValueError(f"start: expected 1 or {n} starting items, got {n_start}")
    return n


def _item_seeds(seed: Any, n: int) -> list[int]:
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        if seed < 0:
            raise ValueError(f"seed: expected a non-negative int, got {seed}")
        return [int(seed) + i for i in range(n)]
    if isinstance(seed, Sequence) and not isinstance(seed, (str, bytes)):
        seeds = list(seed)
        if len(seeds) != n or not all(
            isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 0 for s in seeds
        ):
            raise ValueError(f"seed: expected {n} non-negative ints (one per item), got {seed!r}")
        return [int(s) for s in seeds]
    raise TypeError(f"seed: expected an int or one int per item, got {describe(seed)}")


def _find_layer(m: Model, name: str, spec: _ObjectiveSpec) -> nn.Module:
    try:
        return m.find_layer(name, argument="layer")
    except ValueError as err:
        raise ValueError(f"{err} (objective {spec.name})") from None


# ---------------------------------------------------------------------- inputs and shapes


def _probe(m: Model, forward, context, x: torch.Tensor, *, culprit: str, dtype) -> Context:
    """One forward pass to check shapes before optimising.

    A forward that fails because of the input's shape (the first layer says so, or another
    square size works) is blamed on ``culprit``, the argument that decided the shape; any other
    failure of the user's forward propagates unchanged.
    """
    try:
        out = forward(x)
    except Exception as err:
        shape = tuple(x.shape[1:])
        lead = f"items of shape {shape} do not fit the model: "
        hint = input_mismatch(m.module, x)
        if hint is None:
            with contextlib.suppress(ValueError):
                expected = _guess_input_shape(m, forward, dtype=dtype, fill=0.5)
                if expected != shape:
                    hint = f"it takes items of shape {expected}"
        if hint is None:
            raise
        # The failing layer's diagnosis already begins with the items' shape: say it once.
        raise ValueError(f"{culprit}: {lead}{hint.removeprefix(lead)}") from err
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"model: expected its output to be one tensor, got {describe(out)}")
    return context(out, x)


def _layer_tensors(recorded: dict[str, Any], layers: list[str]) -> dict[str, torch.Tensor]:
    """The recorded outputs as tensors; a layer that was not called or gave none is an error."""
    out = {}
    for name in layers:
        if name not in recorded:
            raise ValueError(f"layer: {name!r} was not called in the model's forward pass")
        value = recorded[name]
        tensor = value if isinstance(value, torch.Tensor) else first_tensor(value)
        if tensor is None:
            raise ValueError(f"layer: {name!r} returned no tensor ({describe(value)})")
        out[name] = tensor
    return out


def _guess_input_shape(m: Model, forward, *, dtype, fill: float) -> tuple[int, ...]:
    first = next(
        (
            mod
            for mod in m.module.modules()
            if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))
        ),
        None,
    )
    if isinstance(first, nn.Linear):
        candidates = [(first.in_features,)]
    elif isinstance(first, nn.Conv2d):
        candidates = [(first.in_channels, s, s) for s in _GUESS_SIZES]
    elif isinstance(first, nn.Conv1d):
        candidates = [(first.in_channels, s) for s in _GUESS_SIZES]
    else:
        candidates = []
    for shape in candidates:
        try:
            forward(torch.full((1, *shape), fill, dtype=dtype, device=m.device))
        except Exception:  # any failure means "not this size"; try the next
            continue
        return shape
    raise ValueError(
        "input_shape: could not infer the shape of one input from the model (tried "
        f"{candidates or 'nothing: no convolution or linear layer found'}); pass "
        "input_shape=(C, H, W) or start= images"
    )


def _broadcast(t: torch.Tensor, n: int) -> torch.Tensor:
    return t.expand(n, *t.shape[1:]) if len(t) == 1 else t


def _check_shape(shape: Any) -> tuple[int, ...]:
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence) or not shape:
        raise TypeError(f"input_shape: expected a tuple of ints such as (1, 28, 28), got {shape!r}")
    if not all(
        isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in shape
    ):
        raise ValueError(f"input_shape: expected positive ints, got {shape!r}")
    return tuple(int(s) for s in shape)


def _check_range(value_range: Any) -> tuple[float, float]:
    ok = (
        isinstance(value_range, Sequence)
        and len(value_range) == 2
        and all(isinstance(v, numbers.Real) and math.isfinite(v) for v in value_range)
    )
    if not ok or not value_range[0] < value_range[1]:
        raise ValueError(f"value_range: expected (low, high) with low < high, got {value_range!r}")
    return float(value_range[0]), float(value_range[1])
