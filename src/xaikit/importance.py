"""Permutation importance: how much the model's quality drops when one feature is shuffled.

Breiman (2001), "Random forests"; Fisher, Rudin & Dominici (2019), "All models are wrong, but
many are useful" (model reliance). All shuffled copies of the data for one feature go through
:meth:`Model.scores` as one call, so the model is evaluated at its best batch size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from xaikit._plotting import new_figure, plain
from xaikit._repr import HTMLRepr, short_repr
from xaikit._tables import frame_input, is_frame
from xaikit._validation import (
    check_batch,
    check_count,
    check_memory,
    check_seed,
)
from xaikit.attribution.perturbation import CHUNK_BYTES, chunk_sizes
from xaikit.model import as_model


@dataclass
class Importance(HTMLRepr):
    """Per-feature drops in quality, ``(F, n_repeats)``, with their mean and spread."""

    feature_names: list[str]
    importances: np.ndarray
    baseline_score: float
    scoring: str

    @property
    def importances_mean(self) -> np.ndarray:
        return self.importances.mean(axis=1)

    @property
    def importances_std(self) -> np.ndarray:
        return self.importances.std(axis=1)

    def ranking(self) -> list[tuple[str, float]]:
        """Features from most to least important, with their mean drop."""
        order = np.argsort(-self.importances_mean, kind="stable")
        return [(self.feature_names[i], float(self.importances_mean[i])) for i in order]

    def __repr__(self) -> str:
        return short_repr(self)  # arrays by shape: a repr that fits on a screen

    def plot(self, *, top_k: int = 20, ax=None):
        """Horizontal bars of the mean drop with one standard deviation, largest on top."""
        fig = (
            ax.figure
            if ax is not None
            else new_figure((6, 0.3 * min(top_k, len(self.feature_names)) + 1.2))
        )
        ax = ax if ax is not None else fig.add_subplot()
        order = np.argsort(self.importances_mean)[-top_k:]
        # Positions, not the names as categories: equal names would share one bar.
        ax.barh(
            np.arange(order.size),
            self.importances_mean[order],
            xerr=self.importances_std[order],
            color="#4575b4",
        )
        ax.set_yticks(np.arange(order.size), labels=[plain(self.feature_names[i]) for i in order])
        ax.set_xlabel(f"drop in {self.scoring} when shuffled")
        ax.set_title("permutation importance")
        return fig


def permutation_importance(
    model: Any,
    X: Any,
    y: Any = None,
    *,
    n_repeats: int = 5,
    seed: int = 0,
    feature_names: list[str] | None = None,
) -> Importance:
    """Global importance of each feature of a table by permutation.

    Parameters
    ----------
    model : nn.Module, xaikit.Model or callable on NumPy batches
    X : array (N, F)
    y : array (N,), optional
        True labels (classifiers: accuracy) or targets (one output: R²). Without ``y`` the
        model is compared with itself: agreement with its own predictions on the unshuffled
        data, or R² to its own outputs — how much the model *uses* each feature.
    n_repeats : int
        Shuffles per feature; the result keeps every repeat.
    """
    n_repeats = check_count(n_repeats, name="n_repeats")
    seed = check_seed(seed)
    m = as_model(model)
    if is_frame(X):  # its columns name the features; the model gets DataFrames back
        X, m, _ = frame_input(m, X, name="X")
        feature_names = m.table.feature_names if feature_names is None else feature_names
    X = np.asarray(check_batch(X, name="X"))
    if X.ndim != 2:
        raise ValueError(f"X: expected a table (N, F), got shape {X.shape}")
    X = X.astype(np.float32 if m.is_torch else np.float64, copy=False)
    n, n_features = X.shape
    names = (
        [f"x[{i}]" for i in range(n_features)]
        if feature_names is None
        else [str(v) for v in feature_names]
    )
    if len(names) != n_features:
        raise ValueError(f"feature_names: expected {n_features} names, got {len(names)}")

    original = m.scores(X)
    classifier = original.shape[1] > 1
    if y is None:
        reference = original.argmax(1) if classifier else original[:, 0]
        scoring = "agreement with the model" if classifier else "R² to the model's output"
    else:
        reference = np.asarray(y).reshape(-1)
        if len(reference) != n:
            raise ValueError(f"y: expected {n} labels (one per row of X), got {len(reference)}")
        scoring = "accuracy" if classifier else "R²"

    def quality(scores: np.ndarray) -> np.ndarray:
        """Quality per repeat for scores of shape (n_repeats * n, K)."""
        scores = scores.reshape(-1, n, scores.shape[1])
        if classifier:
            return (scores.argmax(2) == reference).mean(axis=1)
        residual = ((scores[:, :, 0] - reference) ** 2).sum(axis=1)
        return 1 - residual / max(float(((reference - reference.mean()) ** 2).sum()), 1e-12)

    baseline = float(quality(original)[0])
    rng = np.random.default_rng(seed)
    check_memory(
        n_repeats, 8 * n_features, name="n_repeats", what=f"repeats of {n_features} features"
    )  # the result holds every repeat
    drops = np.empty((n_features, n_repeats))
    # One model call per feature (and per chunk of repeats when the copies would be large):
    # the shuffles are drawn in the same order either way.
    per_chunk = max(1, CHUNK_BYTES // max(1, X.nbytes))
    for f in range(n_features):
        done = 0
        for repeats in chunk_sizes(n_repeats, per_chunk):
            shuffled = np.repeat(X[None], repeats, axis=0)  # (R, N, F)
            orders = rng.permuted(np.tile(np.arange(n), (repeats, 1)), axis=1)
            shuffled[:, :, f] = X[orders, f]
            scores = m.scores(shuffled.reshape(-1, n_features), check=False)
            drops[f, done : done + repeats] = baseline - quality(scores)
            done += repeats
    return Importance(
        feature_names=names, importances=drops, baseline_score=baseline, scoring=scoring
    )
