"""The gradient engine and the methods built on it: saliency, input x gradient, SmoothGrad,
Integrated Gradients and Expected Gradients.

Every method here evaluates the gradient of the target output at many points around each input
(the input itself, noisy copies, points on a straight path from a baseline, points towards
baselines drawn from data) and combines them with weights. :func:`gradient_points` does that
once for all of them: it builds the points chunk by chunk on the model's device, sends each
chunk through :meth:`Model.gradients` (which batches and leaves the model untouched), and
accumulates the weighted gradients per item, so memory stays bounded by one chunk.
"""

from __future__ import annotations

import copy
import functools
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from xaikit._draws import block_generators
from xaikit._progress import progress_bar
from xaikit._torch import attribution_tensor
from xaikit._validation import (
    check_choice,
    check_count,
    check_number,
    check_seed,
    describe,
    format_bytes,
)
from xaikit.attribution.perturbation import CHUNK_BYTES
from xaikit.attribution.registry import Attribution, register
from xaikit.model import Model

# Point maker: given item indices (b,) and per-point draws, return the points (b, *S).
PointMaker = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

RULES = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")
SMOOTHGRAD_VARIANTS = ("smoothgrad", "smoothgrad_sq", "vargrad")


def gradient_points(
    model: Model,
    x: torch.Tensor,
    targets: np.ndarray,
    *,
    points_per_item: int,
    make_points: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    weights: torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None = None,
    factor: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    of: str = "score",
    moments: int = 1,
) -> list[torch.Tensor]:
    """Weighted sums of gradients over ``points_per_item`` points around each item of ``x``.

    ``make_points(items, k)`` returns the points for item indices ``items`` (b,) at point
    numbers ``k`` (b,), in order of the flat point number, chunk after chunk.
    ``weights`` defaults to 1/points_per_item (a mean); a tensor (points_per_item,) or a
    function ``weights(k)`` gives one per point number (a function never holds them all).
    ``factor(items, k)`` optionally multiplies each gradient first (Expected Gradients'
    per-sample x - x'). Returns ``[sum_k w_k f_k g_k]`` and, with ``moments=2``, also
    ``sum_k w_k (f_k g_k)**2``, each of ``x``'s shape. Memory is one chunk of points whatever
    ``points_per_item`` is; a progress bar counts the points.
    """
    n = len(x)
    total = n * points_per_item
    if weights is None:  # a mean: one weight for all, never a tensor of points_per_item
        uniform = torch.tensor(1.0 / points_per_item, dtype=x.dtype)
        weight_of = lambda k: uniform.to(x.device).expand(len(k))  # noqa: E731
    elif callable(weights):
        weight_of = weights
    else:
        table = weights.to(device=x.device, dtype=x.dtype)
        weight_of = table.__getitem__
    sums = [torch.zeros_like(x) for _ in range(moments)]
    chunk = points_per_chunk(x)
    target_t = torch.as_tensor(targets, device=x.device)
    with progress_bar(total, "gradient points") as bar:
        for start in range(0, total, chunk):
            flat = torch.arange(start, min(start + chunk, total), device=x.device)
            items, k = flat // points_per_item, flat % points_per_item
            points = make_points(items, k)
            targets_b = target_t[items].cpu().numpy()
            _, grads = model.gradients(
                points, targets_b, of=of, as_numpy=False, check=False, progress=False
            )
            if factor is not None:
                grads = grads * factor(items, k)
            # Points come item-major, so a chunk holds a few consecutive items: summing them is
            # a (items x points) weight matrix times the gradients, far cheaper than index_add_.
            first = int(items[0])
            span = int(items[-1]) - first + 1
            spread = torch.zeros((span, len(items)), dtype=x.dtype, device=x.device)
            spread[items - first, torch.arange(len(items), device=x.device)] = weight_of(k).to(
                device=x.device, dtype=x.dtype
            )
            # A model in another precision than x (a float64 copy) gives gradients in its own.
            flat_grads = grads.reshape(len(items), -1).to(spread.dtype)
            for power, acc in enumerate(sums, start=1):
                term = flat_grads if power == 1 else flat_grads**power
                acc[first : first + span] += (spread @ term).reshape(span, *x.shape[1:])
            bar.advance(len(items))
    return sums


def points_per_chunk(x: torch.Tensor) -> int:
    """How many points :func:`gradient_points` builds at once for items like ``x``'s."""
    return max(1, CHUNK_BYTES // max(1, x[0].numel() * x.element_size()))


def item_draws(*, samples: int, chunk: int, start: Callable, draw: Callable) -> Callable:
    """``draws(items, k)``: the draws for point ``k`` of each item, as explaining that item
    alone draws them: a fresh stream per item (``start()``), read in blocks of ``chunk`` points
    (``draw(stream, size)``, a tuple of arrays or tensors), so an item's draws, and its map, do
    not depend on the other items of a batch. Memory: one block.

    Points must come as :func:`gradient_points` asks for them: item-major, ``k`` ascending.
    Returns one tuple, each part concatenated over the points.
    """
    state: dict[str, Any] = {"item": None, "block": -1, "values": None, "stream": None}

    def block(j: int) -> tuple:
        while state["block"] < j:  # blocks of one item come in order: draw up to block j
            state["block"] += 1
            state["values"] = draw(state["stream"], min(chunk, samples - state["block"] * chunk))
        return state["values"]

    def draws(items: torch.Tensor, k: torch.Tensor) -> tuple:
        parts = []
        where = 0
        for item, count in zip(*torch.unique_consecutive(items, return_counts=True), strict=True):
            if state["item"] != int(item):  # a new item: its own stream from the start
                state.update(item=int(item), block=-1, stream=start())
            ks = k[where : where + int(count)]
            where += int(count)
            lo, hi = int(ks[0]), int(ks[-1]) + 1
            for j in range(lo // chunk, (hi - 1) // chunk + 1):
                a, b = max(lo, j * chunk) - j * chunk, min(hi, (j + 1) * chunk) - j * chunk
                parts.append(tuple(v[a:b] for v in block(j)))
        return tuple(_concat(list(column)) for column in zip(*parts, strict=True))

    return draws


def _concat(values: list) -> Any:
    if len(values) == 1:
        return values[0]
    return torch.cat(values) if isinstance(values[0], torch.Tensor) else np.concatenate(values)


def as_tensor(model: Model, x: np.ndarray) -> torch.Tensor:
    """The batch as a float tensor on the model's device, in the model's attribution precision."""
    return attribution_tensor(np.asarray(x), model.module, model.device)


def baseline_tensor(baseline, x: torch.Tensor, *, name: str = "baseline") -> torch.Tensor:
    """A number or an array of one item's shape (or of the batch's) as a tensor like ``x``."""
    if isinstance(baseline, torch.Tensor):
        baseline = baseline.detach().cpu()  # one that requires grad has no NumPy view
    try:
        if isinstance(baseline, (bool, np.bool_)) or np.asarray(baseline).dtype == bool:
            raise TypeError("a bool is not a value")
        values = np.asarray(baseline, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"{name}: expected a number or an array of the input's shape {tuple(x.shape[1:])}, "
            f"got {describe(baseline)}"
        ) from err
    base = torch.as_tensor(values, dtype=x.dtype, device=x.device)
    if base.ndim == 0:
        return torch.full_like(x, float(base))
    if tuple(base.shape) == tuple(x.shape[1:]):
        return base.expand_as(x).clone()
    if tuple(base.shape) == tuple(x.shape):
        return base.clone()
    raise ValueError(
        f"{name}: expected a number or an array of the input's shape {tuple(x.shape[1:])}, got "
        f"shape {tuple(base.shape)}"
    )


@register(
    "saliency",
    needs_gradients=True,
    scores_at_input=True,
    reference="Simonyan et al. 2014, arXiv:1312.6034",
)
def saliency(
    model: Model,
    x: np.ndarray,
    targets: np.ndarray,
    *,
    of: str = "score",
    layer: str | None = None,
) -> Attribution:
    """Saliency map: the absolute gradient of the target score (or loss) per input element.

    ``of="loss"`` differentiates the cross-entropy against the target as a label (the
    loss-gradient form of Simonyan et al. 2014's saliency); its gradient vanishes when the model
    is confident (it is proportional to p - onehot), so a warning says when it underflows.
    ``layer``: take the gradient at that layer's output instead (an embedding layer for token
    models), summed per input position.

    Simonyan, Vedaldi & Zisserman (2014), "Deep inside convolutional networks".
    """
    if layer is not None:
        scores, _, grads = model.layer_gradients(x, targets, layer=layer, of=of)
        values = per_position(np.abs(grads), x, layer=layer)
    else:
        scores, grads = model.gradients(x, targets, of=of)
        values = np.abs(grads)
    if of == "loss":
        _warn_if_underflow(grads)
    return Attribution(values=values, scores=scores)


@register(
    "input_x_gradient",
    needs_gradients=True,
    scores_at_input=True,
    reference="Shrikumar et al. 2016, arXiv:1605.01713",
)
def input_x_gradient(
    model: Model, x: np.ndarray, targets: np.ndarray, *, layer: str | None = None
) -> Attribution:
    """Input times gradient of the target score (Shrikumar et al. 2016, "Not just a black box").

    ``layer``: the layer's output times the gradient there (e.g. embedding x gradient for token
    models), summed per input position.
    """
    if layer is not None:
        scores, activations, grads = model.layer_gradients(x, targets, layer=layer)
        return Attribution(values=per_position(activations * grads, x, layer=layer), scores=scores)
    scores, grads = model.gradients(x, targets)
    return Attribution(values=np.asarray(x, dtype=grads.dtype) * grads, scores=scores)


def per_position(values: np.ndarray, x: np.ndarray, *, layer: str) -> np.ndarray:
    """Sum a layer's attributions over its trailing axes so they align with the input's shape."""
    if values.shape[: x.ndim] != x.shape:
        raise ValueError(
            f"layer: attributions at layer {layer!r} have shape {values.shape[1:]} per item, "
            f"which does not start with the input's shape {x.shape[1:]}; layer= is meant for "
            "embedding layers (one vector per input position)"
        )
    return values.reshape(*x.shape, -1).sum(axis=-1)


@register("smoothgrad", needs_gradients=True, reference="Smilkov et al. 2017, arXiv:1706.03825")
def smoothgrad(
    model: Model,
    x: np.ndarray,
    targets: np.ndarray,
    *,
    samples: int = 50,
    noise: float = 0.15,
    variant: str = "smoothgrad",
    seed: int | None = 0,
) -> Attribution:
    """SmoothGrad: the gradient averaged over noisy copies of the input.

    The noise is Gaussian with standard deviation ``noise * (max(x) - min(x))`` per item, the
    paper's definition (0.1–0.2 recommended; the homework's ``(0.4/range)**2`` is not this).
    ``variant``: ``"smoothgrad"`` (mean gradient), ``"smoothgrad_sq"`` (mean squared gradient)
    or ``"vargrad"`` (variance of the gradients, Adebayo et al. 2018).
    Smilkov et al. (2017), "SmoothGrad: removing noise by adding noise".
    """
    samples = check_count(samples, name="samples")
    variant = check_choice(variant, name="variant", choices=SMOOTHGRAD_VARIANTS)
    noise = check_number(noise, name="noise", low=0, what="fraction of the input range")
    seed = check_seed(seed)
    xt = as_tensor(model, x)
    flat = xt.reshape(len(xt), -1)
    sigma = noise * (flat.max(dim=1).values - flat.min(dim=1).values)

    def generator() -> torch.Generator:
        gen = torch.Generator(device=xt.device)
        gen.manual_seed(0 if seed is None else int(seed))
        return gen

    noise_of = item_draws(
        samples=samples,
        chunk=points_per_chunk(xt),
        start=generator,
        draw=lambda gen, size: (
            torch.randn((size, *xt.shape[1:]), generator=gen, device=xt.device, dtype=xt.dtype),
        ),
    )

    def make_points(items, k):
        (eps,) = noise_of(items, k)
        return xt[items] + sigma[items].reshape(-1, *([1] * (xt.ndim - 1))) * eps

    moments = 1 if variant == "smoothgrad" else 2
    sums = gradient_points(
        model, xt, targets, points_per_item=samples, make_points=make_points, moments=moments
    )
    if variant == "smoothgrad":
        values = sums[0]
    elif variant == "smoothgrad_sq":
        values = sums[1]
    else:
        values = sums[1] - sums[0] ** 2
    return Attribution(values=values.cpu().numpy())


@register(
    "integrated_gradients",
    needs_gradients=True,
    scores_at_input=True,
    reference="Sundararajan et al. 2017, arXiv:1703.01365",
)
def integrated_gradients(
    model: Model,
    x: np.ndarray,
    targets: np.ndarray | None,
    *,
    baseline=0.0,
    steps: int | str = 50,
    rule: str = "gausslegendre",
    tolerance: float = 0.01,
    layer: str | None = None,
) -> Attribution:
    """Integrated Gradients: (x - x') times the gradient integrated along the path x' -> x.

    IG_i = (x_i - x'_i) * integral_0^1 dF(x' + a (x - x'))/dx_i da, approximated with ``steps``
    points by ``rule``. Completeness says sum_i IG_i = F(x) - F(x'); the gap
    |sum IG - (F(x) - F(x'))| is reported per item in ``info["completeness_gap"]``.
    ``steps="auto"`` doubles the step count (Gauss-Legendre, from 8) until the gap is at most
    ``tolerance`` times |F(x) - F(x')| (or 1e-6), up to 1024 steps. ``layer``: integrate in
    that layer's output space instead (layer IG, for token models through their embedding:
    ``baseline`` is then the baseline input, e.g. a padding token id), summed per position.
    Sundararajan, Taly & Yan (2017), "Axiomatic attribution for deep networks".
    """
    rule = check_choice(rule, name="rule", choices=RULES)
    tolerance = check_number(tolerance, name="tolerance", low=0)
    auto = isinstance(steps, str) and steps == "auto"
    if auto and rule != "gausslegendre":
        raise ValueError(
            f'rule: steps="auto" doubles Gauss-Legendre steps; for rule={rule!r} give a '
            "number of steps"
        )
    if not auto:
        steps = check_path_steps(steps, rule=rule)
    if layer is not None:
        return _layer_integrated_gradients(
            model, x, targets, baseline=baseline, steps=steps, rule=rule, layer=layer
        )
    xt = as_tensor(model, x)
    base = baseline_tensor(baseline, xt)
    # One forward over input and baseline: the prediction, the targets and F(x) - F(x').
    both = model.scores(torch.cat([xt, base]))
    scores = both[: len(xt)]
    targets = scores.argmax(axis=1) if targets is None else targets
    rows = np.arange(len(xt))
    difference = scores[rows, targets] - both[len(xt) :][rows, targets]

    def attribute(n_steps: int, which: torch.Tensor, rule_: str):
        sub_x, sub_base = xt[which], base[which]
        sub_diff = sub_x - sub_base

        def make_points(items, k):
            alphas, _ = path_rule_at(rule_, n_steps, k.cpu().numpy())
            a = torch.as_tensor(alphas, dtype=xt.dtype, device=xt.device)
            return torch.addcmul(
                sub_base[items], a.reshape(-1, *([1] * (xt.ndim - 1))), sub_diff[items]
            )

        def weights(k):  # per chunk: a path of 10**9 steps never holds 10**9 weights
            return torch.as_tensor(path_rule_at(rule_, n_steps, k.cpu().numpy())[1])

        (avg_grad,) = gradient_points(
            model,
            sub_x,
            targets[which.cpu().numpy()],
            points_per_item=n_steps,
            make_points=make_points,
            weights=weights,
        )
        return (sub_x - sub_base) * avg_grad

    if auto:
        values, used_steps = _auto_steps(attribute, xt, difference, tolerance)
        rule = "gausslegendre"
    else:
        values = attribute(steps, torch.arange(len(xt), device=xt.device), rule).cpu().numpy()
        used_steps = np.full(len(xt), steps)
    total = values.reshape(len(values), -1).sum(axis=1)
    gap = np.abs(total - difference)
    info = {"completeness_gap": gap, "output_difference": difference, "steps": used_steps}
    params = {"rule": rule, "steps": int(used_steps.max()) if auto else steps}
    return Attribution(values=values, info=info, params=params, scores=scores)


def _layer_integrated_gradients(model, x, targets, *, baseline, steps, rule, layer):
    """IG in a layer's output space: the path runs from the baseline's to the input's output."""
    if steps == "auto":
        raise ValueError(
            'steps: "auto" is not available for Integrated Gradients at a layer (layer=, or a '
            "token model, explained at its embedding layer); give a number of steps"
        )
    n = len(x)
    base = np.array(np.broadcast_to(np.asarray(baseline, dtype=x.dtype), x.shape))
    # One forward pass (no backward) over input and baseline: their layer outputs, the
    # prediction, and F(x), F(x') for completeness.
    model.find_layer(layer, argument="layer")  # a wrong path is named as the user gave it
    with model.layer(layer, argument="layer") as recording:
        scores = model.scores(np.concatenate([x, base]), as_numpy=False)
    both_acts = torch.cat(recording._activations)
    if targets is None:
        targets = scores[:n].argmax(dim=1).cpu().numpy()
    acts, base_acts = both_acts[:n], both_acts[n:]
    avg = torch.zeros_like(acts)
    total = n * steps
    # Path points in chunks of bounded memory; each chunk's layer outputs replace the layer's.
    chunk = max(1, CHUNK_BYTES // max(1, acts[0].numel() * acts.element_size()))
    with progress_bar(total, "gradient points") as bar:
        for start in range(0, total, chunk):
            flat = np.arange(start, min(start + chunk, total))
            items, k = flat // steps, flat % steps
            alphas, weights = path_rule_at(rule, steps, k)
            alpha = torch.as_tensor(alphas, dtype=acts.dtype, device=acts.device)
            alpha = alpha.reshape(-1, *([1] * (acts.ndim - 1)))
            rows = torch.as_tensor(items, device=acts.device)
            points = base_acts[rows] + alpha * (acts[rows] - base_acts[rows])
            _, _, grads = model.layer_gradients(
                x[items], targets[items], layer=layer, values=points, as_numpy=False
            )
            w = torch.as_tensor(weights, dtype=grads.dtype, device=grads.device)
            avg.index_add_(0, rows, w.reshape(alpha.shape) * grads)
            bar.advance(len(flat))
    values = per_position(((acts - base_acts) * avg).cpu().numpy(), x, layer=layer)
    scores = scores.cpu().numpy()
    rows = np.arange(n)
    difference = scores[rows, targets] - scores[n + rows, targets]
    gap = np.abs(values.reshape(n, -1).sum(axis=1) - difference)
    info = {"completeness_gap": gap, "output_difference": difference}
    params = {"steps": steps, "rule": rule}
    return Attribution(values=values, info=info, params=params, scores=scores[:n])


def _auto_steps(attribute, xt, difference, tolerance):
    """Double Gauss-Legendre steps per item until its completeness gap is small enough."""
    n = len(xt)
    values = None  # in the attributions' dtype (float64 for a float64 model)
    used = np.zeros(n, dtype=np.int64)
    pending = np.arange(n)
    steps = 8
    while len(pending):
        which = torch.as_tensor(pending, device=xt.device)
        part = attribute(steps, which, "gausslegendre").cpu().numpy()
        if values is None:
            values = np.zeros(tuple(xt.shape), dtype=part.dtype)
        gap = np.abs(part.reshape(len(part), -1).sum(axis=1) - difference[pending])
        done = (gap <= np.maximum(tolerance * np.abs(difference[pending]), 1e-6)) | (steps >= 1024)
        values[pending[done]] = part[done]
        used[pending[done]] = steps
        pending = pending[~done]
        steps *= 2
    return values, used


@functools.lru_cache(maxsize=32)
def _legendre(steps: int) -> tuple[np.ndarray, np.ndarray]:
    # Computing the nodes costs about 1 ms at 50 steps: 1% of a small model's whole IG call.
    return np.polynomial.legendre.leggauss(steps)


#: Gauss-Legendre nodes come from an eigenproblem of size steps x steps (memory steps^2, time
#: steps^3: 4096 steps take ~130 MiB and ~10-30 s); far below that count the rule is exact
#: to float precision for smooth paths, and the Riemann rules stream any number of steps.
MAX_GAUSS_LEGENDRE_STEPS = 4096


def check_path_steps(steps, *, rule: str) -> int:
    """A step count for ``rule``: a positive int (2+ for the trapezoid; Gauss-Legendre capped)."""
    steps = check_count(steps, name="steps")
    if rule == "riemann_trapezoid" and steps < 2:
        raise ValueError("steps: the trapezoid rule needs at least 2 steps, got 1")
    if rule == "gausslegendre" and steps > MAX_GAUSS_LEGENDRE_STEPS:
        raise ValueError(
            f"steps: the Gauss-Legendre rule computes its nodes from a {steps:,} x {steps:,} "
            f"eigenproblem (~{format_bytes(8 * steps**2)}); at most "
            f"{MAX_GAUSS_LEGENDRE_STEPS} steps are supported (it is exact to float precision "
            "long before); use rule='riemann_middle' or 'riemann_trapezoid' for more, which "
            "stream any number of steps"
        )
    return steps


def path_rule(rule: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Points alpha in [0, 1] and weights of a quadrature rule for integrals over [0, 1].

    The trapezoid rule here is the textbook one (weights sum to 1); Captum's variant weights
    its ``steps`` points by 1/steps with halved ends, so its sum is (steps - 1)/steps.
    """
    return path_rule_at(rule, steps, np.arange(steps))


def path_rule_at(rule: str, steps: int, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``path_rule(rule, steps)`` at the point numbers ``k`` only (float64, bit for bit).

    The Riemann rules are computed from ``k`` alone, so a path is built chunk by chunk in
    memory bounded by the chunk, whatever ``steps`` is.
    """
    k = np.asarray(k, dtype=np.int64)
    if rule == "gausslegendre":
        nodes, weights = _legendre(steps)
        return 0.5 * (nodes[k] + 1), 0.5 * weights[k]
    if rule == "riemann_trapezoid":
        # as np.linspace(0, 1, steps): k * (1 / (steps - 1)), the last point exactly 1
        alphas = np.where(k == steps - 1, 1.0, k * (1.0 / (steps - 1)))
        weights = np.full(len(k), 1.0 / (steps - 1))
        weights[(k == 0) | (k == steps - 1)] /= 2
        return alphas, weights
    offset = {"riemann_left": 0.0, "riemann_middle": 0.5, "riemann_right": 1.0}[rule]
    return (k + offset) / steps, np.full(len(k), 1.0 / steps)


@register(
    "expected_gradients",
    needs_gradients=True,
    reference="Erion et al. 2021, arXiv:1906.10670",
)
def expected_gradients(
    model: Model,
    x: np.ndarray,
    targets: np.ndarray,
    *,
    baseline=None,
    samples: int = 200,
    seed: int | None = 0,
) -> Attribution:
    """Expected Gradients: Integrated Gradients averaged over baselines drawn from data.

    Each sample draws a background row x' and a point a ~ U(0, 1) and adds
    (x - x') * dF(x' + a (x - x'))/dx; the mean estimates E_{x'}[IG(x; x')], so attributions
    sum to F(x) - E[F(x')] in expectation. ``baseline``: background data ``(R, *x.shape)``.
    Erion et al. (2021), "Improving performance of deep learning models with axiomatic
    attribution priors and expected gradients".
    """
    samples = check_count(samples, name="samples")
    seed = check_seed(seed)
    xt = as_tensor(model, x)
    if baseline is None:
        raise ValueError("baseline: expected_gradients needs background data (R, *x.shape)")
    background = torch.as_tensor(np.asarray(baseline), dtype=xt.dtype, device=xt.device)
    if background.ndim != xt.ndim or tuple(background.shape[1:]) != tuple(xt.shape[1:]):
        raise ValueError(
            f"baseline: expected background rows of shape (R, {', '.join(map(str, xt.shape[1:]))})"
            f", got shape {tuple(background.shape)}"
        )
    # Sample k of every item uses the same background row and point a, drawn as explaining
    # one item alone draws them (all rows first, then all points, chunk by chunk): an item's
    # map does not depend on the other items of a batch.
    n_rows = len(background)
    row_draws, alpha_draws = block_generators(
        np.random.default_rng(seed),
        [(samples, lambda gen, b: gen.integers(0, n_rows, b)), (samples, None)],
    )
    draws = item_draws(
        samples=samples,
        chunk=points_per_chunk(xt),
        start=lambda: (copy.deepcopy(row_draws), copy.deepcopy(alpha_draws)),
        draw=lambda gens, size: (gens[0].integers(0, n_rows, size), gens[1].random(size)),
    )
    shape = (-1, *([1] * (xt.ndim - 1)))
    drawn: dict[str, torch.Tensor] = {}

    def make_points(items, k):
        rows, alphas = draws(items, k)
        drawn["rows"] = torch.as_tensor(rows, device=xt.device)
        start = background[drawn["rows"]]
        alphas = torch.as_tensor(alphas, dtype=xt.dtype, device=xt.device)
        return start + alphas.reshape(shape) * (xt[items] - start)

    def factor(items, _k):  # each sample has its own baseline, so x - x' multiplies per sample
        return xt[items] - background[drawn["rows"]]

    (values,) = gradient_points(
        model, xt, targets, points_per_item=samples, make_points=make_points, factor=factor
    )
    return Attribution(values=values.cpu().numpy())


def _warn_if_underflow(grads: np.ndarray) -> None:
    peak = np.abs(grads).reshape(len(grads), -1).max(axis=1)
    tiny = peak < 1e-6
    if tiny.any():
        warnings.warn(
            f"saliency of the loss: the gradient nearly vanishes (max |grad| {peak.min():.1e}) for "
            f"{int(tiny.sum())} of {len(grads)} item(s) because the model is confident "
            "(d loss/dx is proportional to p - onehot); use of='score' for a readable map",
            RuntimeWarning,
            stacklevel=4,
        )
