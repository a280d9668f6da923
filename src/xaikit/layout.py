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
in place (:func:`relus_in_place`, about 3% more). What qualifies is read from a ``torch.fx``
trace of the copy; a model that does not trace keeps its BatchNorms and ReLUs as they are.

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

from xaikit._torch import module_stamp

RTOL = 1e-4
ATOL = 1e-5  # times the largest |score| of the batch
GAIN = 0.95  # channels-last must take at most this share of the default layout's time

# module -> {in_place: (stamp, copy)}
_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_CHOSEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> {key: layout}


def may_use_channels_last(module: nn.Module | None, x: Any, forward_kwargs: dict) -> bool:
    """Whether a score call on ``x`` could run on a channels-last copy of ``module``.

    Needs a plain module with a 2-D convolution, float images ``(N, C, H, W)``, no forward
    arguments, and no hooks anywhere in the module (a hook must see the user's own layers).
    """
    if module is None or isinstance(module, torch.jit.ScriptModule) or forward_kwargs:
        return False
    if getattr(x, "ndim", 0) != 4 or not _floating(x):
        return False
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


def channels_last_copy(module: nn.Module, *, in_place: bool = True) -> nn.Module:
    """The module's channels-last copy (BatchNorms folded), made again when its weights change.

    ``in_place``: ReLUs that may overwrite their input do (:func:`relus_in_place`), for whole
    forwards. Incremental occlusion runs single layers on views of kept maps, which an in-place
    ReLU would overwrite, so it asks for ``in_place=False`` (another copy).
    """
    stamp = module_stamp(module)
    copies = _COPIES.setdefault(module, {})
    held = copies.get(in_place)
    if held is None or held[0] != stamp:
        twin = copy.deepcopy(module)
        for m in twin.modules():
            m.training = False  # scores run in eval mode, as on the user's module
        fold_batch_norms(twin)
        if in_place:
            relus_in_place(twin)
        twin = twin.to(memory_format=torch.channels_last)
        held = (stamp, twin)
        copies[in_place] = held
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
    changed = []
    for node in graph.nodes:
        source = _only_input(node)
        if source is None or len(source.users) != 1 or not _fresh(module, source):
            continue
        relu = module.get_submodule(node.target)
        if type(relu) is nn.ReLU and calls[id(relu)] == 1:
            relu.inplace = True
            changed.append(node.target)
    return changed


def _graph(module: nn.Module):
    """The module's ``torch.fx`` graph, or None when the forward does not trace."""
    from torch import fx

    try:
        return fx.symbolic_trace(module).graph
    except Exception:
        return None


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


def _fresh(module: nn.Module, node) -> bool:
    """Whether ``node``'s value is a new tensor of its own (no view, no shared input)."""
    if node.op == "call_function":
        # fx reads ``a += b`` as ``a + b``: the real sum may be ``a`` itself, fresh only when
        # nothing reads ``a`` afterwards
        return (
            node.target in (operator.add, torch.add)
            and not node.kwargs
            and not _read_after(node.args[0], node)
        )
    if node.op != "call_module":
        return False
    layer = module.get_submodule(node.target)
    if type(layer) is nn.Identity:  # a folded BatchNorm: its input, if fresh and read once
        source = _only_input(node)
        return source is not None and len(source.users) == 1 and _fresh(module, source)
    return type(layer) in (nn.Conv2d, nn.Linear, nn.BatchNorm2d)


def _read_after(value, node) -> bool:
    """Whether the fx node ``value`` is read by a node after ``node`` in the forward."""
    later = node.next
    while later.op != "root":  # the graph's sentinel ends the list
        if value in later.all_input_nodes:
            return True
        later = later.next
    return False


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
