"""Self-contained HTML reports: images inline, no script, no external request.

- :mod:`~xaikit.report.page`: :class:`Page`, the page builder (sections, tables, figures);
- :mod:`~xaikit.report.html`: fragments for every result (also their ``_repr_html_``);
- :mod:`~xaikit.report.local`: the report on a user's model and inputs (``xaikit report``);
- :mod:`~xaikit.report.output`: atomic writes and staged output folders.
"""

from xaikit.report.html import Markup, escape, figure_data_uri, result_html
from xaikit.report.page import Page

__all__ = ["Markup", "Page", "escape", "figure_data_uri", "result_html"]
