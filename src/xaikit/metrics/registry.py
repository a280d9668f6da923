"""The metric table: :func:`metric` registers a metric, ``METRICS`` holds them all.

A metric is a function ``f(model, x, explanation, *, target=None, **options)`` scoring one
input's explanation; its options and their defaults are read from its keyword-only signature,
as ``@register`` does for methods, so no table of options is written by hand. Metric modules
import this module only; ``evaluate.py`` (``xk.evaluate``, ``xk.compare``) imports the metric
modules, so no import goes both ways.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

_POSITIONAL = ("model", "x", "explanation")
_KEYWORD = inspect.Parameter.KEYWORD_ONLY


class Metric(NamedTuple):
    """A registered metric: ``function(model, x, explanation, *, **options) -> float``.

    A pair, so ``function, higher_is_better = METRICS[name]`` reads as it always did; the
    options are the function's keyword-only parameters.
    """

    function: Callable[..., float]
    higher_is_better: bool

    @property
    def defaults(self) -> dict[str, Any]:
        """Option -> default; a required option (``mask``) maps to ``inspect.Parameter.empty``."""
        parameters = inspect.signature(self.function).parameters.values()
        return {p.name: p.default for p in parameters if p.kind is _KEYWORD}

    @property
    def options(self) -> frozenset[str]:
        """The option names the metric takes."""
        return frozenset(self.defaults)

    @property
    def required(self) -> tuple[str, ...]:
        """Options without a default (the ground-truth ``mask`` of localisation)."""
        return tuple(k for k, v in self.defaults.items() if v is inspect.Parameter.empty)


METRICS: dict[str, Metric] = {}  # name -> Metric, filled by @metric


def metric(name: str, *, higher_is_better: bool, fixed: Mapping[str, Any] | None = None):
    """Decorator: make ``function(model, x, explanation, *, target=None, ...)`` a metric.

    The registered entry returns ``float(function(...))`` (a :class:`Curve` gives its area);
    ``fixed`` binds keyword-only parameters for this entry, which are then no options of it
    (``lerf`` is pixel flipping with ``order="lerf"``). The decorated function is returned
    unchanged. Its signature must start with ``model, x, explanation``; every other parameter
    is keyword-only with ``target``, when taken, first: one argument order for every metric.
    """
    fixed = dict(fixed or {})

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(function)
        parameters = list(signature.parameters.values())
        head = tuple(p.name for p in parameters[:3])
        rest = parameters[3:]
        if head != _POSITIONAL or any(p.kind is not _KEYWORD for p in rest):
            raise TypeError(
                f"function: a metric takes (model, x, explanation, *, target=None, ...) with "
                f"keyword-only options; {function.__name__} takes {signature}"
            )
        if "target" in signature.parameters and rest[0].name != "target":
            raise TypeError(
                f"function: {function.__name__} must take target first, got {signature}"
            )
        unknown = sorted(set(fixed) - {p.name for p in rest})
        if unknown:
            raise TypeError(f"fixed: {function.__name__} has no option {unknown[0]!r}")

        def score(model: Any, x: Any, explanation: Any, **options: Any) -> float:
            return float(function(model, x, explanation, **options, **fixed))

        score.__name__ = score.__qualname__ = name
        score.__doc__ = function.__doc__
        score.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[p for p in parameters if p.name not in fixed]
        )
        METRICS[name] = Metric(score, higher_is_better)
        return function

    return decorate
