"""``xk.evaluate`` and ``xk.compare``: a scorecard on every explanation, and methods ranked.

``evaluate`` runs named metrics on one explanation and stores the numbers in ``e.scores``;
``compare`` explains one input with several methods and ranks them on each metric. Each
metric is a function of this package registered with ``@metric`` (``registry.py``); its
options are its keyword-only parameters, and each option reaches the metrics that take it
(``steps`` and ``baseline`` for deletion, ``mask`` for localisation, ``samples`` for
robustness, ...).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from xaikit._plotting import new_figure
from xaikit._repr import HTMLRepr
from xaikit._validation import check_targets, describe
from xaikit.explanation import Explanation

# Each metric module registers its metrics with @metric when imported; add a new one here.
from xaikit.metrics import (  # noqa: F401
    attack,
    complexity,
    faithfulness,
    infidelity,
    localization,
    road,
    robustness,
)
from xaikit.metrics._common import as_array, check_same_input
from xaikit.metrics.registry import METRICS


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of ``metric`` is better (deletion, entropy, robustness: lower)."""
    return METRICS[_check_metric(metric)].higher_is_better


def _check_metric(name: Any) -> str:
    if not isinstance(name, str) or name not in METRICS:
        close = difflib.get_close_matches(str(name), list(METRICS), n=2)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"metrics: unknown metric {name!r}; known: {sorted(METRICS)}{hint}")
    return name


def _check_metrics(metrics: Any, options: dict[str, Any]) -> list[str]:
    if isinstance(metrics, str):
        metrics = (metrics,)
    names = [_check_metric(m) for m in metrics]
    if not names:
        raise ValueError("metrics: expected at least one metric name")
    accepted = set().union(*(METRICS[n].options for n in names))
    unused = sorted(set(options) - accepted)
    if unused:
        raise TypeError(
            f"{unused[0]}: not an option of the metrics {names}; they take {sorted(accepted)}"
        )
    for n in names:
        for option in METRICS[n].required:
            if options.get(option) is None:
                raise ValueError(f"{option}: metric {n!r} needs {option}=... (it has no default)")
    return names


def _score_one(model, x, e, names, options) -> dict[str, float]:
    out = {}
    for name in names:
        function, _ = METRICS[name]
        kw = {k: v for k, v in options.items() if k in METRICS[name].options}
        out[name] = float(function(model, x, e, **kw))
    return out


def evaluate(
    model: Any,
    x: Any,
    explanation: Explanation,
    *,
    metrics: str | Sequence[str] = ("deletion", "insertion"),
    batch: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Score an explanation with named metrics; the scores are also stored in ``e.scores``.

    Parameters
    ----------
    model : nn.Module, xaikit.Model or callable
    x : array or None
        The explained input (``None``: ``explanation.x``).
    explanation : Explanation, array or tensor
        Of one input, or a batch (every item is scored). Attributions from another library
        (an array or tensor of the shape of ``x``) are taken as
        :meth:`Explanation.from_array` takes them, with ``target=`` if given.
    batch : bool
        For attributions given as an array: whether ``x`` has an item axis.
    metrics : str or sequence of str
        Names from ``METRICS``: ``deletion``, ``insertion``, ``morf``, ``lerf`` (pixel
        flipping), ``road`` (MoRF) and ``road_lerf``, ``infidelity``, ``sparseness``,
        ``entropy``, ``pointing_game``, ``relevance_mass``, ``relevance_rank`` (need
        ``mask=``), ``max_sensitivity``, ``local_lipschitz``, ``attack_top_k`` (top-k
        intersection after the Ghorbani et al. attack).
    **options
        Passed to the metrics that take them (``METRICS[name].options``: the keyword-only
        parameters of the function behind the metric): ``target``, ``steps``, ``baseline``,
        ``sigma``, ``mask`` (one mask, or one per item for a batch), ``percentages`` (ROAD),
        ``perturbation``, ``window``, ``normalize`` (infidelity), ``noise`` (ROAD's
        imputation noise and infidelity's Gaussian std: give it only with one of them),
        ``radius``, ``samples``, ``epsilon``, ``step_size``, ``k``, ``bounds``,
        ``estimator``, ``beta``, ``queries`` (attack), ``seed``.

    Returns
    -------
    dict
        Metric -> float; for a batch, metric -> array ``(N,)`` of per-item scores.
    """
    names = _check_metrics(metrics, options)
    if not isinstance(explanation, Explanation):
        if x is None:
            raise TypeError(
                f"explanation: expected an xaikit Explanation, got {describe(explanation)}; "
                "attributions given as an array need x="
            )
        values = as_array(explanation, name="explanation")
        target = options.get("target")
        if batch and target is not None and np.ndim(target) == 0:  # one class for every item
            target = check_targets(target, n=len(values), n_classes=None)
        x = as_array(x, name="x")
        values = np.asarray(values)
        channels = x.ndim == values.ndim + 1 and x.ndim >= 3
        if channels and values.shape == x.shape[:-3] + x.shape[-2:]:
            # a (H, W) map of a (C, H, W) image, as the metrics take it: spread over the
            # channels so that their sum, which the image metrics score, is the map
            values = np.repeat(np.expand_dims(values / x.shape[-3], -3), x.shape[-3], axis=-3)
        if values.shape != x.shape:
            raise ValueError(
                f"explanation: expected attributions of the shape of x {x.shape} (or without "
                f"its channel axis), got {values.shape}"
            )
        explanation = Explanation.from_array(values, x, model=model, target=target, batch=batch)
    if x is None:
        x = explanation.x
    else:
        x = as_array(x, name="x")
        check_same_input(x, explanation)
    if not explanation.batch:
        scores = _score_one(model, x, explanation, names, options)
    else:
        x = np.asarray(x)
        if x.shape != explanation.x.shape:
            raise ValueError(
                f"x: expected the explained batch's shape {explanation.x.shape}, got {x.shape}"
            )
        masks = options.get("mask")
        per_item_mask = isinstance(masks, np.ndarray) and masks.ndim == 3 and len(masks) == len(x)
        targets = options.get("target")
        if targets is not None and np.ndim(targets) != 0:  # one class per item
            targets = check_targets(targets, n=len(x), n_classes=None)
        else:
            targets = None  # one class for every item (or each item's own): options as given
        rows = []
        for i in range(len(x)):
            opts = dict(options)
            if per_item_mask:
                opts["mask"] = masks[i]
            if targets is not None:
                opts["target"] = int(targets[i])
            rows.append(_score_one(model, x[i], explanation[i], names, opts))
        scores = {n: np.array([r[n] for r in rows]) for n in names}
    explanation.scores.update(scores)
    return scores


@dataclass
class Comparison(HTMLRepr):
    """Several methods' explanations of one input and their scores.

    Attributes
    ----------
    explanations : dict
        Method -> Explanation (its ``scores`` filled).
    table : list of dict
        One row per method: ``{"method": name, metric: value, ...}``, in the order given.
    metrics : list of str
    """

    explanations: dict[str, Explanation]
    table: list[dict[str, Any]]
    metrics: list[str]

    def rank(self, metric: str | None = None) -> list[str]:
        """Methods best first on ``metric`` (default the first metric), its direction applied."""
        metric = self.metrics[0] if metric is None else _check_metric(metric)
        if metric not in self.metrics:
            raise ValueError(f"metric: not computed in this comparison; computed: {self.metrics}")
        sign = -1.0 if higher_is_better(metric) else 1.0
        rows = sorted(self.table, key=lambda r: sign * r[metric])  # stable: ties keep order
        return [r["method"] for r in rows]

    def __str__(self) -> str:
        head = "| method | " + " | ".join(self.metrics) + " |"
        sep = "|---" * (len(self.metrics) + 1) + "|"
        lines = [head, sep]
        for row in self.table:
            lines.append(
                f"| {row['method']} | " + " | ".join(f"{row[m]:.3f}" for m in self.metrics) + " |"
            )
        return "\n".join(lines)

    def plot(self) -> Any:
        """The maps side by side, each titled with its scores; return the Figure."""
        n = len(self.explanations)
        fig = new_figure((3.0 * n, 3.4))
        for ax, (name, e) in zip(
            fig.subplots(1, n, squeeze=False)[0], self.explanations.items(), strict=True
        ):
            lines = [f"{m} {e.scores[m]:.3f}" for m in self.metrics]
            e.plot(ax=ax, title=name + "\n" + "\n".join(lines))
        return fig


def compare(
    model: Any,
    x: Any,
    *,
    methods: Sequence[str] | dict[str, dict[str, Any]] | None = None,
    metrics: str | Sequence[str] = ("deletion", "insertion"),
    target: int | None = None,
    **options: Any,
) -> Comparison:
    """Explain ``x`` with several methods and score each on the same metrics.

    Parameters
    ----------
    model : nn.Module, xaikit.Model or callable
    x : array
        One input.
    methods : sequence of str, dict method -> parameters, or None
        ``None``: every method that applies to the model and input, as ``xaikit compare``
        and ``xaikit report`` run them (:func:`xaikit.attribution.defaults.default_methods`:
        all ten on an image with a PyTorch model, the perturbation methods on a callable).
        Named methods run with the same fast parameters (``FAST_PARAMS``: fewer samples or
        steps); a dict gives each method's parameters exactly.
    metrics : str or sequence of str
        As in :func:`evaluate`.
    target : int, optional
        The class every method explains (default the predicted class).
    **options
        Metric options, as in :func:`evaluate`.

    Returns
    -------
    Comparison
        ``.table`` (rows per method), ``.rank(metric)``, ``.explanations``, ``.plot()``.
    """
    from xaikit._torch import is_torchscript
    from xaikit.attribution import explain
    from xaikit.attribution.api import suggest_batch
    from xaikit.attribution.defaults import default_methods, fast_params
    from xaikit.components import input_kind
    from xaikit.model import as_model

    names = _check_metrics(metrics, options)
    model = as_model(model)  # one adapter for every method: the batch size is found once
    if methods is None:
        specs = default_methods(
            image=input_kind(x) == "image",
            gradients=model.is_torch,
            hooks=not is_torchscript(model.module),  # TorchScript runs no Python hooks
        )
    elif isinstance(methods, dict):
        specs = dict(methods)
    else:
        specs = fast_params([methods] if isinstance(methods, str) else methods)
    if not specs:
        raise ValueError("methods: expected at least one method name")
    explanations: dict[str, Explanation] = {}
    table = []
    # explain's own hint would say batch=True, which compare does not take
    suggest_batch(model, x, remedy="compare takes one input: pass x[0], or loop over the items")
    for method, params in specs.items():
        e = explain(model, x, method=method, target=target, **params)
        scores = evaluate(model, x, e, metrics=names, **options)
        explanations[method] = e
        table.append({"method": method, **scores})
    return Comparison(explanations, table, names)
