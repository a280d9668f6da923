"""Self-contained HTML pages: images inline, no script, no external request."""

from xaikit.report.page import Page, figure_data_uri

__all__ = ["Page", "figure_data_uri"]
