"""Local explanations with their scorecard, as report sections.

:func:`scorecard` explains one input with several methods and scores each explanation:
deletion and insertion (Petsiuk et al. 2018; lower deletion, higher insertion is better) and,
for PyTorch models, the model-parameter randomisation sanity check (Adebayo et al. 2018).
:func:`add_prediction` and :func:`add_scorecard` put the results on a :class:`Page`. The demo
and the ``xaikit report`` command share them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from xaikit._plotting import new_figure
from xaikit._progress import progress_bar
from xaikit.attribution import explain
from xaikit.attribution.defaults import FAST_PARAMS, default_methods
from xaikit.model import Model, to_probabilities
from xaikit.report.html import Markup, class_label, verdict
from xaikit.report.page import Page

__all__ = [
    "FAST_PARAMS",
    "MethodScore",
    "add_prediction",
    "add_scorecard",
    "default_methods",
    "scorecard",
]


@dataclass
class MethodScore:
    """One method's explanation of the input and its scores."""

    method: str
    explanation: Any
    deletion: float | None
    insertion: float | None
    sanity: Any = None  # SanityResult, or None when not run
    sanity_note: str = ""  # why the sanity check did not run


def scorecard(
    model: Any,
    x: np.ndarray,
    *,
    methods: dict[str, dict[str, Any]],
    target: int | None = None,
    sanity: bool = True,
    sanity_params: dict[str, dict[str, Any]] | None = None,
    feature_names: list[str] | None = None,
    progress: bool | None = None,
    metric_options: dict[str, Any] | None = None,
) -> list[MethodScore]:
    """Explain ``x`` (one input) with each method and score it.

    Parameters
    ----------
    model : nn.Module, xaikit.Model or callable
    x : array
        One input without a batch axis.
    methods : dict
        Method name -> parameters.
    target : int, optional
        The explained class; default the predicted one.
    sanity : bool
        Run the cascading randomisation check (PyTorch modules only; it works on a copy).
    sanity_params : dict, optional
        Method -> parameters to use in the sanity check instead (e.g. fewer samples: the check
        explains once per randomised layer).
    metric_options : dict, optional
        Options of deletion and insertion (:func:`xaikit.evaluate`), e.g. ``{"baseline": 0.0}``
        for a tabular row, whose parts have no blur to be replaced by.
    """
    from xaikit.metrics import evaluate, sanity_check

    module = model.module if isinstance(model, Model) else model
    can_randomize = sanity and _is_plain_module(module)
    results = []
    with progress_bar(len(methods), "explaining and scoring", enabled=progress) as bar:
        for name, params in methods.items():
            kw = {"feature_names": feature_names} if feature_names else {}
            e = explain(model, x, method=name, target=target, **kw, **params)
            scores = evaluate(
                model, x, e, metrics=("deletion", "insertion"), **(metric_options or {})
            )
            result = MethodScore(name, e, scores["deletion"], scores["insertion"])
            if can_randomize:
                check_params = (sanity_params or {}).get(name, params)
                result.sanity = sanity_check(module, x, name, target=int(e.target), **check_params)
            else:
                result.sanity_note = (
                    "not run" if not sanity else "needs a PyTorch module (weights are re-drawn)"
                )
            results.append(result)
            bar.advance()
    return results


def _is_plain_module(module: Any) -> bool:
    import torch
    from torch import nn

    # A TorchScript module cannot be deep-copied and re-initialised layer by layer.
    return isinstance(module, nn.Module) and not isinstance(module, torch.jit.ScriptModule)


def add_prediction(
    page: Page,
    model: Model,
    x: np.ndarray,
    *,
    name: str,
    class_names: Sequence[str] | None = None,
    true_label: int | None = None,
    top: int = 5,
    show: Callable[[Any, np.ndarray], None] | None = None,
) -> int:
    """A table of the model's top classes for one input (and the input, for an image).

    Returns the predicted class.
    """
    scores = model.scores(x[None])
    probs = to_probabilities(scores, output=model.output)[0]
    order = np.argsort(-probs, kind="stable")[:top]
    predicted = int(order[0])
    text = f"Input {name}: the model predicts class {class_label(predicted, class_names)}"
    if true_label is not None:
        text += f" (true class {class_label(true_label, class_names)})"
    page.paragraph(text + ".")
    rows = [(class_label(int(k), class_names), float(probs[k]), float(scores[0, k])) for k in order]
    if x.ndim in (2, 3):
        fig = new_figure((2.4, 2.4))
        ax = fig.add_subplot()
        _show_image(ax, x)
        ax.set_axis_off()
        page.figures([(fig, f"input {name}", name)])
    page.table(["class", "probability", "score"], rows)
    return predicted


def _show_image(ax: Any, x: np.ndarray) -> None:
    img = np.asarray(x, dtype=np.float64)
    if img.ndim == 3 and img.shape[0] == 3:
        lo, hi = img.min(), img.max()
        ax.imshow((img.transpose(1, 2, 0) - lo) / (hi - lo + 1e-12))
    else:
        ax.imshow(img.mean(axis=0) if img.ndim == 3 else img, cmap="gray")


def add_scorecard(
    page: Page, results: list[MethodScore], *, columns: int = 5, baseline: str | None = None
) -> None:
    """Every method's map side by side, then the scorecard table.

    ``baseline``: words for what removed parts became in deletion and insertion (default: the
    metrics' own, 0 and a blur of the image).
    """
    n = len(results)
    cols = min(columns, n)
    rows = -(-n // cols)
    fig = new_figure((3.2 * cols, 2.9 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, r in zip(axes, results, strict=False):
        r.explanation.plot(ax=ax, title=r.method)
    for ax in axes[n:]:
        ax.set_axis_off()
    page.figure(fig, alt="every local method side by side")
    removed = "" if baseline is None else f" (replaced by {baseline})"
    start = "a blurred input" if baseline is None else baseline
    page.paragraph(
        "Deletion: the model's probability for the explained class as the most relevant parts "
        f"are removed first{removed} (area under the curve; lower is better). Insertion: as "
        f"they are added to {start} (higher is better). Sanity check: the cascading model-"
        "parameter randomisation test; a method passes when its map changes once the learned "
        "weights are re-drawn (mean rank correlation below the threshold).",
        note=True,
    )
    table_rows = []
    for r in results:
        if r.sanity is not None:
            mean = float(np.mean(list(r.sanity.similarity.values())))
            sanity_cell: Any = Markup(f"{verdict(r.sanity.passed)} {mean:.3f}")
        else:
            sanity_cell = r.sanity_note
        table_rows.append((r.method, r.deletion, r.insertion, sanity_cell))
    page.table(
        ["method", "deletion ↓", "insertion ↑", "sanity check (mean similarity ↓)"], table_rows
    )
    best_del = min(results, key=lambda r: r.deletion).method
    best_ins = max(results, key=lambda r: r.insertion).method
    page.paragraph(f"Best on deletion: {best_del}; best on insertion: {best_ins}.")
