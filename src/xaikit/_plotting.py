"""Figures without a GUI: every plot in xaikit draws on a matplotlib Figure with an Agg canvas."""

from __future__ import annotations


def new_figure(figsize: tuple[float, float], *, layout: str | None = "constrained"):
    """A Figure with an Agg canvas attached (no pyplot, no GUI backend, safe in threads)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout=layout)
    FigureCanvasAgg(fig)
    return fig
