"""What every result shows in Jupyter and in ``repr``: one mixin, the HTML in ``report/``."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


class HTMLRepr:
    """Mixin for result classes: ``_repr_html_`` through :func:`xaikit.report.html.result_html`
    (the HTML lives in the report package, not in each result)."""

    def _repr_html_(self) -> str:
        """Show the result in Jupyter: its plot and numbers as a self-contained fragment."""
        from xaikit.report.html import result_html

        return result_html(self)


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
