"""A small builder for one self-contained HTML file.

Every user-supplied string goes through ``html.escape``; figures are embedded as PNG data
URIs; the style sheet is inline and there is no script, no font and no link to anything, so
the file opens offline, reads the same without JavaScript, and can be mailed to a colleague.
Sections carry ids (``<section id="...">``) and are listed in a table of contents of plain
anchor links (``<nav id="contents">``); each section ends with a link back to it. A print
style sheet lays the page out for paper (full width, no back links, no figure split across
pages).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xaikit.report.html import Markup, escape, figure_data_uri, img, pre, table
from xaikit.report.output import write_text_atomic

__all__ = ["Page", "figure_data_uri"]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 75rem; color: #222;
       padding: 0 1rem; line-height: 1.4; }
h1 { font-size: 1.6rem; }
h2 { font-size: 1.3rem; margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
h3 { font-size: 1.05rem; margin-top: 1.4rem; } h4 { margin: 0.3rem 0; font-size: 0.95rem; }
table { border-collapse: collapse; margin: 0.5rem 0; }
td, th { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } img { max-width: 100%; height: auto; }
pre { background: #f7f7f7; padding: 0.6rem; overflow-x: auto; font-size: 0.85rem; }
nav ol { columns: 2; font-size: 0.9rem; }
.note { color: #555; font-size: 0.9rem; }
.row { display: flex; flex-wrap: wrap; gap: 1rem; align-items: flex-start; }
figure { margin: 0.5rem 0; } figcaption { font-size: 0.85rem; color: #444; }
.badge { padding: 0 0.35rem; border-radius: 0.2rem; font-weight: 600; }
.pass { background: #d9f2d9; } .fail { background: #f8d7d7; }
.placeholder { border: 1px dashed #aaa; padding: 0.6rem 1rem; background: #fafafa; }
.back { font-size: 0.85rem; text-align: right; margin: 0.8rem 0 0; }
.back a { color: #555; }
/* On paper: the whole width, no links that lead nowhere, nothing cut at a page break. */
@media print {
  @page { margin: 1.5cm; }
  body { max-width: none; margin: 0; padding: 0; font-size: 10pt; color: #000; }
  a { color: inherit; text-decoration: none; }
  .back { display: none; }
  h2, h3, h4 { break-after: avoid; }
  figure, img, tr, .placeholder { break-inside: avoid; }
  pre { white-space: pre-wrap; overflow: visible; break-inside: auto; }
  th, .badge { print-color-adjust: exact; -webkit-print-color-adjust: exact; }
}
"""
# The link at the end of each section back to the table of contents.
_BACK = '<p class="back"><a href="#contents">\u2191 Contents</a></p>'


_ID = re.compile(r"^[a-z][a-z0-9-]*$")


class Page:
    """An HTML page built from sections; ``save`` writes it atomically.

    Parameters
    ----------
    title : str
        The page's title (escaped).
    """

    def __init__(self, title: str) -> None:
        self.title = title
        self._parts: list[str] = []
        self._sections: list[tuple[str, str]] = []
        self._open = False

    @property
    def section_ids(self) -> list[str]:
        """The ids of the sections added so far, in order."""
        return [sid for sid, _ in self._sections]

    def section(self, section_id: str, title: str) -> None:
        """Start a new ``<section id=section_id>`` headed ``title`` (listed in the contents)."""
        if not _ID.match(section_id) or section_id in self.section_ids:
            raise ValueError(
                f"section_id: expected a new id like 'local-methods', got {section_id!r}"
            )
        self._close()
        self._sections.append((section_id, title))
        self._parts.append(f'<section id="{section_id}"><h2>{escape(title)}</h2>')
        self._open = True

    def heading(self, text: str) -> None:
        """A sub-heading inside the current section."""
        self._parts.append(f"<h3>{escape(text)}</h3>")

    def paragraph(self, text: str, *, note: bool = False) -> None:
        """A paragraph of text (escaped); ``note`` makes it small and grey."""
        cls = ' class="note"' if note else ""
        self._parts.append(f"<p{cls}>{escape(text)}</p>")

    def placeholder(self, text: str) -> None:
        """A framed note saying what will appear here (e.g. when an extra is installed)."""
        self._parts.append(f'<p class="placeholder">{escape(text)}</p>')

    def table(self, header: Sequence[object], rows: Sequence[Sequence[object]]) -> None:
        """A table; cells are escaped (floats shown with 3 decimals) unless Markup."""
        self._parts.append(table(header, rows))

    def pre(self, text: str) -> None:
        """Preformatted text, e.g. a surrogate's rules."""
        self._parts.append(pre(text))

    def figure(self, fig: Any, *, alt: str, caption: str | None = None) -> None:
        """A matplotlib figure inline as PNG, with an optional caption."""
        self.figures([(fig, alt, caption)])

    def figures(self, items: Sequence[tuple[Any, str, str | None]]) -> None:
        """Several figures side by side (they wrap on a narrow screen): (fig, alt, caption)."""
        cells = []
        for fig, alt, caption in items:
            cap = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
            cells.append(f"<figure>{img(fig, alt=alt)}{cap}</figure>")
        self._parts.append(f'<div class="row">{"".join(cells)}</div>')

    def html(self, fragment: Markup) -> None:
        """Insert a trusted fragment from :mod:`xaikit.report.html` (nothing else is accepted)."""
        if not isinstance(fragment, Markup):
            raise TypeError("fragment: expected Markup from xaikit.report.html; escape text first")
        self._parts.append(fragment)

    def _close(self) -> None:
        if self._open:
            self._parts.append("</section>")
            self._open = False

    def render(self) -> str:
        """The whole page as one HTML string."""
        self._close()
        title = escape(self.title)
        nav, body = "", "".join(self._parts)
        if len(self._sections) > 1:
            links = "".join(
                f'<li><a href="#{sid}">{escape(t)}</a></li>' for sid, t in self._sections
            )
            nav = f'<nav id="contents" aria-label="Contents"><ol>{links}</ol></nav>'
            # Every user string is escaped, so "</section>" can only be a section's own end.
            body = body.replace("</section>", f"{_BACK}</section>")
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{title}</title><style>{_STYLE}</style></head>"
            f"<body><h1>{title}</h1>{nav}{body}</body></html>\n"
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Write the page to ``path`` through a temporary file: never a half-written page."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_text_atomic(path, self.render())
