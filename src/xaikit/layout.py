"""Memory layout: a channels-last copy of a convolutional network, when it scores faster.

Convolutions on CPUs (oneDNN) and on GPUs with tensor cores run faster on NHWC tensors; a
small CNN here scored 1.2x (ResNet-18) to 2.3x (small CNN) faster with channels-last inputs
and weights. The user's model is never converted: the fast layout runs on a copy, made once
per model object and made again when any of its parameters or buffers changes (each tensor's
version counter and storage say so, and a sample of its values), or its structure or settings
(a swapped submodule, a changed attribute the forward reads): ``_torch.module_stamp``.

The copy only ever scores in eval mode, so each ``BatchNorm2d`` that a ``Conv2d`` feeds alone
is folded into that convolution's weights and replaced by ``nn.Identity`` in the copy
(:func:`fold_batch_norms`; Ioffe & Szegedy 2015, Alg. 2, give the inference transform; Jacob et
al. 2018 fold it the same way): one pass fewer over those feature maps, 10-15% of ResNet-18's
forward on a CPU; and each ``nn.ReLU`` whose input is a fresh tensor read by nothing else runs
in place (:func:`relus_in_place`, about 3% more). On a CPU in float32, each convolution then
takes the ReLU after it, and a residual block's sum before that ReLU, into one oneDNN call
(:func:`fuse_convolutions`: 4-10% of ResNet-18's forward, 10% of the MNIST CNN's); that copy
runs the fx graph, so it is made only where the graph is faithful to the forward and scores the
first item of the first batch, and noise, like the unfused copy. What qualifies is read from a
``torch.fx`` trace of the copy; a model that does not trace keeps its BatchNorms and ReLUs as
they are.

The batch-size search times both layouts at the chosen batch size and keeps the copy only when
it is faster and its scores equal the user's module's within float tolerance (``RTOL``,
``ATOL`` of the largest score), measured on that same batch; a copy whose forward fails is not
kept. Only score calls (forward passes, as the perturbation methods make) use the copy.
Gradient calls (saliency, Integrated Gradients, LRP, ...) run the user's own module, and the
same search may feed it channels-last inputs, kept only when faster and when the scores and
gradients equal the default layout's (LRP on a ResNet-50 on this CPU: 1.13x the time of a
plain NCHW forward and backward pass instead of 1.34-1.41x, relevance within 1e-5 of the
largest). Layer recordings and any model with hooks use the default layout.
"""

from __future__ import annotations

import copy
import operator
import weakref
from typing import Any

import numpy as np
import torch
from torch import nn

from xaikit._torch import module_stamp, user_code_around_layers

RTOL = 1e-4
ATOL = 1e-5  # times the largest |score| of the batch
GAIN = 0.95  # channels-last must take at most this share of the default layout's time

# module -> {(in_place, fused): (stamp, copy)}
_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_CHOSEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> {key: layout}


def may_use_channels_last(module: nn.Module | None, x: Any, forward_kwargs: dict) -> bool:
    """Whether a score call on ``x`` could run on a channels-last copy of ``module``.

    Needs a plain module with a 2-D convolution, float images ``(N, C, H, W)``, no forward
    arguments, no hooks anywhere in the module nor global ones (a hook must see the user's own
    layers), and no forward replaced on a module instance.
    """
    if module is None or isinstance(module, torch.jit.ScriptModule) or forward_kwargs:
        return False
    if getattr(x, "ndim", 0) != 4 or not _floating(x):
        return False
    if user_code_around_layers(module):  # global hooks would see the copy's layers; the
        return False  # folds and fusions read a class's forward, not one set on an instance
    convolution = False
    for m in module.modules():
        if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks:
            return False
        convolution = convolution or isinstance(m, nn.Conv2d)
    return convolution


def chosen_layout(module: nn.Module, key: tuple) -> str:
    """``"channels_last"`` or ``"contiguous"`` (also when not chosen yet) for a call key."""
    return _CHOSEN.get(module, {}).get(key, "contiguous")


def choose(module: nn.Module, key: tuple, layout: str) -> None:
    _CHOSEN.setdefault(module, {})[key] = layout


def preset(module: nn.Module, layouts: dict[tuple, str]) -> None:
    """Install layouts chosen elsewhere (a first attempt of an audit); a choice made stays."""
    chosen = _CHOSEN.setdefault(module, {})
    for key, layout in layouts.items():
        chosen.setdefault(key, layout)


def chosen_layouts(module: nn.Module) -> dict[tuple, str]:
    """The layouts chosen so far for ``module``, per call key."""
    return dict(_CHOSEN.get(module, {}))


def channels_last_copy(
    module: nn.Module, *, in_place: bool = True, example: torch.Tensor | None = None
) -> nn.Module:
    """The module's channels-last copy (BatchNorms folded), made again when its weights change.

    ``in_place``: ReLUs that may overwrite their input do (:func:`relus_in_place`), and with an
    ``example`` batch (channels-last, a few items) convolutions take the ReLU that follows them
    (:func:`fuse_convolutions`), for whole forwards. Incremental occlusion runs single layers
    on views of kept maps, which an in-place ReLU would overwrite, so it asks for
    ``in_place=False`` (another copy, never fused: its layers stay the user's).
    """
    stamp = module_stamp(module)
    copies = _COPIES.setdefault(module, {})
    kind = (in_place, in_place and example is not None)
    held = copies.get(kind)
    if held is None or held[0] != stamp:
        twin = copy.deepcopy(module)
        for m in twin.modules():
            m.training = False  # scores run in eval mode, as on the user's module
        fold_batch_norms(twin)
        if in_place:
            relus_in_place(twin)
        twin = twin.to(memory_format=torch.channels_last)
        if in_place and example is not None:
            twin = fuse_convolutions(twin, example)
        held = (stamp, twin)
        copies[kind] = held
    return held[1]


def fold_batch_norms(module: nn.Module) -> list[str]:
    """Fold every eval-mode ``BatchNorm2d`` fed only by a ``Conv2d`` into it, in place.

    For a copy that scores in eval mode only (never call it on a user's module). BatchNorm in
    eval mode is the affine map ``gamma (y - mean) / sqrt(var + eps) + beta`` (Ioffe & Szegedy
    2015, Alg. 2), so ``bn(conv(x))`` is one convolution with scaled weights and a shifted bias
    (``torch.nn.utils.fusion.fuse_conv_bn_eval``). A pair is folded only when the trace shows
    that the convolution's output goes to that BatchNorm and nowhere else, each module runs
    once per forward under one name, and the forward reads neither module's tensors directly;
    the BatchNorm becomes ``nn.Identity`` at the same path (paths stay valid). Returns the
    folded BatchNorms' paths.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    graph = _graph(module)
    if graph is None:  # a forward with data-dependent control flow: nothing is folded
        return []
    calls = _call_counts(module, graph)
    read = [n.target for n in graph.nodes if n.op == "get_attr"]
    folded = []
    for node in graph.nodes:
        source = _only_input(node)
        if source is None or source.op != "call_module" or len(source.users) != 1:
            continue
        bn, conv = module.get_submodule(node.target), module.get_submodule(source.target)
        # exact types: a subclass may compute something else in its forward
        if type(bn) is not nn.BatchNorm2d or type(conv) is not nn.Conv2d:
            continue
        if bn.running_mean is None or bn.running_var is None or not bn.track_running_stats:
            continue  # batch statistics even in eval mode: not an affine map
        if calls[id(bn)] != 1 or calls[id(conv)] != 1:
            continue  # a shared module: folding would change its other uses
        if any(r.startswith((f"{node.target}.", f"{source.target}.")) for r in read):
            continue  # the forward reads the weights itself
        _set_submodule(module, source.target, fuse_conv_bn_eval(conv, bn))
        _set_submodule(module, node.target, nn.Identity())
        folded.append(node.target)
    return folded


def relus_in_place(module: nn.Module) -> list[str]:
    """Make each ``nn.ReLU`` in place whose input is a fresh tensor that nothing else reads.

    For a copy that only scores (never a user's module): an in-place ReLU writes no new feature
    map, about 3% of ResNet-18's forward on a CPU. Fresh means the output of a convolution,
    linear layer, BatchNorm or sum (not a view, an input, or a tensor another node also reads:
    overwriting those would change what the rest of the forward sees); a folded BatchNorm's
    ``nn.Identity`` passes its input's freshness on. Returns the changed ReLUs' paths.
    """
    graph = _graph(module)
    if graph is None:
        return []
    calls = _call_counts(module, graph)
    roots = _memory_roots(module, graph)
    changed = []
    for node in graph.nodes:
        source = _only_input(node)
        if source is None or len(source.users) != 1 or not _fresh(module, source, roots):
            continue
        relu = module.get_submodule(node.target)
        if type(relu) is nn.ReLU and calls[id(relu)] == 1:
            relu.inplace = True
            changed.append(node.target)
    return changed


def fuse_convolutions(module: nn.Module, example: torch.Tensor) -> nn.Module:
    """A graph copy of ``module`` whose convolutions apply the ReLU after them, and the sum
    before that ReLU (a residual block's ``relu(bn(conv(x)) + skip)``), in the same oneDNN call.

    For a copy that only scores on a CPU in float32 (after :func:`fold_batch_norms`, so a
    folded BatchNorm's ``nn.Identity`` may sit between): the fused call writes its output once
    instead of three times, 4-10% of ResNet-18's forward on this CPU, with scores equal to the
    unfused copy's (oneDNN post-ops; Chetlur et al. 2014 and the oneDNN documentation describe
    the fusion). Runs on the ``torch.fx`` trace of ``module``, so it is tried only where that
    trace is what the forward computes: no arithmetic whose first operand's memory (itself, a
    view of it, what it views) is read again after it (:func:`_hidden_update`: the trace cannot
    tell ``h + y`` from an in-place ``h += y``). The copy is kept only when it scores
    ``example`` and uniform noise of its range like ``module`` (``RTOL``, ``ATOL``; a blank
    first item alone scores alike under many wrong graphs); otherwise, or when nothing fuses,
    or the backend lacks the fused call, ``module`` is returned as it is.
    """
    if not _fusion_available(module, example):
        return module
    traced = _symbolic_trace(module)
    if traced is None:
        return module
    graph = traced.graph
    if _hidden_update(traced):
        return module
    calls = _call_counts(module, graph)
    read = [n.target for n in graph.nodes if n.op == "get_attr"]
    fused = 0
    for relu in list(graph.nodes):
        if not _is_relu(traced, relu):
            continue
        source, other = relu.args[0], None
        if _is_plain_sum(source):
            for first, second in (source.args, source.args[::-1]):
                chain = _convolution_chain(traced, first, calls, read)
                if chain and first is not second:
                    source, other = first, second
                    break
            else:
                continue
        chain = _convolution_chain(traced, source, calls, read)
        if not chain:
            continue
        name = f"fused_{fused}"
        traced.add_submodule(name, _FusedConvolution(traced.get_submodule(chain[-1].target)))
        with graph.inserting_before(relu):
            args = (chain[-1].args[0],) if other is None else (chain[-1].args[0], other)
            node = graph.call_module(name, args)
        old_sum = relu.args[0] if other is not None else None
        relu.replace_all_uses_with(node)
        for dead in [relu, old_sum, *chain]:
            if dead is not None:
                graph.erase_node(dead)
        fused += 1
    if not fused:
        return module
    graph.lint()
    traced.recompile()
    traced.delete_all_unused_submodules()
    # the example (a perturbation method's first input may be its blank baseline, on which a
    # wrong graph can score right) and uniform noise of its range
    scale = float(example.abs().max()) or 1.0
    draws = torch.Generator().manual_seed(0)  # never the user's global generator
    noise = torch.rand(example.shape, generator=draws).to(example) * scale
    probe = torch.cat([example, noise])
    try:
        # A forward that draws random numbers (``+ torch.rand(3)``) has them baked into the
        # trace as constants: drawn under another seed here, they differ, and it is refused.
        with torch.inference_mode(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(_PROBE_SEED)
            expected = _tensors(module(probe.clone(memory_format=torch.channels_last)))
            torch.manual_seed(_PROBE_SEED)
            got = _tensors(traced(probe.clone(memory_format=torch.channels_last)))
    except Exception:
        return module
    if expected is None or got is None or len(expected) != len(got):
        return module
    same = all(
        a.shape == b.shape and equal_scores(a.float().numpy(), b.float().numpy())
        for a, b in zip(expected, got, strict=True)
    )
    return traced if same else module


class _FusedConvolution(nn.Module):
    """A ``Conv2d`` whose output goes through a ReLU, after adding ``other`` when given, in one
    oneDNN call (``torch.ops.mkldnn._convolution_pointwise``, what ``torch.compile`` emits for
    the same pattern on CPUs). Holds the convolution's own weight and bias."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.weight, self.bias = conv.weight, conv.bias
        self.settings = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)

    def forward(self, x: torch.Tensor, other: torch.Tensor | None = None) -> torch.Tensor:
        ops = torch.ops.mkldnn
        if other is None:
            return ops._convolution_pointwise(
                x, self.weight, self.bias, *self.settings, "relu", [], ""
            )
        return ops._convolution_pointwise.binary(
            x, other, self.weight, self.bias, *self.settings, "add", None, "relu", [], ""
        )


def _fusion_available(module: nn.Module, example: torch.Tensor) -> bool:
    """Float32 on a CPU whose PyTorch has oneDNN's fused convolution."""
    backend = torch.backends.mkldnn
    if not (backend.is_available() and backend.enabled) or example.device.type != "cpu":
        return False
    if not hasattr(torch.ops.mkldnn, "_convolution_pointwise") or example.dtype != torch.float32:
        return False
    tensors = [*module.parameters(), *module.buffers()]
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)


# Python's augmented assignments: fx traces ``a += b`` as ``a + b`` (a Proxy has no __iadd__)
_AUGMENTED = (
    operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv,
    operator.mod, operator.pow, operator.matmul, operator.and_, operator.or_, operator.xor,
    operator.lshift, operator.rshift, torch.add, torch.mul,
)  # fmt: skip
_DROPOUT = nn.modules.dropout._DropoutNd  # the identity in eval mode: returns its input
# ops whose result shares its first input's memory
_VIEW_METHODS = {
    "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "transpose", "permute",
    "narrow", "expand", "expand_as", "squeeze", "unsqueeze", "detach", "t", "contiguous",
    "as_strided", "select", "split", "chunk", "unbind", "movedim", "swapaxes", "diagonal",
    "real", "imag", "unfold", "to", "type_as", "float",
}  # fmt: skip
_VIEW_FUNCTIONS = {
    operator.getitem, getattr, torch.flatten, torch.reshape, torch.narrow, torch.squeeze,
    torch.unsqueeze, torch.transpose, torch.permute, torch.t, torch.select, torch.split,
    torch.chunk, torch.unbind, torch.movedim, torch.swapaxes, torch.detach, torch.diagonal,
    torch.relu_, torch.dropout, nn.functional.dropout, nn.functional.dropout1d,
    nn.functional.dropout2d, nn.functional.dropout3d,  # in eval mode: the input itself
}  # fmt: skip


def _hidden_update(traced: nn.Module) -> bool:
    """Whether the trace may compute something else than the forward: an arithmetic node
    whose first operand's memory (the operand, what it is a view of, views of it) is read
    again after it. Python's ``skip = h[:]; h += y`` changes ``skip`` too, but fx traces the
    ``+=`` as a new tensor ``h + y``; a plain ``h + y`` is flagged alike (the trace cannot tell
    them apart), which only costs the fusion."""
    from torch import fx

    roots = _memory_roots(traced, traced.graph)
    for node in traced.graph.nodes:
        if node.op != "call_function" or node.target not in _AUGMENTED or not node.args:
            continue
        first = node.args[0]
        if isinstance(first, fx.Node) and _memory_read_after(first, node, roots):
            return True
    return False


def _memory_roots(module: nn.Module, graph) -> dict:
    """Each node's memory group, named by its first node: a view or an in-place result joins
    its input's group (:func:`_aliased_input`)."""
    roots: dict = {}
    for node in graph.nodes:
        source = _aliased_input(module, node)
        roots[node] = roots.get(source, source) if source is not None else node
    return roots


def _memory_read_after(value, node, roots: dict) -> bool:
    """Whether a node after ``node`` reads ``value``'s memory (``value``, its views, what it
    views), besides ``node`` itself."""
    group = {n for n, r in roots.items() if r is roots[value]}
    later = node.next
    while later.op != "root":  # the graph's sentinel ends the list
        if any(n in group for n in later.all_input_nodes):
            return True
        later = later.next
    return False


def _aliased_input(module: nn.Module, node):
    """The node whose memory ``node``'s result shares (a view, an in-place op, a layer that
    returns its input), or None for a new tensor."""
    from torch import fx

    source = node.args[0] if node.args else None
    if not isinstance(source, fx.Node):
        return None
    if node.op == "call_method":
        aliased = node.target in _VIEW_METHODS or node.target.endswith("_")
    elif node.op == "call_function":
        aliased = node.target in _VIEW_FUNCTIONS or node.kwargs.get("inplace") is True
    elif node.op == "call_module":
        layer = module.get_submodule(node.target)
        aliased = getattr(layer, "inplace", False) is True or isinstance(
            layer, (nn.Identity, nn.Flatten, nn.Unflatten, _DROPOUT)
        )
    else:
        aliased = False
    return source if aliased else None


def _is_relu(traced: nn.Module, node) -> bool:
    """An ``nn.ReLU`` call, ``torch.relu``/``F.relu`` or ``.relu()`` on one tensor."""
    from torch import fx

    if not node.args or not isinstance(node.args[0], fx.Node) or len(node.args) > 1:
        return False
    if node.op == "call_module":
        return type(traced.get_submodule(node.target)) is nn.ReLU and not node.kwargs
    if node.op == "call_function":
        functions = (torch.relu, torch.relu_, nn.functional.relu)
        return node.target in functions and set(node.kwargs) <= {"inplace"}
    return node.op == "call_method" and node.target in ("relu", "relu_") and not node.kwargs


def _is_plain_sum(node) -> bool:
    """``a + b`` of two traced tensors (no ``alpha``, no scalar)."""
    from torch import fx

    return (
        node.op == "call_function"
        and node.target in (operator.add, torch.add)
        and len(node.args) == 2
        and not node.kwargs
        and all(isinstance(a, fx.Node) for a in node.args)
        and len(node.users) == 1
    )


def _convolution_chain(traced: nn.Module, node, calls: dict[int, int], read: list[str]):
    """``[identity..., conv]`` when ``node`` is a plain ``Conv2d`` call, through folded
    BatchNorms' ``nn.Identity``, each read only by the next; else an empty list."""
    chain = []
    while node.op == "call_module" and len(node.users) == 1:
        layer = traced.get_submodule(node.target)
        chain.append(node)
        if type(layer) is nn.Identity and _only_input(node) is not None:
            node = node.args[0]
            continue
        usable = (
            type(layer) is nn.Conv2d
            and layer.padding_mode == "zeros"
            and isinstance(layer.padding, tuple)  # not "same"/"valid"
            and calls.get(id(layer)) == 1
            and _only_input(node) is not None
            and not any(r.startswith(f"{node.target}.") for r in read)
        )
        return chain if usable else []
    return []


def _tensors(out) -> list[torch.Tensor] | None:
    """The tensors of a forward's output (a tensor, or tuples, lists and dicts of them)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        parts = [_tensors(o) for o in out]
        return None if any(p is None for p in parts) else [t for p in parts for t in p]
    return None


def _graph(module: nn.Module):
    """The module's ``torch.fx`` graph, or None when the forward does not trace."""
    traced = _symbolic_trace(module)
    return None if traced is None else traced.graph


def _symbolic_trace(module: nn.Module):
    """``torch.fx.symbolic_trace(module)``, or None when the forward does not trace. The trace
    runs random calls on untraced arguments (``torch.rand(3)``): in a forked generator, so the
    user's random stream is left as it was."""
    from torch import fx

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_TRACE_SEED)  # what a baked random call drew: see fuse_convolutions
        try:
            return fx.symbolic_trace(module)
        except Exception:
            return None


_TRACE_SEED, _PROBE_SEED = 1, 2


def _call_counts(module: nn.Module, graph) -> dict[int, int]:
    """How often each module object runs in the forward (a module may sit under two names)."""
    calls: dict[int, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            key = id(module.get_submodule(node.target))
            calls[key] = calls.get(key, 0) + 1
    return calls


def _only_input(node):
    """The one node a module call takes (no other arguments), else None."""
    from torch import fx

    if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
        return None
    source = node.args[0]
    return source if isinstance(source, fx.Node) else None


def _fresh(module: nn.Module, node, roots: dict) -> bool:
    """Whether ``node``'s value is a new tensor of its own (no view, no shared input);
    ``roots`` from :func:`_memory_roots`."""
    from torch import fx

    if node.op == "call_function":
        # fx reads ``a += b`` as ``a + b``: the real sum may be ``a``'s memory itself, fresh
        # only when nothing reads that memory (``a``, its views, what it views) afterwards
        return (
            node.target in (operator.add, torch.add)
            and not node.kwargs
            and isinstance(node.args[0], fx.Node)
            and not _memory_read_after(node.args[0], node, roots)
        )
    if node.op != "call_module":
        return False
    layer = module.get_submodule(node.target)
    if type(layer) is nn.Identity:  # a folded BatchNorm: its input, if fresh and read once
        source = _only_input(node)
        return source is not None and len(source.users) == 1 and _fresh(module, source, roots)
    return type(layer) in (nn.Conv2d, nn.Linear, nn.BatchNorm2d)


def _set_submodule(root: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, new)


def as_channels_last(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.contiguous(memory_format=torch.channels_last)


def fresh_channels_last(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in channels-last memory of its own, with one copy at most.

    With more than one channel the change of layout is itself the copy that keeps a forward
    from reaching the caller's memory; with one channel (or a batch already channels-last)
    nothing moves, so a copy is made.
    """
    out = as_channels_last(tensor)
    if out.untyped_storage().data_ptr() == tensor.untyped_storage().data_ptr():
        out = out.clone(memory_format=torch.channels_last)
    return out


def equal_scores(a: np.ndarray, b: np.ndarray) -> bool:
    scale = float(np.abs(a).max(initial=0.0))
    return bool(np.allclose(a, b, rtol=RTOL, atol=ATOL * max(scale, 1e-12)))


def _floating(x: Any) -> bool:
    dtype = x.dtype
    if isinstance(dtype, torch.dtype):
        return dtype.is_floating_point
    return np.dtype(dtype).kind == "f"
