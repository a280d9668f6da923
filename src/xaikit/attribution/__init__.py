"""Local explanation: which component of one input made the model decide."""

from xaikit.attribution.api import explain, methods
from xaikit.attribution.registry import Attribution, register

__all__ = ["Attribution", "explain", "methods", "register"]
