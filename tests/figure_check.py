"""A check for every figure xaikit draws: no text drawn over other text, no colour bar over axes.

``figure_problems(fig)`` lays the figure out as a draw would (without painting) and asks
matplotlib's renderer for the extents of what it drew: every text artist that was really drawn
(titles, labels, tick labels, annotations, legend entries; the box around a text counts as the
text) and every axes. It returns one line per overlap. ``recording_figures()`` collects the
figures made inside a block: ``tests/conftest.py`` checks every figure created during a test,
and the demo test every figure of the demo report.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import numpy as np

# Extents touching or overlapping by less than this many pixels (at 100 dpi) are fine:
# antialiasing and font hinting blur the last pixel anyway.
TOLERANCE_PX = 1.0


@contextmanager
def _drawn_texts():
    """Record every ``Text`` that really draws (visible, non-empty, inside a drawn parent)."""
    from matplotlib.text import Text

    drawn: list[Any] = []
    original = Text.draw

    def spy(self, renderer):
        original(self, renderer)
        if self.get_visible() and self.get_text().strip():
            drawn.append(self)

    Text.draw = spy
    try:
        yield drawn
    finally:
        Text.draw = original


def _extent(text: Any, renderer: Any):
    from matplotlib.text import Text

    box = Text.get_window_extent(text, renderer)  # an Annotation's own adds its arrow
    patch = text.get_bbox_patch()
    if patch is not None:  # a text on a coloured box: the box is what the reader sees
        from matplotlib.transforms import Bbox

        box = Bbox.union([box, patch.get_window_extent(renderer)])
    return box


def _overlaps(boxes: np.ndarray, tolerance: float) -> list[tuple[int, int]]:
    """Pairs (i, j), i < j, of boxes ``(x0, y0, x1, y1)`` that overlap by more than tolerance."""
    x0, y0, x1, y1 = (boxes[:, k] for k in range(4))
    w = np.minimum(x1[:, None], x1[None, :]) - np.maximum(x0[:, None], x0[None, :])
    h = np.minimum(y1[:, None], y1[None, :]) - np.maximum(y0[:, None], y0[None, :])
    hit = np.triu((w > tolerance) & (h > tolerance), k=1)
    return [(int(i), int(j)) for i, j in zip(*np.nonzero(hit), strict=True)]


def _name(text: Any) -> str:
    words = " ".join(text.get_text().split())
    return repr(words[:40] + ("..." if len(words) > 40 else ""))


def _shown(ax: Any) -> bool:
    """An axes a reader sees: with its frame, or holding images, lines, patches or texts."""
    return bool(
        ax.get_visible()
        and (ax.axison or ax.images or ax.lines or ax.collections or ax.texts or ax.patches)
    )


def figure_problems(fig: Any, *, tolerance: float = TOLERANCE_PX) -> list[str]:
    """Overlaps in ``fig``: text on text, and colour bars on other axes (empty when none)."""
    if not hasattr(fig.canvas, "get_renderer"):  # a bare Figure(): give it an Agg canvas
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(fig)
    scale = fig.dpi / 100.0
    renderer = fig.canvas.get_renderer()
    # A draw without painting pixels: the layout engine runs and every artist takes its final
    # place, at a fraction of the cost of rendering (the check runs on every figure of the suite).
    with _drawn_texts() as texts, renderer._draw_disabled():
        fig.draw(renderer)
    problems = []
    unique = list(dict.fromkeys(texts))  # a text drawn twice (a re-draw) counts once
    if len(unique) > 1:
        boxes = np.array([_extent(t, renderer).extents for t in unique])
        for i, j in _overlaps(boxes, tolerance * scale):
            problems.append(f"text {_name(unique[i])} overlaps text {_name(unique[j])}")
    bars = [ax for ax in fig.axes if hasattr(ax, "_colorbar") and ax.get_visible()]
    others = [ax for ax in fig.axes if not hasattr(ax, "_colorbar") and _shown(ax)]
    for k, bar in enumerate(bars):
        box = bar.get_tightbbox(renderer)
        for other in [*others, *bars[k + 1 :]]:
            target = other.get_tightbbox(renderer) if other in bars else other.get_window_extent()
            if _overlaps(np.array([box.extents, target.extents]), tolerance * scale):
                what = "colour bar" if other in bars else "axes"
                title = other.get_title() or other.get_label() or "untitled"
                problems.append(f"a colour bar overlaps {what} {title!r}")
    return problems


def assert_no_overlaps(fig: Any, *, where: str = "figure") -> None:
    """Fail with every overlap found in ``fig``."""
    problems = figure_problems(fig)
    assert not problems, f"{where}: " + "; ".join(problems)


@contextmanager
def recording_figures():
    """Collect every matplotlib ``Figure`` created inside the block (xaikit's plots and all)."""
    from matplotlib.figure import Figure

    made: list = []
    original = Figure.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        made.append(self)

    Figure.__init__ = init
    try:
        yield made
    finally:
        Figure.__init__ = original
