"""Errors shared by model and input loading: one error type, one way to wrap a file check."""

from __future__ import annotations

__all__ = ["LoadError", "checked"]


class LoadError(ValueError):
    """A model, weights file or input that cannot be used; the message is one line."""


def checked(function, *args, **kwargs):
    """Call one of :mod:`xaikit._files`' checks; its ValueError becomes a LoadError."""
    try:
        return function(*args, **kwargs)
    except LoadError:
        raise
    except ValueError as err:
        raise LoadError(str(err)) from err
