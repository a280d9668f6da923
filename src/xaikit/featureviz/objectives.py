"""Objectives for feature visualisation: what to maximise, written like the formula.

An :class:`Objective` wraps a function of one forward pass (the recorded layer activations, the
model's output and the image) that returns one value per batch item, shape ``(B,)``. Objectives
combine with ``+``, ``-``, ``*``, ``/`` and numbers, so activation maximisation's
``X* = argmax_X y_i + R(X)`` (Simonyan et al. 2014) is written ``logit(7) - 0.05 * l1()``
and a filter's visualisation
``channel("conv2", 3) - 0.01 * total_variation()`` (the algebra of Lucid, Olah et al. 2017).

Every objective knows which layers it needs (:attr:`Objective.layers`), so the optimisation
loop hooks only those, and how to check itself against the model's real shapes (a channel index
out of range, a vector of the wrong length), which :func:`xaikit.visualize` does with one
forward pass before optimising.

Parts
-----
- :func:`channel` (a filter's objective, sum_ij a_ij; Erhan et al. 2009), :func:`neuron`,
  :func:`direction` on a layer;
- :func:`logit` and :func:`probability` on the model's output (class visualisation);
- :func:`diversity` across the batch;
- image regularisers (penalties, to subtract): :func:`l1`, :func:`l2`, :func:`total_variation`,
  :func:`blur`;
- :func:`channels`: one objective per channel of a layer, optimised together as one batch.

References
----------
.. [1] Erhan, Bengio, Courville, Vincent (2009). Visualizing higher-layer features of a deep
   network. University of Montreal, Technical Report 1341.
.. [2] Simonyan, Vedaldi, Zisserman (2014). Deep inside convolutional networks: visualising image
   classification models and saliency maps. ICLR workshop.
.. [3] Mahendran, Vedaldi (2015). Understanding deep image representations by inverting them.
   CVPR (total variation).
.. [4] Yosinski, Clune, Nguyen, Fuchs, Lipson (2015). Understanding neural networks through deep
   visualization. ICML Deep Learning workshop (blur and L2 regularisers).
.. [5] Olah, Mordvintsev, Schubert (2017). Feature visualization. Distill (objectives, diversity).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from xaikit._validation import describe

__all__ = [
    "Context",
    "Objective",
    "ObjectiveBatch",
    "blur",
    "channel",
    "channels",
    "direction",
    "diversity",
    "l1",
    "l2",
    "logit",
    "neuron",
    "probability",
    "total_variation",
]


@dataclass
class Context:
    """What an objective sees of one forward pass.

    Attributes
    ----------
    activations : dict of str to Tensor
        Output of each layer the objectives need, ``(B, C, ...)``, with gradients.
    output : Tensor, shape (B, K)
        What the model returned.
    image : Tensor, shape (B, C, H, W)
        The image being optimised, before the random transforms (regularisers act on it).
    output_kind : str
        ``"logits"``, ``"probabilities"``, ``"log_probabilities"`` or ``"scores"``
        (:attr:`xaikit.Model.output`).
    """

    activations: dict[str, torch.Tensor]
    output: torch.Tensor
    image: torch.Tensor
    output_kind: str = "logits"

    def __call__(self, layer: str) -> torch.Tensor:
        """The activations of ``layer``."""
        return self.activations[layer]

    @property
    def batch(self) -> int:
        """Number of items in this forward pass."""
        return len(self.output)

    def probabilities(self) -> torch.Tensor:
        """Class probabilities ``(B, K)``: softmax of logits, or the output when already so."""
        if self.output_kind == "probabilities":
            return self.output
        if self.output_kind == "log_probabilities":
            return self.output.exp()
        return F.softmax(self.output, dim=1)

    def item(self, i: int) -> Context:
        """The same pass restricted to item ``i`` (a batch of one; views, gradients kept)."""
        return Context(
            {k: v[i : i + 1] for k, v in self.activations.items()},
            self.output[i : i + 1],
            self.image[i : i + 1],
            self.output_kind,
        )


Check = Callable[[Context], None]


@dataclass(eq=False)
class Objective:
    """A quantity to maximise: a function of a forward pass returning one value per item.

    Parameters
    ----------
    function : callable
        ``function(context) -> Tensor (B,)`` where ``context`` is a :class:`Context`.
    layers : iterable of str
        Layer paths (``named_modules()`` names) whose activations ``function`` reads.
    name : str
        How the objective prints (used in figure titles and error messages).
    checks : sequence of callables
        ``check(context)`` raising ``ValueError`` when the objective does not fit the model's
        shapes; run once before optimisation starts.
    across_items : bool
        Whether an item's value depends on the other items of the batch (:func:`diversity`);
        kept through arithmetic.

    Examples
    --------
    >>> obj = channel("conv2", 3) - 0.01 * total_variation()
    >>> sorted(obj.layers)
    ['conv2']
    >>> custom = Objective(lambda c: c("fc1")[:, 5] ** 2, layers=["fc1"], name="fc1[5]^2")
    """

    function: Callable[[Context], torch.Tensor]
    layers: frozenset[str] = field(default_factory=frozenset)
    name: str = "objective"
    checks: tuple[Check, ...] = ()
    across_items: bool = False

    def __post_init__(self) -> None:
        if not callable(self.function):
            raise TypeError(f"function: expected a callable, got {describe(self.function)}")
        self.layers = frozenset(self.layers)
        for layer in self.layers:
            if not isinstance(layer, str):
                raise TypeError(f"layers: expected layer paths (str), got {describe(layer)}")
        self.checks = tuple(self.checks)

    def __call__(self, context: Context) -> torch.Tensor:
        """Evaluate on a forward pass; returns a tensor of shape ``(B,)``."""
        value = self.function(context)
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != (context.batch,):
            raise ValueError(
                f"objective: {self.name} must return one value per item, shape "
                f"({context.batch},), got {describe(value)}"
            )
        return value

    def check(self, context: Context) -> None:
        """Raise ``ValueError`` when this objective does not fit the model (shapes, indices)."""
        for check in self.checks:
            check(context)

    def __repr__(self) -> str:
        return self.name

    # -- algebra: every operation makes a new Objective whose layers and checks are the union

    def _combine(self, other: Any, op: Callable, symbol: str, *, reverse: bool = False):
        if isinstance(other, ObjectiveBatch):
            return NotImplemented
        if isinstance(other, Objective):
            a, b = (other, self) if reverse else (self, other)
            return Objective(
                lambda c: op(a(c), b(c)),
                layers=a.layers | b.layers,
                name=f"{_wrap(a.name, symbol, left=True)} {symbol} {_wrap(b.name, symbol)}",
                checks=a.checks + b.checks,
                across_items=a.across_items or b.across_items,
            )
        if isinstance(other, numbers.Real) and not isinstance(other, bool):
            number = float(other)
            if reverse:
                name = f"{_fmt(number)} {symbol} {_wrap(self.name, symbol)}"
                return Objective(
                    lambda c: op(number, self(c)), self.layers, name, self.checks, self.across_items
                )
            name = f"{_wrap(self.name, symbol, left=True)} {symbol} {_fmt(number)}"
            return Objective(
                lambda c: op(self(c), number), self.layers, name, self.checks, self.across_items
            )
        return NotImplemented

    def __add__(self, other: Any) -> Objective:
        return self._combine(other, lambda a, b: a + b, "+")

    def __radd__(self, other: Any) -> Objective:
        # sum([...]) starts from 0: keep the name clean.
        if isinstance(other, numbers.Real) and not isinstance(other, bool) and other == 0:
            return self
        return self._combine(other, lambda a, b: a + b, "+", reverse=True)

    def __sub__(self, other: Any) -> Objective:
        return self._combine(other, lambda a, b: a - b, "-")

    def __rsub__(self, other: Any) -> Objective:
        return self._combine(other, lambda a, b: a - b, "-", reverse=True)

    def __mul__(self, other: Any) -> Objective:
        return self._combine(other, lambda a, b: a * b, "*")

    def __rmul__(self, other: Any) -> Objective:
        return self._combine(other, lambda a, b: a * b, "*", reverse=True)

    def __truediv__(self, other: Any) -> Objective:
        return self._combine(other, lambda a, b: a / b, "/")

    def __neg__(self) -> Objective:
        name = f"-{_wrap(self.name, '*')}"
        return Objective(lambda c: -self(c), self.layers, name, self.checks, self.across_items)


class ObjectiveBatch:
    """One objective per batch item, optimised together: e.g. every channel of a layer.

    Made by :func:`channels`. Items are independent: item ``i`` is optimised for its own
    objective only, so the batch gives the same images as one call per item with the same
    seeds. Arithmetic with an :class:`Objective` or a number applies to every item
    (``channels("conv2") - 0.01 * total_variation()``).

    Parameters
    ----------
    make : callable
        ``make(index) -> Objective`` for one item.
    layer : str
        The layer whose channels are enumerated.
    indices : sequence of int, optional
        The channels; ``None`` means all, known after one forward pass (:meth:`resolve`).
    """

    def __init__(
        self,
        make: Callable[[int], Objective],
        *,
        layer: str,
        indices: Sequence[int] | None = None,
        name: str = "channels",
        edit: Callable[[Objective], Objective] | None = None,
    ) -> None:
        self._make = make
        self.layer = layer
        self.indices = None if indices is None else [int(i) for i in indices]
        self.name = name
        self._edit = edit or (lambda obj: obj)

    @property
    def layers(self) -> frozenset[str]:
        """Layers needed: the enumerated layer and those of any added objective."""
        return self._edit(self._make(0)).layers | {self.layer}

    def resolve(self, context: Context) -> list[Objective]:
        """The per-item objectives, with the channel count read from a forward pass."""
        if self.indices is None:
            act = context.activations[self.layer]
            if act.ndim < 2:
                raise ValueError(
                    f"layer: {self.layer!r} has output shape {tuple(act.shape)}; channels need "
                    "a channel axis (N, C, ...)"
                )
            indices = list(range(act.shape[1]))
        else:
            indices = self.indices
        return [self._edit(self._make(i)) for i in indices]

    def _apply(self, edit: Callable[[Objective], Objective], symbol: str, other: Any):
        if not isinstance(other, (Objective, numbers.Real)) or isinstance(other, bool):
            return NotImplemented
        if isinstance(other, Objective) and other.across_items:
            # each item of the batch is scored alone, where such a term is 0: refused
            raise ValueError(
                f"objective: {other.name} compares the items of one batch, but {self.name} "
                "optimises each item alone, where it adds nothing; for different images of "
                "one channel use channel(layer, k) + w * diversity(layer) with batch=n"
            )
        label = other.name if isinstance(other, Objective) else _fmt(float(other))
        return self._then(edit, name=f"{self.name} {symbol} {label}")

    def _then(self, edit: Callable[[Objective], Objective], *, name: str) -> ObjectiveBatch:
        """This batch with ``edit`` applied to every item's objective after its own edits."""
        previous = self._edit
        return ObjectiveBatch(
            self._make,
            layer=self.layer,
            indices=self.indices,
            name=name,
            edit=lambda obj: edit(previous(obj)),
        )

    def __add__(self, other: Any) -> ObjectiveBatch:
        return self._apply(lambda o: o + other, "+", other)

    __radd__ = __add__

    def __sub__(self, other: Any) -> ObjectiveBatch:
        return self._apply(lambda o: o - other, "-", other)

    def __rsub__(self, other: Any) -> ObjectiveBatch:
        return (-self)._apply(lambda o: o + other, "+", other)

    def __mul__(self, other: Any) -> ObjectiveBatch:
        return self._apply(lambda o: o * other, "*", other)

    __rmul__ = __mul__

    def __truediv__(self, other: Any) -> ObjectiveBatch:
        if isinstance(other, Objective):
            return self._apply(lambda o: o / other, "/", other)
        if isinstance(other, numbers.Real) and not isinstance(other, bool):
            return self._apply(lambda o: o * (1.0 / float(other)), "/", other)
        return NotImplemented

    def __neg__(self) -> ObjectiveBatch:
        return self._then(lambda obj: -obj, name=f"-({self.name})")

    def __repr__(self) -> str:
        return self.name


# ---------------------------------------------------------------------- layer objectives


def channel(layer: str, index: int) -> Objective:
    """Total activation of channel ``index`` of ``layer``: ``sum_ij a_ij`` (Erhan et al. 2009).

    Maximising it shows what the filter detects (Erhan et al. 2009; Olah et al. 2017). For a
    layer without spatial axes (``(B, K)``, e.g. a linear layer) it is unit ``index`` itself.

    Parameters
    ----------
    layer : str
        Layer path from ``named_modules()``, e.g. ``"conv2"`` or ``"features.3"``.
    index : int
        Channel (filter) number, axis 1 of the layer's output.
    """
    layer = _check_layer_name(layer)
    index = _check_index(index, name="index")

    def value(c: Context) -> torch.Tensor:
        a = c(layer)[:, index]
        return a.reshape(len(a), -1).sum(dim=1)

    return Objective(
        value, {layer}, f"channel({layer!r}, {index})", (_channel_check(layer, index, "index"),)
    )


def channels(layer: str, indices: Sequence[int] | None = None) -> ObjectiveBatch:
    """One :func:`channel` objective per channel of ``layer``, optimised as one batch.

    Parameters
    ----------
    layer : str
        Layer path.
    indices : sequence of int, optional
        Which channels; default all of them (counted with one forward pass).

    Examples
    --------
    >>> v = xk.visualize(model, channels("conv2"))   # doctest: +SKIP
    >>> v.images.shape                                 # doctest: +SKIP
    (32, 1, 28, 28)
    """
    layer = _check_layer_name(layer)
    if indices is not None:
        if isinstance(indices, (str, bytes)) or not isinstance(indices, (Sequence, np.ndarray)):
            raise TypeError(f"indices: expected a sequence of ints, got {describe(indices)}")
        indices = [_check_index(i, name="indices") for i in indices]
        if not indices:
            raise ValueError("indices: expected at least one channel, got an empty sequence")
    label = f"channels({layer!r}{'' if indices is None else f', {indices}'})"
    return ObjectiveBatch(lambda i: channel(layer, i), layer=layer, indices=indices, name=label)


def neuron(layer: str, index: int, position: tuple[int, ...] | None = None) -> Objective:
    """Activation of channel ``index`` of ``layer`` at one spatial ``position``.

    Parameters
    ----------
    layer : str
        Layer path.
    index : int
        Channel number (axis 1).
    position : tuple of int, optional
        Spatial position ``(y, x)`` (as many numbers as the layer has spatial axes); default
        the centre (``size // 2`` on each axis). Must be ``None`` for a ``(B, K)`` layer.
    """
    layer = _check_layer_name(layer)
    index = _check_index(index, name="index")
    if position is not None:
        if isinstance(position, (int, np.integer)) or not isinstance(position, Sequence):
            raise TypeError(f"position: expected a tuple of ints (y, x), got {describe(position)}")
        position = tuple(_check_index(p, name="position") for p in position)

    def where(shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(s // 2 for s in shape[2:]) if position is None else position

    def value(c: Context) -> torch.Tensor:
        a = c(layer)
        return a[(slice(None), index, *where(tuple(a.shape)))]

    def check(c: Context) -> None:
        a = c(layer)
        spatial = tuple(a.shape[2:])
        pos = where(tuple(a.shape))
        if len(pos) != len(spatial) or any(p >= s for p, s in zip(pos, spatial, strict=False)):
            raise ValueError(
                f"position: expected {len(spatial)} index(es) within the spatial size "
                f"{spatial} of layer {layer!r}, got {position}"
            )

    name = f"neuron({layer!r}, {index}" + ("" if position is None else f", {position}") + ")"
    return Objective(value, {layer}, name, (_channel_check(layer, index, "index"), check))


def direction(layer: str, vector: Any) -> Objective:
    """Activation of ``layer`` projected on ``vector`` (over channels), summed over positions.

    A direction in activation space generalises a channel (a one-hot vector); Olah et al. 2017.

    Parameters
    ----------
    layer : str
        Layer path.
    vector : array-like, shape (C,)
        One weight per channel of the layer.
    """
    layer = _check_layer_name(layer)
    vec = np.asarray(vector.detach().cpu() if isinstance(vector, torch.Tensor) else vector)
    if vec.ndim != 1 or vec.dtype.kind not in "fiu" or len(vec) == 0:
        raise ValueError(f"vector: expected a 1-D array of numbers (C,), got {describe(vec)}")
    if not np.isfinite(vec).all():
        raise ValueError("vector: expected finite values")

    def value(c: Context) -> torch.Tensor:
        a = c(layer)
        v = torch.as_tensor(vec, dtype=a.dtype, device=a.device)
        proj = (a * v.reshape(1, -1, *([1] * (a.ndim - 2)))).sum(dim=1)
        return proj.reshape(len(a), -1).sum(dim=1)

    def check(c: Context) -> None:
        a = c(layer)
        if a.ndim < 2 or a.shape[1] != len(vec):
            raise ValueError(
                f"vector: expected {a.shape[1] if a.ndim >= 2 else '?'} weights, one per channel "
                f"of layer {layer!r} (output shape {tuple(a.shape)}), got {len(vec)}"
            )

    return Objective(value, {layer}, f"direction({layer!r}, <{len(vec)}>)", (check,))


def diversity(layer: str) -> Objective:
    """Negative similarity of each item's Gram matrix to the other items' (Olah et al. 2017).

    Item ``i``'s value is ``-sum_{j != i} cos(G_i, G_j) / B`` where ``G`` is the channel Gram
    matrix of ``layer``; the sum over items is Lucid's diversity term. Add it to an objective
    with ``batch=`` several images (``channel("conv2", 3) + 10 * diversity("conv2")``) to get
    different images of the same feature. A batch of one scores 0.
    """
    layer = _check_layer_name(layer)

    def value(c: Context) -> torch.Tensor:
        a = c(layer)
        b = len(a)
        if b < 2:
            return a.new_zeros(b)
        flat = a.reshape(b, a.shape[1], -1)
        grams = F.normalize((flat @ flat.transpose(1, 2)).reshape(b, -1), dim=1)
        sim = grams @ grams.T
        return -(sim.sum(dim=1) - sim.diagonal()) / b

    return Objective(
        value, {layer}, f"diversity({layer!r})", (_has_channels(layer),), across_items=True
    )


# ---------------------------------------------------------------------- output objectives


def logit(target: int) -> Objective:
    """The model's raw output for class ``target``: ``y_i`` (Simonyan et al. 2014).

    Maximising a logit rather than a probability avoids winning by pushing the other classes
    down (Simonyan et al. 2014, section 2).
    """
    target = _check_index(target, name="target")

    def check(c: Context) -> None:
        _check_class(c, target)

    return Objective(lambda c: c.output[:, target], frozenset(), f"logit({target})", (check,))


def probability(target: int) -> Objective:
    """Softmax probability of class ``target`` (the output itself for a probability model)."""
    target = _check_index(target, name="target")

    def check(c: Context) -> None:
        _check_class(c, target)

    return Objective(
        lambda c: c.probabilities()[:, target], frozenset(), f"probability({target})", (check,)
    )


# ---------------------------------------------------------------------- image regularisers


def l1(*, center: float = 0.0) -> Objective:
    """Penalty ``sum |x - center|`` over the image's pixels; subtract it (``- 0.05 * l1()``).

    The prior R(X) = -sum_ij |X_ij| (an L1 image prior, cf. Simonyan et al. 2014's L2): few
    bright pixels, as in a digit.
    """
    center = _check_real(center, name="center")
    return Objective(
        lambda c: (c.image - center).abs().reshape(c.batch, -1).sum(dim=1),
        name="l1()" if center == 0 else f"l1(center={_fmt(center)})",
    )


def l2(*, center: float = 0.0) -> Objective:
    """Penalty ``sum (x - center)^2`` over the image's pixels (Simonyan et al. 2014)."""
    center = _check_real(center, name="center")
    return Objective(
        lambda c: (c.image - center).pow(2).reshape(c.batch, -1).sum(dim=1),
        name="l2()" if center == 0 else f"l2(center={_fmt(center)})",
    )


def total_variation() -> Objective:
    """Penalty: sum of absolute differences between neighbouring pixels (Mahendran 2015).

    Suppresses the high-frequency patterns that raw maximisation produces.
    """

    def value(c: Context) -> torch.Tensor:
        x = c.image
        dy = (x[..., 1:, :] - x[..., :-1, :]).abs().reshape(c.batch, -1).sum(dim=1)
        dx = (x[..., :, 1:] - x[..., :, :-1]).abs().reshape(c.batch, -1).sum(dim=1)
        return dy + dx

    return Objective(value, name="total_variation()")


def blur(*, sigma: float = 0.5) -> Objective:
    """Penalty ``0.5 * sum (x - blur(x))^2`` towards a blurred copy held fixed (Yosinski 2015).

    The blurred copy (Gaussian, ``sigma`` in pixels) carries no gradient, so the step moves the
    image towards its own blur, as Yosinski et al.'s blurring every few steps does.
    """
    sigma = _check_real(sigma, name="sigma")
    if sigma <= 0:
        raise ValueError(f"sigma: expected a positive width in pixels, got {sigma}")
    radius = max(1, int(np.ceil(3 * sigma)))
    offsets = np.arange(-radius, radius + 1)
    kernel_1d = np.exp(-(offsets**2) / (2 * sigma**2))
    kernel_1d /= kernel_1d.sum()

    def value(c: Context) -> torch.Tensor:
        x = c.image
        channels_ = x.shape[1]
        k = torch.as_tensor(kernel_1d, dtype=x.dtype, device=x.device)
        with torch.no_grad():
            padded = F.pad(x, (radius, radius, radius, radius), mode="replicate")
            smooth = F.conv2d(
                padded, k.reshape(1, 1, 1, -1).expand(channels_, 1, 1, -1), groups=channels_
            )
            smooth = F.conv2d(
                smooth, k.reshape(1, 1, -1, 1).expand(channels_, 1, -1, 1), groups=channels_
            )
        return 0.5 * (x - smooth).pow(2).reshape(c.batch, -1).sum(dim=1)

    return Objective(value, name=f"blur(sigma={_fmt(sigma)})")


# ---------------------------------------------------------------------- helpers


def _fmt(number: float) -> str:
    return f"{number:g}"


def _wrap(name: str, symbol: str, *, left: bool = False) -> str:
    """Parenthesise a sum inside a product (or on the right of a minus) when printing."""
    compound = " + " in name or " - " in name
    if compound and (symbol in "*/" or (symbol == "-" and not left)):
        return f"({name})"
    return name


def _check_layer_name(layer: Any) -> str:
    if not isinstance(layer, str):
        raise TypeError(f"layer: expected a layer path (str), got {describe(layer)}")
    if not layer:
        raise ValueError("layer: expected a layer path such as 'conv2', got an empty string")
    return layer


def _check_index(value: Any, *, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {describe(value)}")
    if value < 0:
        raise ValueError(f"{name}: expected a non-negative int, got {value}")
    return int(value)


def _check_real(value: Any, *, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise TypeError(f"{name}: expected a finite number, got {describe(value)}")
    return float(value)


def _channel_check(layer: str, index: int, name: str) -> Check:
    def check(c: Context) -> None:
        a = c(layer)
        if a.ndim < 2:
            raise ValueError(
                f"layer: {layer!r} has output shape {tuple(a.shape)} without a channel axis"
            )
        if index >= a.shape[1]:
            raise ValueError(
                f"{name}: expected a channel index in [0, {a.shape[1]}) for layer {layer!r} "
                f"(output shape {tuple(a.shape[1:])} per item), got {index}"
            )

    return check


def _has_channels(layer: str) -> Check:
    def check(c: Context) -> None:
        if c(layer).ndim < 2:
            raise ValueError(
                f"layer: {layer!r} has output shape {tuple(c(layer).shape)} without a channel axis"
            )

    return check


def _check_class(c: Context, target: int) -> None:
    k = c.output.shape[1]
    if target >= k:
        raise ValueError(
            f"target: expected a class index in [0, {k}) for a model with {k} outputs, got {target}"
        )
