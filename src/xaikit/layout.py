"""Memory layout: a channels-last copy of a convolutional network, when it scores faster.

Convolutions on CPUs (oneDNN) and on GPUs with tensor cores run faster on NHWC tensors; a
small CNN here scored 1.2x (ResNet-18) to 2.3x (small CNN) faster with channels-last inputs
and weights. The user's model is never converted: the fast layout runs on a copy, made once
per model object and made again when any of its parameters or buffers changes (each tensor's
version counter and storage say so). The batch-size search times both layouts at the chosen
batch size and keeps channels-last only when it is faster and its scores equal the default
layout's within float tolerance (``RTOL``, ``ATOL`` of the largest score), measured on that
same batch. Only score calls (forward passes, as the perturbation methods make) use the copy;
gradients, layer recordings and any model with hooks run the user's own module.
"""

from __future__ import annotations

import copy
import weakref
from typing import Any

import numpy as np
import torch
from torch import nn

from xaikit._torch import tensor_stamp

RTOL = 1e-4
ATOL = 1e-5  # times the largest |score| of the batch
GAIN = 0.95  # channels-last must take at most this share of the default layout's time

_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> (stamp, copy)
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


def chosen_layouts(module: nn.Module) -> dict[tuple, str]:
    """The layouts chosen so far for ``module``, per call key."""
    return dict(_CHOSEN.get(module, {}))


def channels_last_copy(module: nn.Module) -> nn.Module:
    """The module's channels-last copy, made again when its weights have changed."""
    stamp = _stamp(module)
    held = _COPIES.get(module)
    if held is None or held[0] != stamp:
        twin = copy.deepcopy(module).to(memory_format=torch.channels_last)
        for m in twin.modules():
            m.training = False  # scores run in eval mode, as on the user's module
        held = (stamp, twin)
        _COPIES[module] = held
    return held[1]


def as_channels_last(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.contiguous(memory_format=torch.channels_last)


def equal_scores(a: np.ndarray, b: np.ndarray) -> bool:
    scale = float(np.abs(a).max(initial=0.0))
    return bool(np.allclose(a, b, rtol=RTOL, atol=ATOL * max(scale, 1e-12)))


def _stamp(module: nn.Module) -> tuple:
    return tensor_stamp([*module.parameters(), *module.buffers()])


def _floating(x: Any) -> bool:
    dtype = x.dtype
    if isinstance(dtype, torch.dtype):
        return dtype.is_floating_point
    return np.dtype(dtype).kind == "f"
