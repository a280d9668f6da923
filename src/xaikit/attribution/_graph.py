"""A model's forward read with torch.fx and rerun with rules, for modified-backward methods.

LRP and DeepLIFT change how relevance flows back through each operation, and they are only
right if every operation between the input and the output has a rule. Hooks see modules, not
the functions a forward calls (``a + b``, ``torch.flatten``, ``F.relu``), so the forward is
traced once with torch.fx (symbolically: nothing is computed) and every operation on the path
from the input is classified, or refused by name before any computation. During a call the
model's forward is then run node by node from that trace (:func:`rerun`), and the nodes that
need a rule get their output wrapped in an autograd function whose backward applies it. The
trace is kept per model object (weakly) for as long as its modules stay the same.
"""

from __future__ import annotations

import builtins
import contextlib
import operator
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from xaikit._torch import module_stamp, preserved_state

LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
MAX_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)
AVG_POOLS = (nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)
RESHAPES = (nn.Flatten, nn.Unflatten, nn.Dropout, nn.Identity)
RELUS = (nn.ReLU, nn.LeakyReLU)  # LRP passes relevance through them with the plain gradient
SMOOTH = (nn.SiLU, nn.GELU)  # zero at zero, so LRP can pass relevance through them
SQUASHING = (nn.ELU, nn.Tanh, nn.Sigmoid, nn.Softplus)  # DeepLIFT only
# Module types kept whole by the trace (subclasses included).
LEAVES = (*LAYERS, *BATCH_NORMS, *MAX_POOLS, *AVG_POOLS, *RESHAPES, *RELUS, *SMOOTH, *SQUASHING)

# Operations linear in the data (sums, reshapes, selections): the plain gradient is their rule
# in the "x * gradient" form both methods use.
_LINEAR_FUNCTIONS = {
    operator.add,
    operator.sub,
    operator.neg,
    operator.getitem,
    torch.add,
    torch.sub,
    torch.neg,
    torch.flatten,
    torch.reshape,
    torch.cat,
    torch.stack,
    torch.sum,
    torch.mean,
    torch.permute,
    torch.transpose,
    torch.squeeze,
    torch.unsqueeze,
    torch.chunk,
    torch.split,
}
_LINEAR_METHODS = {
    "add",
    "sub",
    "neg",
    "flatten",
    "view",
    "reshape",
    "permute",
    "transpose",
    "contiguous",
    "squeeze",
    "unsqueeze",
    "sum",
    "mean",
    "chunk",
    "split",
    "expand",
    "view_as",
    "reshape_as",
    "expand_as",
    "clone",
}
_SUMS = {operator.add, operator.sub, torch.add, torch.sub, "add", "sub"}
_AVG_FUNCTIONS = {F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d}
# Linear when only one operand comes from the input (scaling by a constant or a parameter).
_SCALING = {operator.mul, operator.truediv, torch.mul, torch.div, "mul", "div"}
_RELU_FUNCTIONS = {F.relu, torch.relu, F.leaky_relu, "relu"}
_SMOOTH_FUNCTIONS = {F.silu, F.gelu}
_SQUASHING_FUNCTIONS = {torch.sigmoid, torch.tanh, F.elu, F.softplus, "sigmoid", "tanh"}
_MAX_FUNCTIONS = {F.max_pool1d, F.max_pool2d, F.adaptive_max_pool1d, F.adaptive_max_pool2d}
# Calls whose result is not a tensor of the data (shapes, sizes).
_SHAPE_METHODS = {"size", "dim", "numel"}
_RESHAPES = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze}
_RESHAPE_METHODS = {"flatten", "view", "reshape", "contiguous", "squeeze", "unsqueeze"}


@dataclass
class Graph:
    """A model's traced forward: the fx graph and its modules by name.

    ``plans`` is for the users of the trace to keep what they derive from it (occlusion's
    incremental plans), for as long as the trace is kept.
    """

    graph: fx.Graph
    modules: dict[str, nn.Module]
    plans: dict = field(default_factory=dict)
    hidden_updates: list[str] | None = None  # found by hidden_updates(), once per trace


@dataclass
class Plan:
    """The nodes of a traced forward that need a rule.

    ``layers``: linear/convolution calls on the data path -> module name. ``merged``: a
    BatchNorm call -> the layer call it is merged into (LRP). ``first``: layer calls that read
    the input itself (through reshapes only; LRP). ``nonnegative``: layer calls whose input is
    known to be >= 0 (after a ReLU). ``sums``: additions of two data tensors and average pooling
    (LRP splits relevance over their terms with a stabiliser). ``elementwise``: nonlinearities
    with a rule (LRP: SiLU, GELU; DeepLIFT: every one). ``max_pools``: max pooling (DeepLIFT).
    """

    layers: dict[fx.Node, str] = field(default_factory=dict)
    merged: dict[fx.Node, fx.Node] = field(default_factory=dict)
    first: set[fx.Node] = field(default_factory=set)
    nonnegative: set[fx.Node] = field(default_factory=set)
    sums: set[fx.Node] = field(default_factory=set)
    elementwise: set[fx.Node] = field(default_factory=set)
    max_pools: set[fx.Node] = field(default_factory=set)


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, LEAVES) or super().is_leaf_module(m, qualname)


_TRACES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def trace(module: nn.Module, *, method: str) -> Graph:
    """The model's forward as an fx graph (cached while its modules stay the same)."""
    if isinstance(module, torch.jit.ScriptModule):
        raise TypeError(
            f"model: {method} reads the forward of an nn.Module with torch.fx; a TorchScript "
            "model cannot be read that way (pass the nn.Module itself)"
        )
    modules = dict(module.named_modules())
    # A trace bakes in the modules and the plain attributes the forward reads (a scale, a
    # flag that picks a branch): module_stamp changes with either.
    key = module_stamp(module)[0]
    cached = _TRACES.get(module)
    if cached is not None and cached[0] == key:
        return cached[1]
    try:
        with torch.random.fork_rng(devices=[]):  # a traced random call draws: not the user's
            graph = _Tracer().trace(module)
    except Exception as err:  # fx raises many kinds for data-dependent control flow
        raise ValueError(
            f"model: {method} needs a forward that torch.fx can trace (no Python control flow on "
            f"tensor values); tracing {type(module).__name__} failed: {type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}"
        ) from err
    # The cache is weakly keyed by the model: nothing in its value may refer to the model
    # itself (its submodules only), or the model would never be freed.
    submodules = {name: m for name, m in modules.items() if m is not module}
    result = Graph(graph=graph, modules=submodules)
    _TRACES[module] = (key, result)
    return result


# Python's augmented assignments (``a += b``) on fx proxies trace as ``a + b``: a new tensor in
# the graph, an update of ``a`` in the real forward. Their in-place names when they run.
_AUGMENTED = {
    operator.add: "add_",
    operator.sub: "sub_",
    operator.mul: "mul_",
    operator.truediv: "div_",
    operator.floordiv: "floor_divide_",
    operator.pow: "pow_",
    operator.matmul: "matmul_",
}


def hidden_updates(graph: Graph, module: nn.Module, x: torch.Tensor) -> list[str]:
    """Nodes where the trace and the real forward compute different things: a sum or product
    whose first operand is read again after it (a suspect) and that the real forward, run on
    ``x`` (a batch of one), computed in place (``skip = h; h += y`` adds ``y`` to ``skip``
    too; the trace does not). A suspect is matched to the in-place results of the real
    forward by value: the trace run on ``x`` gives the suspect's value, which an in-place
    call there must have produced. Empty when the trace is faithful in this respect; the
    answer is kept with the trace (the forwards run at most once per trace, and only when
    there are suspects).
    """
    if graph.hidden_updates is not None:
        return graph.hidden_updates
    nodes = list(graph.graph.nodes)
    position = {n: i for i, n in enumerate(nodes)}
    suspects = {
        n
        for n in nodes
        if n.op == "call_function"
        and n.target in _AUGMENTED
        and n.args
        and isinstance(n.args[0], fx.Node)
        and any(position[u] > position[n] for u in n.args[0].users)
    }
    found: list[str] = []
    if suspects:
        with preserved_state(module), torch.inference_mode():
            with _InPlaceResults(set(_AUGMENTED.values())) as real:
                module(x)
            if real.results:
                traced = _SuspectValues(module, graph, suspects)
                traced.run(x)
                found = [
                    n.name
                    for n in nodes
                    if n in traced.values and any(_same(traced.values[n], r) for r in real.results)
                ]
    graph.hidden_updates = found
    return found


def _same(a: Any, b: torch.Tensor) -> bool:
    return (
        isinstance(a, torch.Tensor)
        and a.shape == b.shape
        and a.dtype == b.dtype
        and bool(torch.equal(a, b))
    )


class _InPlaceResults(torch.overrides.TorchFunctionMode):
    """Keeps a copy of the result of every in-place arithmetic call (``add_``, ``mul_``, ...,
    what ``+=`` and ``*=`` run) made inside the block."""

    def __init__(self, names: set[str]) -> None:
        super().__init__()
        self.names = names
        self.results: list[torch.Tensor] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if getattr(func, "__name__", "") in self.names and isinstance(out, torch.Tensor):
            self.results.append(out.detach().clone())
        return out


class _SuspectValues(fx.Interpreter):
    """Runs the trace and keeps a copy of the suspects' values."""

    def __init__(self, module: nn.Module, graph: Graph, suspects: set) -> None:
        super().__init__(module, graph=graph.graph)
        self.suspects = suspects
        self.values: dict[fx.Node, torch.Tensor] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if n in self.suspects and isinstance(out, torch.Tensor):
            self.values[n] = out.detach().clone()
        return out


def refuse_hidden_updates(graph: Graph, module: nn.Module, x: torch.Tensor, *, method: str):
    """Refuse, by node, a forward whose trace is not what it computes (:func:`hidden_updates`)."""
    found = hidden_updates(graph, module, x)
    if found:
        raise ValueError(
            f"model: {method} runs the forward as torch.fx reads it, which differs here from "
            f"what it computes: a tensor is updated in place (a += b) while another name still "
            f"holds it (at {', '.join(found[:3])}), and torch.fx reads the update as a new "
            "tensor; if the other name is not meant to see it, write a = a + b"
        )


def plan(graph: Graph, *, method: str) -> Plan:
    """Classify every operation on the data path; refuse, by name, one without a rule.

    ``method``: ``"lrp"`` (BatchNorm must follow a layer it can be merged into; sigmoid-like
    units are refused) or ``"deeplift"``.
    """
    result = Plan()
    nodes = list(graph.graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise ValueError(
            f"model: {method} explains models with one input tensor; this forward takes "
            f"{len(placeholders)} ({', '.join(n.name for n in placeholders)})"
        )
    data: set[fx.Node] = set()
    nonnegative: set[fx.Node] = set()
    # The input and what it becomes before the first layer (normalised, reshaped): a shift
    # there is preprocessing; after a layer, LRP has no rule for it (see _function_node).
    near_input: set[fx.Node] = set()
    for node in nodes:
        if node.op == "placeholder":
            data.add(node)
            near_input.add(node)
            continue
        if node.op in ("output", "get_attr"):
            continue
        sources = [a for a in node.all_input_nodes if a in data]
        if not sources or _is_shape(node):
            continue  # arithmetic on shapes or parameters only
        data.add(node)
        if node.op == "call_module":
            _module_node(node, graph, sources, nonnegative, result, method)
        else:
            _function_node(node, sources, nonnegative, result, method, near_input)
            if all(s in near_input for s in sources):
                near_input.add(node)
    if method == "lrp":
        result.first = _first_layers(placeholders[0], graph)
    return result


def _module_node(node, graph, sources, nonnegative, result, method) -> None:
    module = graph.modules[node.target]
    if isinstance(module, LAYERS):
        if method == "lrp" and _own_forward(module):
            base = next(t for t in LAYERS if isinstance(module, t)).__name__
            raise ValueError(
                f"model: lrp has no rule for module {node.target!r} ({type(module).__name__}): "
                f"it subclasses nn.{base} with a forward of its own, and the rules propagate "
                "with the weights as stored, which need not be what that forward computes"
            )
        result.layers[node] = node.target
        if sources[0] in nonnegative:
            result.nonnegative.add(node)
        return
    if isinstance(module, BATCH_NORMS):
        if method == "lrp":
            result.merged[node] = _merge_target(node, module, graph)
        return
    if isinstance(module, nn.ReLU) or (
        isinstance(module, (*MAX_POOLS, *AVG_POOLS, *RESHAPES)) and sources[0] in nonnegative
    ):
        nonnegative.add(node)
    if isinstance(module, MAX_POOLS):
        if method == "deeplift":
            result.max_pools.add(node)
    elif isinstance(module, AVG_POOLS):
        if method == "lrp":
            result.sums.add(node)
    elif isinstance(module, RELUS):
        if method == "deeplift":
            result.elementwise.add(node)
    elif isinstance(module, SMOOTH) or (method == "deeplift" and isinstance(module, SQUASHING)):
        result.elementwise.add(node)
    elif not isinstance(module, RESHAPES):
        raise ValueError(
            f"model: {method} has no rule for module {node.target!r} ({type(module).__name__});"
            f" it covers {', '.join(_covered(method))}"
        )


def _own_forward(module: nn.Module) -> bool:
    """A subclass of a layer type that overrides its forward (weight standardisation, say);
    one that only adds attributes or parametrizes its weight runs the layer's own forward."""
    base = next(t for t in LAYERS if isinstance(module, t))
    kind = type(module)
    return kind.forward is not base.forward or (
        hasattr(base, "_conv_forward") and kind._conv_forward is not base._conv_forward
    )


def _function_node(node, sources, nonnegative, result, method, near_input) -> None:
    target = node.target
    if target in _LINEAR_FUNCTIONS or (node.op == "call_method" and target in _LINEAR_METHODS):
        shift = target in _SUMS and len(sources) == 1  # data plus a constant or a parameter
        if shift and method == "lrp" and sources[0] not in near_input:
            # In the x * gradient form the shift would rescale the relevance by h / (h - c)
            # instead of passing it on (Zennit passes it unchanged): refused, not approximated.
            raise ValueError(
                f"model: lrp has no rule for adding a constant or parameter to a feature map "
                f"after a layer (node {node.name!r}, {_name(node)!r}); fold the shift into the "
                "layer before it (its bias), or use deeplift or integrated_gradients"
            )
        if target in _SUMS and len(sources) == 2 and method == "lrp":
            result.sums.add(node)
        negating = target in (operator.sub, torch.sub, "sub", operator.neg, torch.neg, "neg")
        if not negating and not shift and all(s in nonnegative for s in sources):
            nonnegative.add(node)
        return
    if target in _AVG_FUNCTIONS:
        if method == "lrp":
            result.sums.add(node)
        if sources[0] in nonnegative:
            nonnegative.add(node)
        return
    if target in _SCALING:
        divides_by_data = target in (operator.truediv, torch.div, "div") and (
            len(node.args) > 1 and node.args[1] in sources
        )
        if len(sources) == 1 and not divides_by_data:
            return
    elementwise = _RELU_FUNCTIONS | _SMOOTH_FUNCTIONS | _MAX_FUNCTIONS
    if method == "deeplift":
        elementwise = elementwise | _SQUASHING_FUNCTIONS
    if target in elementwise and len(sources) == 1 and node.args[:1] == (sources[0],):
        if target in (F.relu, torch.relu, "relu"):
            nonnegative.add(node)
        if method == "deeplift":
            (result.max_pools if target in _MAX_FUNCTIONS else result.elementwise).add(node)
        elif target in _SMOOTH_FUNCTIONS:
            result.elementwise.add(node)
        return
    raise ValueError(
        f"model: {method} has no rule for the operation {_name(node)!r} in its forward "
        f"(node {node.name!r})"
    )


def _merge_target(node: fx.Node, bn: nn.Module, graph: Graph) -> fx.Node:
    """The layer call a BatchNorm is merged into: the one whose output only it reads."""
    before = node.args[0] if node.args else None
    layer = (
        graph.modules.get(before.target)
        if isinstance(before, fx.Node) and before.op == "call_module"
        else None
    )
    if not isinstance(layer, LAYERS) or len(before.users) != 1:
        raise ValueError(
            f"model: lrp merges each BatchNorm into the linear or convolution layer right "
            f"before it; {node.target!r} does not directly follow one (or that layer's output "
            "is also used elsewhere)"
        )
    if not bn.track_running_stats or bn.running_mean is None:
        raise ValueError(
            f"model: lrp merges BatchNorm {node.target!r} with its running statistics, and it "
            "keeps none (track_running_stats=False)"
        )
    out = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    if out != bn.num_features:
        raise ValueError(
            f"model: BatchNorm {node.target!r} normalises {bn.num_features} features but "
            f"{before.target!r} gives {out}; lrp cannot merge them"
        )
    return before


def _first_layers(placeholder: fx.Node, graph: Graph) -> set[fx.Node]:
    """Layer calls that read the input itself (through reshapes only); refuse anything else."""
    first: set[fx.Node] = set()
    pending = [placeholder]
    while pending:
        node = pending.pop()
        for user in node.users:
            module = graph.modules.get(user.target) if user.op == "call_module" else None
            if isinstance(module, LAYERS):
                first.add(user)
            elif (
                isinstance(module, RESHAPES)
                or (user.op == "call_function" and user.target in _RESHAPES)
                or (user.op == "call_method" and user.target in _RESHAPE_METHODS)
            ):
                pending.append(user)
            elif not _is_shape(user):
                raise ValueError(
                    "x: lrp needs the input to go straight into linear or convolution layers "
                    f"(through reshapes only), but the forward first applies {_name(user)!r} "
                    f"(node {user.name!r})"
                )
    return first


def _is_shape(node: fx.Node) -> bool:
    if node.op == "call_method" and node.target in _SHAPE_METHODS:
        return True
    return node.op == "call_function" and node.target is builtins.getattr


def _name(node: fx.Node) -> str:
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    target = node.target
    module = getattr(target, "__module__", None) or ""
    module = {"_operator": "operator", "torch._C._nn": "torch.nn.functional"}.get(module, module)
    name = getattr(target, "__name__", repr(target))
    return f"{module}.{name}" if module else name


def _covered(method: str) -> list[str]:
    names = ["Linear", "Conv1d/2d", "BatchNorm1d/2d", "ReLU", "LeakyReLU", "SiLU", "GELU"]
    if method == "deeplift":
        names += ["ELU", "Tanh", "Sigmoid", "Softplus"]
    return [*names, "max/average/adaptive pooling", "Flatten", "Unflatten", "Dropout", "Identity"]


# ---------------------------------------------------------------------- rerunning the forward

# An action runs one node itself: action(node, args, kwargs, call) -> the node's value, where
# call(args, kwargs) computes the node as the forward would.
Action = Callable[[fx.Node, tuple, dict, Callable[[tuple, dict], Any]], Any]


class _Runner(fx.Interpreter):
    """Runs the traced forward on the model's own modules, with actions at some nodes."""

    def __init__(self, module: nn.Module, graph: fx.Graph, actions: dict[fx.Node, Action]):
        super().__init__(module, graph=graph)
        self.actions = actions

    def run_node(self, n: fx.Node) -> Any:
        action = self.actions.get(n)
        if action is None:
            return super().run_node(n)
        with self._set_current_node(n):
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            return action(n, args, kwargs, lambda a, k: getattr(self, n.op)(n.target, a, k))


@contextlib.contextmanager
def rerun(module: nn.Module, graph: Graph, actions: dict[fx.Node, Action]) -> Iterator[None]:
    """Within the block, calling ``module`` runs its traced forward with ``actions``.

    The forward is replaced on the instance only (an attribute, as a hook would be) and
    restored when the block ends, also on error; parameters, buffers and submodules are the
    user's, untouched.
    """

    def forward(*args, **kwargs):
        return _Runner(module, graph.graph, actions).run(*args, **kwargs)

    had_own = "forward" in module.__dict__
    own = module.__dict__.get("forward")
    module.forward = forward
    try:
        yield
    finally:
        if had_own:
            module.forward = own
        else:
            del module.forward


def rerun_as(node: fx.Node, graph: Graph, args: tuple, kwargs: dict) -> Callable:
    """``f(t)``: the node's operation with ``t`` as its data input (its first argument).

    Modules are called through ``forward`` (no hooks); in-place ones on a copy.
    """
    rest = args[1:]
    copy = is_inplace(node, graph)
    if node.op == "call_module":
        module = graph.modules[node.target]
        return lambda t: module.forward(t.clone() if copy else t, *rest, **kwargs)
    if node.op == "call_method":
        return lambda t: getattr(t.clone() if copy else t, node.target)(*rest, **kwargs)
    return lambda t: node.target(t.clone() if copy else t, *rest, **kwargs)


def is_inplace(node: fx.Node, graph: Graph) -> bool:
    """Whether the node overwrites its input (an in-place module or ``inplace=True``)."""
    if node.op == "call_module":
        return bool(getattr(graph.modules[node.target], "inplace", False))
    return bool(node.kwargs.get("inplace", False))


# Operations whose result may share memory with their data input.
_ALIASING_FUNCTIONS = {
    *_RESHAPES,
    operator.getitem,
    torch.permute,
    torch.transpose,
    torch.chunk,
    torch.split,
}
_ALIASING_METHODS = {
    *_RESHAPE_METHODS,
    "permute",
    "transpose",
    "expand",
    "view_as",
    "reshape_as",
    "expand_as",
    "chunk",
    "split",
}


def overwritten(node: fx.Node, graph: Graph) -> bool:
    """Whether the forward may overwrite the node's value later (through views included)."""
    pending, seen = [node], set()
    while pending:
        current = pending.pop()
        for user in current.users:
            if user in seen:
                continue
            seen.add(user)
            if user.args[:1] == (current,) and is_inplace(user, graph):
                return True
            aliasing = (
                (user.op == "call_module" and isinstance(graph.modules[user.target], RESHAPES))
                or (user.op == "call_function" and user.target in _ALIASING_FUNCTIONS)
                or (user.op == "call_method" and user.target in _ALIASING_METHODS)
            )
            if aliasing:
                pending.append(user)
    return False
