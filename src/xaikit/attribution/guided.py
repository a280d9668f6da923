"""Guided Backpropagation: the gradient with negative signals stopped at every ReLU.

At each ReLU the backward signal becomes ReLU(grad_out) * (input > 0). We get it without
touching the user's modules' code: a forward hook on every ``nn.ReLU`` passes the output
through an identity whose backward clamps the incoming gradient at zero, and the ReLU's own
backward then applies (input > 0). The hooks are removed when the call ends, also on error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from xaikit.attribution.registry import Attribution, register
from xaikit.model import Model


class _PositiveGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor):
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad):
        return grad.clamp_min(0)


@contextlib.contextmanager
def guided_relus(module: nn.Module) -> Iterator[int]:
    """Within the block, every ``nn.ReLU`` of ``module`` passes only positive gradients back."""
    relus = [m for m in module.modules() if isinstance(m, nn.ReLU)]
    if not relus:
        others = sorted({type(m).__name__ for m in module.modules() if _is_activation(m)})
        raise ValueError(
            f"model: guided_backprop needs nn.ReLU modules; {type(module).__name__} has none"
            + (f" (its activations are {', '.join(others)})" if others else "")
            + " and functional relu calls cannot be intercepted"
        )
    handles = []
    try:
        for relu in relus:
            handles.append(
                relu.register_forward_hook(lambda _m, _i, out: _PositiveGradient.apply(out))
            )
        yield len(relus)
    finally:
        for handle in handles:
            handle.remove()


def _is_activation(module: nn.Module) -> bool:
    kind = type(module)
    return (
        kind.__module__.startswith("torch.nn.modules.activation") or "Activation" in kind.__name__
    )


@register(
    "guided_backprop",
    needs_gradients=True,
    needs_hooks=True,
    scores_at_input=True,
    reference="Springenberg et al. 2015, arXiv:1412.6806",
)
def guided_backprop(model: Model, x: np.ndarray, targets: np.ndarray) -> Attribution:
    """Guided Backpropagation (Springenberg et al. 2015, "Striving for simplicity")."""
    with guided_relus(model.module):
        scores, grads = model.gradients(x, targets)
    return Attribution(values=grads, scores=scores)
