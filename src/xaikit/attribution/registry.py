"""The method table: :func:`register` and what a method returns (:class:`Attribution`).

A method is a function registered with :func:`register`. It receives a :class:`Model`, a batch
``x`` of shape ``(N, ...)``, one target per item, and its own keyword-only parameters, and
returns an :class:`Attribution`. Method modules import this module only; ``api.py`` (``xk.explain``)
imports the methods through ``_catalogue.py``, so no import goes both ways.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Attribution:
    """What a method returns: per-item arrays with a leading item axis ``N``.

    ``info`` holds diagnostics (e.g. ``{"completeness_gap": array (N,)}``); per-item arrays of
    length N are split per item when a single input is explained. ``params`` may replace
    parameters by what was actually used (e.g. the step count ``steps="auto"`` chose).
    """

    values: np.ndarray
    components: np.ndarray | None = None
    component_values: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    scores: np.ndarray | None = None  # the model's scores for x, when the method has them


@dataclass(frozen=True)
class Method:
    """A registered method: its function, defaults and the paper it implements."""

    name: str
    function: Callable[..., Attribution]
    needs_gradients: bool
    reference: str
    defaults: dict[str, Any]
    scores_at_input: bool = False
    needs_hooks: bool = False
    needs: str = "any model"  # what the method needs from the model, in words


METHODS: dict[str, Method] = {}  # name -> Method, filled by @register


def torchscript_methods() -> list[str]:
    """The methods a TorchScript module can run, for refusals to suggest: none that hooks or
    re-traces its modules, nor attention rollout (it asks the forward for attention weights,
    which only a Python transformer gives)."""
    return sorted(
        n for n, m in METHODS.items() if not m.needs_hooks and m.needs != "attention weights"
    )


def register(
    name: str,
    *,
    needs_gradients: bool,
    reference: str,
    scores_at_input: bool = False,
    needs_hooks: bool = False,
    needs: str | None = None,
):
    """Decorator: make ``function(model, x, targets, *, **params)`` available as ``method=name``.

    ``scores_at_input``: the method runs the model on ``x`` itself and returns those scores in
    ``Attribution.scores``; it accepts ``targets=None`` (each item's predicted class, resolved
    in that same forward pass), so :func:`explain` skips its own forward pass (a third of the
    cost of a one-pass method such as Grad-CAM).

    ``needs_hooks``: the method hooks or re-traces the model's Python modules (layer outputs,
    ReLU backward rules), which a TorchScript module does not allow; it is refused up front.

    ``needs``: what the method needs from the model, in words, for listings and refusals;
    "gradients" or "any model" by default. ``needs_gradients`` stays the test of "a PyTorch
    model" (a method that needs one for another reason sets it too and says why here).
    """

    def decorate(function: Callable[..., Attribution]) -> Callable[..., Attribution]:
        signature = inspect.signature(function)
        defaults = {
            p.name: p.default
            for p in signature.parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY
        }
        METHODS[name] = Method(
            name,
            function,
            needs_gradients,
            reference,
            defaults,
            scores_at_input,
            needs_hooks,
            needs or ("gradients" if needs_gradients else "any model"),
        )
        return function

    return decorate
