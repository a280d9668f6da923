"""Layer-wise Relevance Propagation: the target's logit redistributed layer by layer to the input.

LRP (Bach et al. 2015) sends the explained output back through the network with a rule per
layer that splits each neuron's relevance among its inputs. We compute it as one forward and
one modified backward through :meth:`Model.gradients`, so it batches like any gradient method:
the backward carries ``c`` with relevance ``R = a * c`` at every tensor ``a`` (the "gradient x
input" form of LRP). In that form the plain gradient is already the rule for ReLU and LeakyReLU
(relevance passes through), max pooling (winner takes all) and reshapes. The forward is read
with torch.fx and rerun on the model's own modules (:mod:`xaikit.attribution._graph`); only the
nodes that need a rule get one:

- every ``nn.Linear``/``nn.Conv1d``/``nn.Conv2d``: its output keeps its values and its backward
  applies the layer's rule (epsilon, gamma, alpha-beta, z-plus; flat, w-square and the z-box
  rule at the layers that read the input, which return relevance itself);
- a BatchNorm after such a layer is merged into it (Montavon et al. 2019, "canonisation"):
  the rule sees the merged weights, computed for the call, and the forward runs them in
  place of the pair (one operation fewer); the user's modules never change;
- sums (residual additions) and average pooling split relevance in proportion to each term,
  with a stabiliser, as Zennit's ``Norm`` rule does;
- SiLU and GELU pass relevance through (their backward becomes ``a / z``).

An operation without a rule (a module type or a function such as ``torch.sigmoid``) is refused
by name before anything is computed.

References: Bach et al. (2015), "On pixel-wise explanations for non-linear classifier decisions
by layer-wise relevance propagation", PLoS ONE 10(7); Montavon et al. (2019), "Layer-wise
relevance propagation: an overview", in Explainable AI, LNCS 11700; Kohlbrenner et al. (2020),
"Towards best practice in explaining neural network decisions with LRP", IJCNN (composites);
Anders et al. (2021), "Software for dataset-wide XAI: from local explanations to global insights
with Zennit, CoRelAy, and ViRelAy", arXiv:2106.13200 (the composites' definitions we match).
"""

from __future__ import annotations

import difflib
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xaikit._torch import float_dtype, tensor_stamp
from xaikit._validation import check_number, describe
from xaikit.attribution import _graph
from xaikit.attribution.registry import Attribution, register
from xaikit.model import Model

RULES = ("epsilon", "zplus", "alpha1beta0", "alpha2beta1", "gamma", "flat", "wsquare", "zbox")
# Rules that give relevance without multiplying by the layer's input: only at input layers.
INPUT_RULES = ("flat", "wsquare", "zbox")
# Named composites: (rule of convolutions, rule of linear layers, rule of the input layers).
COMPOSITES: dict[str, tuple[str, str, str | None]] = {
    "epsilon": ("epsilon", "epsilon", None),
    "epsilon_plus": ("zplus", "epsilon", None),
    "epsilon_plus_flat": ("zplus", "epsilon", "flat"),
    "epsilon_gamma_box": ("gamma", "epsilon", "zbox"),
    "epsilon_alpha2_beta1": ("alpha2beta1", "epsilon", None),
    "epsilon_alpha2_beta1_flat": ("alpha2beta1", "epsilon", "flat"),
}
# Added to denominators (with their sign) by every rule but epsilon; Zennit's default.
STABILIZER = 1e-6


@register(
    "lrp",
    needs_gradients=True,
    needs_hooks=True,
    scores_at_input=True,
    reference="Bach et al. 2015, doi:10.1371/journal.pone.0130140",
)
def lrp(
    model: Model,
    x: np.ndarray,
    targets: np.ndarray | None,
    *,
    composite: str | dict = "epsilon_plus_flat",
    epsilon: float = 1e-6,
    gamma: float = 0.25,
    low: Any = 0.0,
    high: Any = 1.0,
) -> Attribution:
    """Layer-wise Relevance Propagation of the target's logit (Bach et al. 2015).

    Parameters
    ----------
    composite : str or dict
        Which rule each linear/convolution layer uses. Named composites (Kohlbrenner et al.
        2020; as defined in Zennit): ``"epsilon_plus_flat"`` (flat at the input layer, z-plus
        for convolutions, epsilon for linear layers), ``"epsilon_gamma_box"`` (the z-box rule
        with ``low``/``high`` at an input convolution, gamma for convolutions, epsilon for
        linear layers, a first linear layer too), ``"epsilon_alpha2_beta1"`` (alpha=2,
        beta=1 for convolutions, epsilon for linear layers), ``"epsilon_alpha2_beta1_flat"``,
        ``"epsilon_plus"``, ``"epsilon"`` (LRP-epsilon everywhere). Or a dict from layer
        name (``"features.0"``) or layer type (``nn.Conv2d``) to a rule name in
        :data:`RULES` (names win over types; layers not listed use epsilon). ``"flat"``,
        ``"wsquare"`` and ``"zbox"`` apply only to layers that read the input.
    epsilon : float
        The epsilon rule's stabiliser (added to each denominator with its sign; 0 is LRP-0).
    gamma : float
        The gamma rule's weight of positive contributions.
    low, high : number or array broadcastable to one input
        The input box of the z-box rule (lowest and highest possible input values).

    Returns
    -------
    Attribution
        Relevance of the input's shape; ``info["relevance_sum"]`` and ``info["explained_logit"]``
        per item (equal when the rules conserve relevance: LRP-0/epsilon without biases).
    """
    epsilon = check_number(epsilon, name="epsilon", low=0)
    gamma = check_number(gamma, name="gamma", low=0)
    graph = _graph.trace(model.module, method="lrp")
    plan = _graph.plan(graph, method="lrp")  # refuses what has no rule, before computing
    one = torch.as_tensor(x[:1], device=model.device, dtype=float_dtype(model.module))
    _graph.refuse_hidden_updates(graph, model.module, one, method="lrp")
    rules = assign_rules(plan, graph.modules, composite)
    box = _box(low, high, x, device=model.device) if "zbox" in rules.values() else None
    layer_bn = {layer: bn for bn, layer in plan.merged.items()}
    specs = {
        node: _layer_spec(
            graph.modules[name],
            None if node not in layer_bn else graph.modules[layer_bn[node].target],
            rule=rules[node],
            first=node in plan.first,
            nonnegative=node in plan.nonnegative,
            epsilon=epsilon,
            gamma=gamma,
            box=box,
        )
        for node, name in plan.layers.items()
    }
    with _graph.rerun(model.module, graph, relevance_actions(plan, graph, specs, epsilon=epsilon)):
        scores, relevance = model.gradients(x, targets)
    targets = scores.argmax(axis=1) if targets is None else targets
    rows = np.arange(len(x))
    info = {
        "relevance_sum": relevance.reshape(len(x), -1).sum(axis=1),
        "explained_logit": scores[rows, targets],
    }
    return Attribution(
        values=relevance, scores=scores, info=info, params={"composite": _params(composite)}
    )


# ---------------------------------------------------------------------- which rule where


def assign_rules(plan: _graph.Plan, modules: dict[str, nn.Module], composite) -> dict:
    """The rule of every layer call on the data path, from a named composite or a dict."""
    if isinstance(composite, str):
        if composite not in COMPOSITES:
            close = difflib.get_close_matches(composite, list(COMPOSITES), n=2)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(
                f"composite: expected one of {sorted(COMPOSITES)} or a dict of layer name or "
                f"type to rule, got {composite!r}{hint}"
            )
        conv, linear, first = COMPOSITES[composite]

        def input_rule(name: str) -> str | None:
            # Zennit's EpsilonGammaBox puts z-box on a first convolution only (a first Linear
            # keeps epsilon); its flat composites put flat on any first layer.
            if first == "zbox" and isinstance(modules[name], nn.Linear):
                return None
            return first

        return {
            node: input_rule(name)
            if first is not None and node in plan.first and input_rule(name) is not None
            else (linear if isinstance(modules[name], nn.Linear) else conv)
            for node, name in plan.layers.items()
        }
    if not isinstance(composite, dict):
        raise TypeError(
            f"composite: expected a composite name or a dict of layer name or type to rule, got "
            f"{describe(composite)}"
        )
    by_name, by_type = {}, []
    for key, rule in composite.items():
        if rule not in RULES:
            raise ValueError(f"composite: rule for {key!r}: expected one of {RULES}, got {rule!r}")
        if isinstance(key, str):
            if key not in modules:
                close = difflib.get_close_matches(key, [k for k in modules if k], n=3)
                hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
                raise ValueError(f"composite: no layer {key!r} in the model{hint}")
            if not isinstance(modules[key], _graph.LAYERS):
                raise ValueError(
                    f"composite: rules apply to linear and convolution layers; {key!r} is a "
                    f"{type(modules[key]).__name__}"
                )
            by_name[key] = rule
        elif isinstance(key, type) and issubclass(key, _graph.LAYERS):
            by_type.append((key, rule))
        else:
            raise TypeError(
                "composite: keys are layer names or layer types (nn.Linear, nn.Conv1d, "
                f"nn.Conv2d), got {describe(key)}"
            )
    rules = {}
    first_names = sorted({plan.layers[n] for n in plan.first})
    for node, name in plan.layers.items():
        rule = by_name.get(name)
        if rule is None:
            rule = next((r for t, r in by_type if isinstance(modules[name], t)), "epsilon")
        if rule in INPUT_RULES and node not in plan.first:
            raise ValueError(
                f"composite: rule {rule!r} gives relevance for the input itself, so it applies "
                f"only to layers that read the input ({first_names}), not {name!r}"
            )
        rules[node] = rule
    return rules


def _params(composite) -> Any:
    if isinstance(composite, dict):  # JSON-friendly: types by their qualified name
        return {
            k if isinstance(k, str) else f"{k.__module__}.{k.__qualname__}": v
            for k, v in composite.items()
        }
    return composite


def _box(low, high, x: np.ndarray, *, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The z-box bounds as tensors of one input's shape; every input must lie inside."""
    bounds = []
    for name, value in (("low", low), ("high", high)):
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        try:
            arr = np.asarray(value, dtype=np.float64)
            arr = np.broadcast_to(arr, x.shape[1:])
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"{name}: expected a number or an array broadcastable to one input "
                f"{x.shape[1:]}, got {describe(value)}"
            ) from err
        if not np.isfinite(arr).all():
            raise ValueError(f"{name}: expected finite values")
        bounds.append(arr)
    low_arr, high_arr = bounds
    if (low_arr > high_arr).any():
        raise ValueError("low: expected low <= high everywhere")
    if (x < low_arr).any() or (x > high_arr).any():
        raise ValueError(
            f"low: the z-box rule needs every input value inside [low, high]; the inputs range "
            f"from {float(x.min()):g} to {float(x.max()):g} (give low= and high= the lowest and "
            "highest possible values)"
        )
    return tuple(torch.tensor(b, dtype=torch.float32, device=device) for b in bounds)


# ---------------------------------------------------------------------- layers and rules


_CANONICAL: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # layer -> {bn id: ...}


@dataclass
class Weights:
    """A layer's weights as the rules see them (a BatchNorm after it merged in), and the
    tensors the rules derive from them (positive parts, ...), computed when first needed.

    Kept per layer module while the model lives and made again when any tensor they come from
    changes (:func:`xaikit._torch.tensor_stamp`); the user's modules are never changed.
    """

    weight: torch.Tensor
    bias: torch.Tensor | None
    derived: dict[Any, Any] = field(default_factory=dict)

    def part(self, name: str) -> torch.Tensor | None:
        """``wp``/``wn``: positive/negative part of the weights; ``bp``/``bn``: of the bias;
        ``bp+``: ``bp`` plus the stabiliser (a bias even for a layer without one)."""
        if name in self.derived:
            return self.derived[name]
        if name == "bp+":
            # A pass that sums contributions >= 0 adds the stabiliser to all its outputs: in
            # the bias, the convolution does it, one pass over the outputs fewer.
            bp = self.part("bp")
            tensor = self.weight.new_zeros(self.weight.shape[0]) if bp is None else bp
            tensor = tensor + STABILIZER
        else:
            tensor = self.weight if name[0] == "w" else self.bias
            if tensor is not None:
                tensor = tensor.clamp(min=0) if name[1] == "p" else tensor.clamp(max=0)
        self.derived[name] = tensor
        return tensor


def canonical(layer: nn.Module, bn: nn.Module | None) -> Weights:
    """The layer's :class:`Weights` with ``bn`` merged in, from the cache when unchanged."""
    tensors = [layer.weight, layer.bias]
    if bn is not None:
        tensors += [bn.weight, bn.bias, bn.running_mean, bn.running_var]
    stamp = (None if bn is None else bn.eps, tensor_stamp(tensors))
    held = _CANONICAL.setdefault(layer, {})
    key = None if bn is None else id(bn)
    if key in held and held[key][0] == stamp:
        return held[key][1]
    weight = layer.weight.detach()
    bias = None if layer.bias is None else layer.bias.detach()
    if bn is not None:
        weight, bias = _merge(weight, bias, bn)
    held[key] = (stamp, Weights(weight, bias))
    return held[key][1]


@dataclass
class LayerSpec:
    """One layer's rule and the (merged) weights it propagates with, for one call."""

    rule: str
    module: nn.Module
    weights: Weights
    first: bool
    nonnegative: bool
    epsilon: float
    gamma: float
    box: tuple[torch.Tensor, torch.Tensor] | None

    @property
    def weight(self) -> torch.Tensor:
        return self.weights.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.weights.bias

    @property
    def cache(self) -> dict[Any, Any]:
        return self.weights.derived

    def forward(self, x: torch.Tensor, weight, bias) -> torch.Tensor:
        """The layer's operation with other weights (the modified forwards of the rules)."""
        if isinstance(self.module, nn.Linear):
            return F.linear(x, weight, bias)
        return self.module._conv_forward(x, weight, bias)

    def vjp(self, weight: torch.Tensor, grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The transpose of the layer's operation with ``weight`` applied to ``grad``.

        ``x`` is the layer's input: only its shape counts, but the backends want a real
        tensor (``torch.nn.grad.conv2d_input`` passes an expanded one, which they copy whole).
        """
        if isinstance(self.module, nn.Linear):
            return grad @ weight
        module = self.module
        if module.padding_mode == "zeros" and not isinstance(module.padding, str):
            return torch.ops.aten.convolution_backward(
                grad,
                x,
                weight,
                None,
                module.stride,
                module.padding,
                module.dilation,
                False,
                [0] * len(module.stride),
                module.groups,
                (True, False, False),
            )[0]
        with torch.enable_grad():  # padding modes / "same": let autograd transpose it
            probe = torch.zeros_like(x, requires_grad=True)
            (result,) = torch.autograd.grad(module._conv_forward(probe, weight, None), probe, grad)
        return result

    def parts(self) -> dict[str, Any]:
        """Positive and negative parts of the weights and bias (kept with the weights)."""
        return {name: self.weights.part(name) for name in ("wp", "wn", "bp", "bn")}


def _layer_spec(module, bn, *, rule, first, nonnegative, epsilon, gamma, box) -> LayerSpec:
    return LayerSpec(
        rule=rule,
        module=module,
        weights=canonical(module, bn),
        first=first,
        nonnegative=nonnegative,
        epsilon=epsilon,
        gamma=gamma,
        box=box,
    )


def _merge(weight, bias, bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights of layer-then-BatchNorm (eval mode) as one affine layer (new tensors)."""
    std = (bn.running_var.detach() + bn.eps) ** 0.5
    scale = (bn.weight.detach() if bn.weight is not None else torch.ones_like(std)) / std
    shift = bn.bias.detach() if bn.bias is not None else torch.zeros_like(std)
    merged_w = weight * scale.reshape(-1, *([1] * (weight.ndim - 1)))
    base = bias if bias is not None else torch.zeros(1, dtype=weight.dtype, device=weight.device)
    return merged_w, (base - bn.running_mean.detach()) * scale + shift


def stabilise(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``z`` moved away from 0 by ``epsilon`` with its sign (0 counts as positive).

    The same numbers as Zennit's ``z + ((z == 0) + sign(z)) * epsilon``: ``|z| + epsilon``
    with the sign of ``z + 0.0`` (which turns -0.0 into +0.0). A comparison and ``where`` take
    about 2.5x as long on a CPU.
    """
    return z.abs().add_(epsilon).copysign_(z + 0.0)


def _ratio_to_own(relevance: torch.Tensor, z: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``relevance / stabilise(z, epsilon)`` for a ``relevance`` that is ``z`` times something.

    Where ``z`` is -0.0 the result is 0 whatever the denominator's sign, so the sign needs no
    fix for it: one pass fewer than :func:`stabilise`.
    """
    if epsilon == 0:
        return _ratio(relevance, z, 0.0)
    denominator = z.abs().add_(epsilon).copysign_(z)
    return torch.div(relevance, denominator, out=denominator)


def _ratio(relevance: torch.Tensor, z: torch.Tensor, epsilon: float) -> torch.Tensor:
    denominator = stabilise(z, epsilon)
    if epsilon == 0:  # LRP-0: a neuron with z = 0 has no relevance to pass on
        return torch.where(denominator == 0, 0.0, relevance / denominator)
    return torch.div(relevance, denominator, out=denominator)


def propagate(spec: LayerSpec, x: torch.Tensor, z: torch.Tensor, grad: torch.Tensor):
    """The backward of one layer: ``c`` at its input, or relevance at an input layer.

    ``z`` is the layer's (merged) output and ``grad`` the ``c`` arriving there, so the
    layer's output relevance is ``z * grad``. The rules follow Montavon et al. (2019).
    """
    relevance = z * grad
    shape = x.shape
    rule = spec.rule
    if rule in ("flat", "wsquare"):
        return _input_rule(spec, relevance, x)
    if rule == "zbox":
        parts = spec.parts()
        low, high = (bound.to(x.dtype).reshape(shape[1:]).expand(shape) for bound in spec.box)
        denominator = (
            spec.forward(x, spec.weight, spec.bias)
            - spec.forward(low, parts["wp"], parts["bp"])
            - spec.forward(high, parts["wn"], parts["bn"])
        )
        s = _ratio(relevance, denominator, STABILIZER)
        return (
            x * spec.vjp(spec.weight, s, x)
            - low * spec.vjp(parts["wp"], s, x)
            - high * spec.vjp(parts["wn"], s, x)
        )
    if rule == "epsilon":
        c = spec.vjp(spec.weight, _ratio_to_own(relevance, z, spec.epsilon), x)
    elif rule == "gamma":
        c = _gamma(spec, x, z, relevance)
    else:
        alpha, beta = {"zplus": (1, 0), "alpha1beta0": (1, 0), "alpha2beta1": (2, 1)}[rule]
        c = _alpha_beta(spec, x, relevance, alpha=alpha, beta=beta)
    return x * c if spec.first else c


def _input_rule(spec: LayerSpec, relevance: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The flat and w-square rules: relevance spread by the weights (all ones, or squared).

    Their denominators depend only on the input's shape (the rules' input is all ones), so
    they are computed once per call. The flat rule's weights are the same for every output
    neuron, so without groups it sums the output relevance over the outputs first and spreads
    that sum through one output of ones: one thin transposed operation instead of a full one.
    """
    key = (spec.rule, tuple(x.shape[1:]), relevance.dtype, relevance.device)
    if key not in spec.cache:
        weight = spec.weight.to(relevance.dtype)
        if spec.rule == "wsquare":
            w = weight**2
            b = None if spec.bias is None else spec.bias.to(relevance.dtype) ** 2
        elif getattr(spec.module, "groups", 1) == 1:
            w, b = weight.new_ones((1, *weight.shape[1:])), None
        else:
            w, b = torch.ones_like(weight), None
        ones = torch.ones((1, *x.shape[1:]), dtype=relevance.dtype, device=relevance.device)
        spec.cache[key] = (w, stabilise(spec.forward(ones, w, b), STABILIZER))
    w, denominator = spec.cache[key]
    if len(w) > 1 or len(spec.weight) == 1:
        return spec.vjp(w, relevance.div_(denominator), x)
    # flat: sum over the outputs, then spread through the ones of one output
    if isinstance(spec.module, nn.Linear):
        return (relevance.sum(-1, keepdim=True).div_(denominator)).expand(x.shape)
    s = relevance.sum(1, keepdim=True).div_(denominator)
    module = spec.module
    if (
        module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
        and all(st == 1 for st in module.stride)
    ):
        # Stride 1: the transposed operation is a convolution with the (symmetric) ones, on
        # one channel, which CPU backends run many times faster than a one-channel transpose.
        sizes = zip(module.padding, module.dilation, w.shape[2:], strict=True)
        padding = [d * (k - 1) - p for p, d, k in sizes]
        if min(padding) >= 0:
            conv = F.conv1d if isinstance(module, nn.Conv1d) else F.conv2d
            return conv(s, w[:1, :1], None, 1, padding, module.dilation).expand(x.shape)
    return spec.vjp(w, s, x)


def _signed_pass(spec, x, relevance, w_pos_in, b_pos_in, w_neg_in, *, positive=False):
    """The ratio and c of one "x+ with w_pos_in, x- with w_neg_in" pass (alpha-beta, gamma).

    For inputs known to be >= 0 (after a ReLU) the x- half is zero and skipped. ``positive``:
    the pass sums only contributions >= 0 (alpha's), and ``b_pos_in`` holds its stabiliser
    (Zennit's 1e-6 added to every output, ``Weights.part("bp+")``).
    """

    def back(s_):
        if spec.nonnegative:
            return spec.vjp(w_pos_in, s_, x)
        return torch.where(x > 0, spec.vjp(w_pos_in, s_, x), spec.vjp(w_neg_in, s_, x))

    if spec.nonnegative:
        z = spec.forward(x, w_pos_in, b_pos_in)
    else:
        z = spec.forward(x.clamp(min=0), w_pos_in, b_pos_in)
        z += spec.forward(x.clamp(max=0), w_neg_in, None)
    s = torch.div(relevance, z, out=z) if positive else _ratio(relevance, z, STABILIZER)
    return s, back


def _alpha_beta(spec, x, relevance, *, alpha, beta):
    p = spec.weights.part
    s, back = _signed_pass(spec, x, relevance, p("wp"), p("bp+"), p("wn"), positive=True)
    c = back(s)
    if beta:
        s_neg, back_neg = _signed_pass(spec, x, relevance, p("wn"), p("bn"), p("wp"))
        c = alpha * c - beta * back_neg(s_neg)
    elif alpha != 1:
        c = alpha * c
    return c


def _gamma(spec, x, z, relevance):
    """Generalised gamma rule: positive contributions boosted by gamma, per output sign."""
    key = ("gamma", spec.gamma)
    if key not in spec.cache:
        p = spec.weights.part
        w, b, g = spec.weight, spec.bias, spec.gamma
        spec.cache[key] = (
            w + g * p("wp"),
            w + g * p("wn"),
            None if b is None else b + g * p("bp"),
            None if b is None else b + g * p("bn"),
        )
    gp, gn, gbp, gbn = spec.cache[key]
    s_pos, back_pos = _signed_pass(spec, x, relevance, gp, gbp, gn)
    s_neg, back_neg = _signed_pass(spec, x, relevance, gn, gbn, gp)
    return back_pos((z > 0) * s_pos) + back_neg((z < 0) * s_neg)


# ---------------------------------------------------------------------- hooks


class _Rule(torch.autograd.Function):
    """Returns the layer's output unchanged; its backward applies the layer's rule."""

    @staticmethod
    def forward(ctx, x, z, spec, copy):
        ctx.save_for_backward(x, z)
        ctx.spec = spec
        # A new tensor only when the forward overwrites it later (an in-place ReLU): z must
        # keep the layer's output for the backward.
        return z.clone() if copy else z

    @staticmethod
    def backward(ctx, grad):
        x, z = ctx.saved_tensors
        return propagate(ctx.spec, x, z, grad), None, None, None


class _PassThrough(torch.autograd.Function):
    """An activation's output whose backward passes relevance through: c_z = c_a * a / z."""

    @staticmethod
    def forward(ctx, z, a):
        ctx.save_for_backward(z, a)
        return a.clone()

    @staticmethod
    def backward(ctx, grad):
        z, a = ctx.saved_tensors
        ratio = torch.where(z == 0, 0.0, a / torch.where(z == 0, 1.0, z))
        return grad * ratio, None


class _Split(torch.autograd.Function):
    """A sum or an average pool's output; its backward splits relevance over the terms in
    proportion to them, with a stabiliser: c of each term is c_y * y / (y + sign(y) * eps)."""

    @staticmethod
    def forward(ctx, y, epsilon, copy):
        ctx.save_for_backward(y)
        ctx.epsilon = epsilon
        return y.clone() if copy else y  # as _Rule's

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return _ratio_to_own(grad * y, y, ctx.epsilon), None, None


def relevance_actions(
    plan: _graph.Plan, graph: _graph.Graph, specs: dict, *, epsilon: float
) -> dict:
    """What the rerun forward does at each node with a rule (see :func:`_graph.rerun`).

    Sums and average pools split relevance with Zennit's stabiliser 1e-6, or ``epsilon``
    when smaller, so that LRP-epsilon conserves relevance as epsilon goes to 0.
    """
    split_epsilon = min(epsilon, STABILIZER)
    merged_into = {layer: bn for bn, layer in plan.merged.items()}
    pending: dict[Any, torch.Tensor] = {}  # a merged layer's input, until its BatchNorm runs

    copy = {n: _graph.overwritten(n, graph) for n in (*plan.layers, *plan.merged, *plan.sums)}

    # A layer with a BatchNorm after it runs merged with it in the forward too: one operation
    # fewer. (Its forward is the layer type's own: the plan refuses subclasses that override
    # it, so the merged weights compute what the pair computes.)
    def layer(node, args, kwargs, call):
        with torch.no_grad():  # the rule is the backward: no graph for the layer itself
            if node in merged_into:  # the BatchNorm's output (only the BatchNorm reads this one)
                spec = specs[node]
                pending[node] = args[0]
                return spec.forward(args[0], spec.weight, spec.bias)
            out = call(args, kwargs)
        return _Rule.apply(args[0], out, specs[node], copy[node])

    def batch_norm(node, args, kwargs, call):
        layer_node = plan.merged[node]  # args[0]: the layer's output, merged already
        return _Rule.apply(pending.pop(layer_node), args[0], specs[layer_node], copy[node])

    def split(node, args, kwargs, call):
        if split_epsilon == 0:
            return call(args, kwargs)  # LRP-0: the plain gradient splits exactly
        return _Split.apply(call(args, kwargs), split_epsilon, copy[node])

    def pass_through(node, args, kwargs, call):
        z = args[0].clone() if _graph.is_inplace(node, graph) else args[0]
        return _PassThrough.apply(z, call(args, kwargs).detach())

    actions = {}
    actions.update(dict.fromkeys(plan.layers, layer))
    actions.update(dict.fromkeys(plan.merged, batch_norm))
    actions.update(dict.fromkeys(plan.sums, split))
    actions.update(dict.fromkeys(plan.elementwise, pass_through))
    return actions
