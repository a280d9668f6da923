"""What every result shows in Jupyter and in ``repr``: one mixin, the HTML in ``report/``."""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Callable
from typing import Any

import numpy as np

# The report's renderer, installed by xaikit.report.html when it is imported (xaikit's own
# __init__ imports it). It holds the table keyed by result class, so it imports the results;
# they reach it through this slot, not by importing it, so no import goes both ways.
_render: Callable[[Any], str] | None = None


def set_html_renderer(render: Callable[[Any], str]) -> None:
    """Install ``render(result) -> HTML`` as what :class:`HTMLRepr` shows (the report does)."""
    global _render
    _render = render


class HTMLRepr:
    """Mixin for result classes: ``_repr_html_`` through :func:`xaikit.report.html.result_html`
    (the HTML lives in the report package, not in each result)."""

    def _repr_html_(self) -> str:
        """Show the result in Jupyter: its plot and numbers as a self-contained fragment."""
        if _render is None:  # only while xaikit itself is being imported
            return f"<pre>{html.escape(repr(self))}</pre>"
        return _render(self)


def short_repr(obj: Any) -> str:
    """``Name(field=value, ...)`` of a dataclass with each array shown by shape and dtype
    instead of its values (a result's repr should fit on a screen)."""

    def show(value: Any) -> str:
        if isinstance(value, np.ndarray) and value.size > 1:
            return f"array(shape={value.shape}, dtype={value.dtype})"
        if isinstance(value, (float, np.floating)):
            return f"{float(value):.4g}"
        return repr(value)

    parts = [f"{f.name}={show(getattr(obj, f.name))}" for f in dataclasses.fields(obj)]
    return f"{type(obj).__name__}({', '.join(parts)})"
