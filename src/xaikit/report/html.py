"""HTML fragments for xaikit's results: used by the report and by ``_repr_html_`` in Jupyter.

Every string that can come from a user (class names, file names, feature names, layer names,
rules) goes through :func:`escape`; only :class:`Markup` (built here from escaped parts) is
inserted as it is. Figures become PNG ``data:`` URIs, so a fragment never makes a request.
``RENDERERS`` (result class -> fragment function) is the one table :func:`result_html` and
every result's ``_repr_html_`` (the :class:`~xaikit._repr.HTMLRepr` mixin) read.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from xaikit._repr import set_html_renderer
from xaikit.audit import Audit
from xaikit.explanation import Explanation
from xaikit.featureviz import FilterActivations, Visualization
from xaikit.importance import Importance
from xaikit.metrics import AttackResult, Comparison, Curve, SanityResult
from xaikit.representations import LayerProjections, ProbeResult, Projection, Reconstruction
from xaikit.surrogates import Surrogate

__all__ = [
    "RENDERERS",
    "Markup",
    "attack_html",
    "audit_html",
    "comparison_html",
    "curve_html",
    "escape",
    "explanation_html",
    "figure_data_uri",
    "img",
    "importance_html",
    "pre",
    "result_html",
    "table",
    "verdict",
]


class Markup(str):
    """A string of trusted HTML (made from escaped parts); inserted without escaping."""


def escape(value: Any) -> str:
    """``value`` as HTML text (``<``, ``>``, ``&`` and quotes escaped); Markup unchanged."""
    if isinstance(value, Markup):
        return value
    return html.escape(_fmt(value), quote=True)


def _fmt(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.3f}"
    return str(value)


def figure_data_uri(fig: Any, *, dpi: int = 100) -> str:
    """PNG bytes of a matplotlib figure as a ``data:`` URI."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def img(fig: Any, *, alt: str, dpi: int = 100) -> Markup:
    """An ``<img>`` holding the figure inline (a Figure, or an existing ``data:`` URI)."""
    uri = fig if isinstance(fig, str) and fig.startswith("data:image/") else None
    if uri is None:
        uri = figure_data_uri(fig, dpi=dpi)
    return Markup(f'<img src="{uri}" alt="{escape(alt)}">')


def table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> Markup:
    """A table; cells are escaped unless they are :class:`Markup`."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return Markup(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def pre(text: str) -> Markup:
    """Preformatted text (rules, code), escaped."""
    return Markup(f"<pre>{escape(text)}</pre>")


def verdict(passed: bool) -> Markup:
    """A pass/fail badge that reads the same without colour."""
    cls, word = ("pass", "pass") if passed else ("fail", "fail")
    return Markup(f'<span class="badge {cls}">{word}</span>')


def _box(title: str, *parts: str) -> Markup:
    return Markup(f'<div class="xaikit"><h4>{escape(title)}</h4>{"".join(parts)}</div>')


def class_label(index: int, class_names: Sequence[str] | None) -> str:
    """``"3"``, or ``"3 (cat)"`` with class names."""
    if class_names is not None and 0 <= index < len(class_names):
        return f"{index} ({class_names[index]})"
    return str(index)


# ---------------------------------------------------------------------- results


def explanation_html(e: Any, *, class_names: Sequence[str] | None = None) -> Markup:
    """An Explanation: its plot, target, prediction, parameters and any scores."""
    rows: list[tuple[str, Any]] = [("method", e.method)]
    if e.batch:
        rows.append(("items", len(e)))
    else:
        rows.append(("target", class_label(int(e.target), class_names)))
        predicted = int(np.argmax(e.prediction))
        rows.append(("predicted", class_label(predicted, class_names)))
    params = {k: v for k, v in e.params.items() if not isinstance(v, np.ndarray)}
    if params:
        rows.append(("parameters", ", ".join(f"{k}={v!r}" for k, v in sorted(params.items()))))
    for k, v in e.scores.items():
        rows.append((k, np.round(np.asarray(v, dtype=float), 3).tolist()))
    for k, v in e.info.items():
        if np.ndim(v) == 0 and isinstance(v, (int, float, np.number)):
            rows.append((k, float(v)))
    return _box(
        f"Explanation · {e.method}",
        img(e.plot(), alt=f"{e.method} attributions"),
        table(["", ""], rows),
    )


def surrogate_html(s: Any) -> Markup:
    """A Surrogate: fidelity, complexity and its rules as text."""
    rows = [("kind", s.kind), ("task", s.task), ("fidelity (held out)", s.fidelity)]
    rows += [(k, v) for k, v in s.complexity.items()]
    return _box(f"{s.kind} surrogate", table(["", ""], rows), pre(s.rules()))


def visualization_html(v: Any) -> Markup:
    """A Visualization: the image grid and each item's objective value."""
    rows = [
        (o, float(a), float(b))
        for o, a, b in zip(v.objectives, v.initial_values, v.objective_values, strict=True)
    ]
    return _box(
        f"Feature visualisation · {len(v)} images",
        img(v.plot(), alt="optimised images"),
        table(["objective", "start", "final"], rows[:32]),
    )


def filter_activations_html(fa: Any) -> Markup:
    """FilterActivations: where each filter fires on the images."""
    return _box(
        f"Activation maps of {fa.layer}",
        img(fa.plot(), alt=f"activation maps of {fa.layer}"),
    )


def projection_html(p: Any) -> Markup:
    """A Projection or LayerProjections: the scatter plot(s)."""
    layers = getattr(p, "layers", None)
    title = f"Projections of {', '.join(layers)}" if isinstance(layers, list) else f"{p.layer}"
    return _box(title, img(p.plot(), alt=title))


def probe_html(r: Any) -> Markup:
    """A ProbeResult: the curves and a table of accuracy, control accuracy and selectivity."""
    rows = [
        (
            layer,
            r.accuracy[layer],
            r.control_accuracy.get(layer, "–"),
            r.selectivity.get(layer, "–"),
        )
        for layer in r.layers
    ]
    return _box(
        f"{r.kind} probes (chance {r.chance:.3f}, {r.n_train} train / {r.n_test} held out)",
        img(r.plot(), alt="probe accuracy per layer"),
        table(["layer", "accuracy", "control accuracy", "selectivity"], rows),
    )


def reconstruction_html(r: Any) -> Markup:
    """A Reconstruction: what each layer keeps of the input."""
    return _box("Reconstructions", img(r.plot(), alt="reconstructions per layer"))


def sanity_html(r: Any) -> Markup:
    """A SanityResult: the randomisation maps, curve and verdict."""
    return _box(
        f"Sanity check · {r.method}",
        Markup(f"<p>{verdict(r.passed)} {escape(r.rule)}</p>"),
        img(r.plot(), alt=f"sanity check of {r.method}"),
    )


def comparison_html(c: Any) -> Markup:
    """A Comparison: the maps side by side, the table of scores and each metric's ranking."""
    rows = [[r["method"], *(r[m] for m in c.metrics)] for r in c.table]
    ranks = "; ".join(f"{m}: {', '.join(c.rank(m))}" for m in c.metrics)
    return _box(
        f"Comparison of {len(c.table)} methods",
        img(c.plot(), alt="the methods' maps side by side"),
        table(["method", *c.metrics], rows),
        Markup(f"<p>Best first: {escape(ranks)}</p>"),
    )


def importance_html(imp: Any, *, top_k: int = 20) -> Markup:
    """An Importance: the bars and the ranking with each mean drop and its spread."""
    std = dict(zip(imp.feature_names, imp.importances_std, strict=True))
    rows = [(name, mean, float(std[name])) for name, mean in imp.ranking()[:top_k]]
    return _box(
        f"Permutation importance · {imp.scoring} {imp.baseline_score:.3f} unshuffled",
        img(imp.plot(top_k=top_k), alt="permutation importance per feature"),
        table(["feature", f"mean drop in {imp.scoring}", "std"], rows),
    )


def curve_html(curve: Any) -> Markup:
    """A Curve (deletion, insertion, pixel flipping, ROAD): the plot and its area."""
    rows = [("order", curve.order), ("target", curve.target), ("area", float(curve.area))]
    return _box(
        f"{curve.name} curve",
        img(curve.plot(), alt=f"{curve.name} curve"),
        table(["", ""], rows),
    )


def attack_html(r: Any) -> Markup:
    """An AttackResult: the maps before and after, and the numbers against the random control."""
    rows = [
        (f"top-{r.k} intersection", r.top_k_intersection, r.random_top_k_intersection),
        ("Spearman correlation", r.spearman, r.random_spearman),
    ]
    note = (
        f"L-inf budget {r.epsilon:g}, {r.accepted_steps} accepted steps, gradient by "
        f"{r.estimator}; the label {'was' if r.label_kept else 'was not'} kept."
    )
    return _box(
        f"Attack on the {r.method} map",
        img(r.plot(), alt=f"attack on the {r.method} map"),
        table(["original vs", "attacked", "random noise of the same size"], rows),
        Markup(f"<p>{escape(note)}</p>"),
    )


def audit_html(a: Any) -> Markup:
    """An Audit: its counts, the findings (most convincing first), then the distinctive
    evidence apart (``a.plot()`` draws them)."""
    header = [
        "class", "cluster", "kind", "region (y0, x0, y1, x1)", "share", "others", "consistent",
        "images", "pasted in: called the class", "sameness",
    ]  # fmt: skip

    def rows(entries):
        return [
            (
                f.target,
                "" if f.cluster is None else f.cluster,
                f.kind,
                str(tuple(f.region)),
                f"{f.relevance_share:.0%}",
                f"{f.other_share:.0%}",
                f"{f.consistency:.0%}",
                f.n_images,
                f.transplant_text(),
                "-" if f.sameness is None else f"{f.sameness:.2f}",
            )
            for f in entries
        ]

    parts = [Markup(f"<p>{escape(repr(a))}</p>")]
    parts.append(
        table(header, rows(a.findings)) if a.findings else Markup("<p>no shortcut found</p>")
    )
    evidence = getattr(a, "evidence", [])
    if evidence:
        parts.append(
            Markup(
                "<p>Distinctive evidence: regions a class relies on that are not one pasted "
                "pattern (they vary from image to image, like a digit's own stroke). Look at "
                "them; they are not reported as shortcuts.</p>"
            )
        )
        parts.append(table(header, rows(evidence)))
    return _box("Audit", *parts)


# The one table from result class to fragment; a subclass renders as its nearest listed base.
RENDERERS: dict[type, Callable[[Any], Markup]] = {
    Explanation: explanation_html,
    Surrogate: surrogate_html,
    Visualization: visualization_html,
    FilterActivations: filter_activations_html,
    Projection: projection_html,
    LayerProjections: projection_html,
    ProbeResult: probe_html,
    Reconstruction: reconstruction_html,
    SanityResult: sanity_html,
    Comparison: comparison_html,
    Importance: importance_html,
    Curve: curve_html,
    AttackResult: attack_html,
    Audit: audit_html,
}


def result_html(result: Any) -> Markup:
    """The fragment for any xaikit result (what ``_repr_html_`` returns)."""
    for cls in type(result).__mro__:
        render = RENDERERS.get(cls)
        if render is not None:
            return Markup(_STYLE_INLINE + render(result))
    return Markup(f"<pre>{escape(repr(result))}</pre>")


# Enough style for a notebook cell; the report's page has its own.
_STYLE_INLINE = (
    "<style>.xaikit table{border-collapse:collapse}.xaikit td,.xaikit th{border:1px solid #ccc;"
    "padding:2px 6px;text-align:left}.xaikit img{max-width:100%}.xaikit .badge{padding:0 4px;"
    "border-radius:3px}.xaikit .pass{background:#d9f2d9}.xaikit .fail{background:#f8d7d7}"
    "</style>"
)

set_html_renderer(result_html)
