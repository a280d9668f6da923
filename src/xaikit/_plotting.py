"""Figures without a GUI: every plot in xaikit draws on a matplotlib Figure with an Agg canvas."""

from __future__ import annotations


def new_figure(figsize: tuple[float, float], *, layout: str | None = "constrained"):
    """A Figure with an Agg canvas attached (no pyplot, no GUI backend, safe in threads)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def plain(text: object) -> str:
    """``text`` as matplotlib shows it literally: ``$`` escaped, so that names holding ``$...$``
    (a CSV header, a class name, a token) are never parsed as mathtext."""
    return str(text).replace("$", r"\$")


def legend_text(text: object) -> str:
    """A legend entry shown as it is: :func:`plain`, and a leading ``_`` (which matplotlib takes
    to mean "leave out of the legend") kept by a space before it."""
    shown = plain(text)
    return f" {shown}" if shown.startswith("_") else shown
