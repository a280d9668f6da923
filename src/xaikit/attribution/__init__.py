"""Local explanation: which component of one input made the model decide."""

from xaikit.attribution.registry import Attribution, explain, methods, register

__all__ = ["Attribution", "explain", "methods", "register"]
