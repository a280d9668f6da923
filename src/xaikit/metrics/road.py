"""ROAD: remove and debias (Rong, Leemann, Borisov, Kasneci & Kasneci 2022).

Rong et al. 2022, "A consistent and efficient evaluation strategy for attribution methods"
(ICML): removing pixels by a constant leaks information through the *shape* of the removed
region (the model sees where the relevant pixels were), so MoRF and LeRF rankings disagree.
ROAD replaces each removed pixel by **noisy linear imputation**: the weighted mean of its eight
neighbours (weight 1/6 for the four direct ones, 1/12 for the diagonals), solved jointly for all
removed pixels as one sparse linear system (a removed pixel's neighbours may be removed too),
plus Gaussian noise on the imputed values. No retraining is needed (the "debiased" removal is
hard to tell from the image), which is what makes it cheap.

Here, for one input: at each given percentage of pixels removed (MoRF: most relevant first,
LeRF: least relevant first) the imputed image is built and scored; the imputed images of a
chunk of percentages stream through the perturbation engine together.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from xaikit._validation import check_choice, check_number, check_seed, check_targets, describe
from xaikit.attribution.perturbation import chunk_size
from xaikit.metrics._common import input_scores, one_input, pixel_map
from xaikit.metrics.faithfulness import ORDERS, Curve
from xaikit.metrics.registry import metric
from xaikit.model import to_probabilities

#: The percentages of Rong et al.'s figures (10% to 90% of the pixels removed).
PERCENTAGES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
# (row offset, column offset, weight) of the eight neighbours in the imputation.
_NEIGHBOURS = (
    (-1, 0, 1 / 6),
    (1, 0, 1 / 6),
    (0, -1, 1 / 6),
    (0, 1, 1 / 6),
    (-1, -1, 1 / 12),
    (-1, 1, 1 / 12),
    (1, -1, 1 / 12),
    (1, 1, 1 / 12),
)


def noisy_linear_imputation(
    x: np.ndarray, removed: np.ndarray, *, noise: float = 0.01, seed: int | None = 0
) -> np.ndarray:
    """Fill the ``removed`` pixels of ``x`` from their neighbours (Rong et al. 2022).

    Every removed pixel ``p`` satisfies ``sum_q w_pq (x_p - x_q) = 0`` over its neighbours ``q``
    inside the image (removed neighbours are unknowns too), i.e. it is the weighted mean of its
    neighbours; the system is solved per channel, then ``N(0, noise^2)`` is added to the
    imputed values only.

    Parameters
    ----------
    x : array (C, H, W) or (H, W)
    removed : bool array (H, W)
        The pixels to replace (all channels of a pixel together). At least one pixel must be
        kept: a fully removed image has nothing to impute from.
    noise : float
        Standard deviation of the noise added to the imputed values (the paper's 0.01 for
        images in [0, 1]); 0 gives the plain linear imputation.
    seed : int or None

    Returns
    -------
    array of ``x``'s shape (float64)
    """
    noise = check_number(noise, name="noise", low=0)
    seed = check_seed(seed)
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve

    image = np.asarray(x, dtype=np.float64)
    planes = image[None] if image.ndim == 2 else image
    h, w = planes.shape[1:]
    removed = np.asarray(removed, dtype=bool)
    if removed.shape != (h, w):
        raise ValueError(f"removed: expected a mask of shape {(h, w)}, got {removed.shape}")
    n = int(removed.sum())
    out = planes.copy()
    if n == 0:
        return out.reshape(image.shape)
    if n == h * w:
        raise ValueError("removed: every pixel is removed; ROAD imputes from kept neighbours")
    unknown = np.full((h, w), -1, dtype=np.int64)
    unknown[removed] = np.arange(n)
    rows_i, cols_j = np.nonzero(removed)
    diagonal = np.zeros(n)
    rhs = np.zeros((n, len(planes)))
    a_rows, a_cols, a_vals = [], [], []
    for di, dj, weight in _NEIGHBOURS:
        qi, qj = rows_i + di, cols_j + dj
        inside = (qi >= 0) & (qi < h) & (qj >= 0) & (qj < w)
        p = unknown[rows_i[inside], cols_j[inside]]
        qi, qj = qi[inside], qj[inside]
        diagonal[p] += weight  # border pixels have fewer neighbours: their weights sum to less
        q = unknown[qi, qj]
        known = q < 0
        # A kept neighbour moves to the right-hand side; a removed one is another unknown.
        np.add.at(rhs, p[known], weight * planes[:, qi[known], qj[known]].T)
        a_rows.append(p[~known])
        a_cols.append(q[~known])
        a_vals.append(np.full(int((~known).sum()), -weight))
    a_rows.append(np.arange(n))
    a_cols.append(np.arange(n))
    a_vals.append(diagonal)
    matrix = coo_matrix(
        (np.concatenate(a_vals), (np.concatenate(a_rows), np.concatenate(a_cols))), shape=(n, n)
    ).tocsc()
    values = np.asarray(spsolve(matrix, rhs)).reshape(n, len(planes))
    if noise:
        values = values + np.random.default_rng(seed).normal(0.0, noise, size=values.shape)
    out[:, rows_i, cols_j] = values.T
    return out.reshape(image.shape)


@metric("road_lerf", higher_is_better=True, fixed={"order": "lerf"})
@metric("road", higher_is_better=False, fixed={"order": "morf"})
def road(
    model: Any,
    x: Any,
    explanation: Any,
    *,
    target: int | None = None,
    order: str = "morf",
    percentages: Sequence[float] = PERCENTAGES,
    noise: float = 0.01,
    seed: int = 0,
) -> Curve:
    """ROAD curve (Rong et al. 2022): probability of the target as pixels are imputed away.

    Parameters
    ----------
    model : nn.Module, xaikit.Model or callable
    x : array (C, H, W) or (H, W)
        One image (ROAD imputes from the 2-D neighbourhood of a pixel).
    explanation : Explanation or array
        Attributions of ``x``'s shape (or ``(H, W)``); channels are summed per pixel.
    target : int, optional
        Default the explanation's target, else the predicted class.
    order : {"morf", "lerf"}
        Remove the most relevant pixels first (a faithful explanation gives a *low* area) or
        the least relevant first (a faithful explanation gives a *high* area). Report both:
        one order alone can favour blurry maps (Song et al. 2023).
    percentages : sequence of numbers
        Increasing percentages of the pixels to remove, in (0, 100); default 10, 20, ..., 90.
        Each must remove a different, non-zero number of pixels.
    noise : float
        Standard deviation of the imputation noise (0.01 as in the paper, for inputs in
        [0, 1]; scale it with your input's range).
    seed : int
        Seeds the noise (each percentage draws its own).

    Returns
    -------
    Curve
        ``name="road"``; ``fractions`` starts with 0 (the untouched image) followed by the
        percentages / 100; ``probabilities`` of the target; ``target_predicted`` whether the
        target is still the predicted class (averaged over a data set this is the paper's
        accuracy); ``area`` the trapezoid area divided by the largest fraction, i.e. the mean
        probability over the removal range.
    """
    order = check_choice(order, name="order", choices=ORDERS)
    m, x, values, target = one_input(model, x, explanation, target)
    if x.ndim not in (2, 3):
        raise ValueError(f"x: ROAD needs an image (C, H, W) or (H, W), got shape {x.shape}")
    noise = check_number(noise, name="noise", low=0)
    seed = check_seed(seed, allow_none=False)
    relevance = pixel_map(values, x)
    n_pixels = relevance.size
    counts = _counts(percentages, n_pixels)
    key = -relevance.ravel() if order == "morf" else relevance.ravel()
    ranked = np.argsort(key, kind="stable")  # ties keep pixel order
    seeds = np.random.SeedSequence(seed).spawn(len(counts))

    def images() -> Iterator[np.ndarray]:
        size = chunk_size(x)
        steps = [(0, None), *zip(counts, seeds, strict=True)]
        for start in range(0, len(steps), size):
            chunk = []
            for count, child in steps[start : start + size]:
                if count == 0:
                    chunk.append(x.astype(np.float32))
                    continue
                removed = np.zeros(n_pixels, dtype=bool)
                removed[ranked[:count]] = True
                rng_seed = int(child.generate_state(1)[0])
                filled = noisy_linear_imputation(
                    x, removed.reshape(relevance.shape), noise=noise, seed=rng_seed
                )
                chunk.append(filled.astype(np.float32))
            yield np.stack(chunk)

    scores = input_scores(m, x, images())
    check_targets(target, n=1, n_classes=scores.shape[1])
    probabilities = to_probabilities(scores, output=m.output)[:, target]
    fractions = np.concatenate([[0.0], np.asarray(counts) / n_pixels])
    area = float(np.trapezoid(probabilities, fractions) / fractions[-1])
    predicted = scores.argmax(axis=1) == target
    return Curve("road", fractions, probabilities, area, target, order, predicted)


def _counts(percentages: Any, n_pixels: int) -> list[int]:
    """Pixels removed at each percentage; every step must remove a new, non-zero number."""
    try:
        if np.asarray(percentages).dtype == bool:
            raise TypeError("bools are not percentages")
        p = np.asarray(percentages, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"percentages: expected a sequence of numbers, got {describe(percentages)}"
        ) from err
    if p.ndim != 1 or p.size == 0:
        raise ValueError(f"percentages: expected a non-empty 1-D sequence, got {percentages!r}")
    if not np.all((p > 0) & (p < 100)):
        raise ValueError(
            f"percentages: expected values in (0, 100) (100% leaves nothing to impute from), "
            f"got {p.tolist()}"
        )
    if np.any(np.diff(p) <= 0):
        raise ValueError(f"percentages: expected strictly increasing values, got {p.tolist()}")
    counts = np.rint(p / 100 * n_pixels).astype(int)
    if counts[0] == 0 or np.any(np.diff(counts) == 0):
        raise ValueError(
            f"percentages: {p.tolist()} of {n_pixels} pixels give the pixel counts "
            f"{counts.tolist()}; each step must remove at least one pixel more than the last"
        )
    return counts.tolist()
