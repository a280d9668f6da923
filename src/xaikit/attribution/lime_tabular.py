"""LIME for table rows as the paper's tabular explainer does it: samples from training statistics.

Coalitions (``sampling="coalitions"`` in :func:`xaikit.attribution.lime.lime`) remove a feature
by setting it to a baseline. Ribeiro et al.'s tabular LIME instead draws whole new rows from the
training data's statistics and regresses the model's output on an interpretable representation
of each row:

- ``discretize="quartile"`` or ``"decile"`` (the paper's and lime's default): each feature's
  training values are cut into bins; a sample takes a bin with the training frequencies and a
  value from a normal truncated to that bin (mean and std of the training values in it). The
  representation is binary: 1 where the sample falls in the same bin as the explained row. A
  coefficient is then the effect of "feature in x's bin" (e.g. "3.1 < petal length <= 4.4").
- ``discretize=None``: each feature is drawn from N(mean, std) of the training data; the
  representation is the standardised value and a coefficient is per training std.

Samples are weighted by the exponential kernel on the euclidean distance to the explained row's
representation, width ``0.75 sqrt(F)``; categorical features (``categorical=[...]``) are drawn
from their training frequencies and represented as "same value as x".
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xaikit._validation import check_finite, describe
from xaikit.attribution.coalitions import RidgeMoments, single_threaded_blas
from xaikit.model import Model

DISCRETIZERS = {"quartile": (25, 50, 75), "decile": tuple(range(10, 100, 10))}
# Row elements drawn per block: memory stays bounded whatever ``samples`` is.
_BLOCK_ELEMENTS = 2**21


class TrainingStatistics:
    """Per-feature statistics of training rows ``(R, F)``: bins, frequencies, means, stds."""

    def __init__(self, rows: np.ndarray, *, discretize: str | None, categorical) -> None:
        self.rows = rows
        self.n_features = rows.shape[1]
        self.discretize = discretize
        self.categorical = set(categorical)
        self.mean = rows.mean(axis=0)
        std = rows.std(axis=0)
        self.std = np.where(std > 0, std, 1.0)  # a constant feature: unit scale, no division by 0
        # per feature: sorted distinct bin edges (may be fewer than the percentiles for ties)
        self.edges: list[np.ndarray] = []
        for j in range(self.n_features):
            if j in self.categorical or discretize is None:
                self.edges.append(np.zeros(0))
            else:
                self.edges.append(np.unique(np.percentile(rows[:, j], DISCRETIZERS[discretize])))

    def bins(self, column: np.ndarray, j: int) -> np.ndarray:
        """Bin index of each value: ``searchsorted`` with ``edges[k-1] < v <= edges[k]``."""
        return np.searchsorted(self.edges[j], column, side="left")

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` new rows drawn feature by feature from the training statistics."""
        out = np.empty((n, self.n_features))
        for j in range(self.n_features):
            column = self.rows[:, j]
            if j in self.categorical:
                values, counts = np.unique(column, return_counts=True)
                out[:, j] = rng.choice(values, size=n, p=counts / counts.sum())
            elif self.discretize is None:
                out[:, j] = rng.normal(size=n) * self.std[j] + self.mean[j]
            else:
                out[:, j] = self._sample_binned(column, j, n, rng)
        return out

    def _sample_binned(self, column, j, n, rng) -> np.ndarray:
        """A bin per sample with the training frequencies, then a truncated normal in it."""
        from scipy.special import ndtr, ndtri  # on first use: `import xaikit` stays light

        index = self.bins(column, j)
        n_bins = len(self.edges[j]) + 1
        counts = np.bincount(index, minlength=n_bins).astype(np.float64)
        chosen = rng.choice(n_bins, size=n, p=counts / counts.sum())
        values = np.empty(n)
        for b in np.unique(chosen):
            inside = column[index == b]
            where = chosen == b
            low, high = inside.min(), inside.max()
            mu, sd = inside.mean(), inside.std()
            if sd == 0 or low == high:
                values[where] = mu
                continue
            # inverse-CDF sampling of N(mu, sd) restricted to [low, high]
            a, b_ = ndtr((low - mu) / sd), ndtr((high - mu) / sd)
            u = rng.uniform(a, b_, size=int(where.sum()))
            values[where] = np.clip(mu + sd * ndtri(u), low, high)
        return values

    def representation(self, rows: np.ndarray, x: np.ndarray) -> np.ndarray:
        """The interpretable representation: same bin/value as ``x`` (binary) or standardised."""
        rep = np.empty(rows.shape)
        for j in range(self.n_features):
            if j in self.categorical:
                rep[:, j] = rows[:, j] == x[j]
            elif self.discretize is None:
                rep[:, j] = (rows[:, j] - self.mean[j]) / self.std[j]
            else:
                rep[:, j] = self.bins(rows[:, j], j) == self.bins(x[j : j + 1], j)[0]
        return rep

    def condition(self, x: np.ndarray, j: int) -> tuple[float, float]:
        """The interval ``(low, high]`` of x's bin for feature ``j`` (infinite at the ends)."""
        edges = self.edges[j]
        if len(edges) == 0:
            return (float(x[j]), float(x[j])) if j in self.categorical else (-np.inf, np.inf)
        k = int(self.bins(x[j : j + 1], j)[0])
        low = -np.inf if k == 0 else float(edges[k - 1])
        high = np.inf if k == len(edges) else float(edges[k])
        return low, high


def check_training_rows(baseline: Any, x: np.ndarray) -> np.ndarray:
    """Training rows ``(R, F)`` for ``sampling="training"``, from the ``baseline`` argument."""
    if baseline is None or np.isscalar(baseline) or isinstance(baseline, str):
        raise ValueError(
            "baseline: sampling='training' draws rows from the training statistics; pass the "
            f"training rows as baseline=X_train (shape (R, {x.shape[-1]})), got "
            f"{describe(baseline)}"
        )
    rows = baseline.detach().cpu().numpy() if hasattr(baseline, "detach") else baseline
    rows = np.asarray(rows, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[1] != x.shape[-1] or len(rows) < 2:
        raise ValueError(
            f"baseline: expected training rows of shape (R >= 2, {x.shape[-1]}), got {rows.shape}"
        )
    check_finite(rows, name="baseline")
    return rows


def check_categorical(categorical: Any, n_features: int) -> tuple[int, ...]:
    if categorical is None:
        return ()
    try:
        indices = tuple(int(i) for i in categorical)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"categorical: expected feature indices, got {describe(categorical)}"
        ) from err
    bad = [i for i in indices if not 0 <= i < n_features]
    if bad:
        raise ValueError(f"categorical: indices {bad} out of range for {n_features} features")
    return indices


def tabular_lime(
    model: Model,
    x: np.ndarray,
    targets: np.ndarray,
    *,
    training: np.ndarray,
    discretize: str | None,
    categorical: tuple[int, ...],
    samples: int,
    kernel_width: float | None,
    alpha: float,
    seed: int,
) -> dict[str, Any]:
    """Fit LIME's tabular surrogate for each row of ``x (N, F)``; arrays with a leading N."""
    stats = TrainingStatistics(training, discretize=discretize, categorical=categorical)
    width = 0.75 * np.sqrt(x.shape[1]) if kernel_width is None else kernel_width
    coefs, contributions, intercepts, r2s, local, scores, low, high = ([] for _ in range(8))
    for row, target in zip(x, targets, strict=True):
        rng = np.random.default_rng(seed)
        own = stats.representation(row[None].astype(np.float64), row)[0]
        ridge = RidgeMoments(x.shape[1])
        # Rows are drawn, scored and added to the normal equations in blocks (the first holds
        # x itself): memory is one block whatever ``samples`` is. Up to one block the draws
        # are those of a single call; beyond, each block draws its rows from the same stream.
        block = max(1, _BLOCK_ELEMENTS // x.shape[1])
        for start in range(0, samples, block):
            n_drawn = min(samples, start + block) - max(start, 1)
            rows = stats.sample(n_drawn, rng)
            if start == 0:
                rows = np.concatenate([row[None].astype(np.float64), rows])
            batch = rows.astype(np.float32) if model.is_torch else rows  # callables keep float64
            y = model.scores(batch, check=False)[:, int(target)].astype(np.float64)
            if start == 0:
                scores.append(y[0])
            rep = stats.representation(rows, row)
            distance = np.linalg.norm(rep - own, axis=1)
            with single_threaded_blas():
                ridge.add(rep, y, np.sqrt(np.exp(-(distance**2) / width**2)))
        with single_threaded_blas():
            coef, intercept, r2 = ridge.solve(alpha=alpha)
        coefs.append(coef)
        # contribution of each feature: coefficient times x's representation relative to its
        # mean over the training rows (standardised values on a linear model: w_i (x_i -
        # mean_i), the Shapley value; bins: coef times the share of training rows outside x's bin)
        contributions.append(coef * (own - stats.representation(training, row).mean(axis=0)))
        intercepts.append(intercept)
        r2s.append(r2)
        local.append(intercept + own @ coef)
        bounds = [stats.condition(row, j) for j in range(x.shape[1])]
        low.append([b[0] for b in bounds])
        high.append([b[1] for b in bounds])
    return {
        "coefficients": np.array(coefs),
        "contributions": np.array(contributions),
        "intercept": np.array(intercepts),
        "r2": np.array(r2s),
        "local_prediction": np.array(local),
        "score": np.array(scores),
        "bin_low": np.array(low),
        "bin_high": np.array(high),
        "kernel_width": width,
    }
