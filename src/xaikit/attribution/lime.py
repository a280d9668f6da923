"""LIME (Ribeiro et al. 2016): a weighted linear surrogate fitted on random coalitions.

An input is cut into M components (superpixels, features, tokens). A coalition ``z`` in
{0, 1}^M keeps the components where it is 1 and replaces the others by the baseline; the model's
raw output for the target on that input is ``v(z)``. LIME draws coalitions near the input,
weights each by an exponential kernel on its distance to the all-ones coalition, and fits a
ridge regression ``v(z) ~ intercept + coef . z``: ``coef`` is the explanation.

This module also holds :class:`CoalitionGame`, the set function ``v`` both LIME and KernelSHAP
are built on, so the two explain the same quantity and differ only in how they weight and fit.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any

import numpy as np

from xaikit._validation import check_choice, check_positive_int, describe
from xaikit.attribution.perturbation import batched, chunk_size, perturbation_scores
from xaikit.attribution.registry import Attribution, register
from xaikit.baselines import make_baseline
from xaikit.components import component_shape, input_kind, make_components, n_components
from xaikit.model import Model

REFERENCE = (
    "Ribeiro, Singh & Guestrin 2016, 'Why Should I Trust You?': Explaining the Predictions of "
    "Any Classifier, KDD"
)

# Random keys drawn per chunk of coalitions (elements): bounds memory whatever samples and M are.
_CHUNK_ELEMENTS = 2**22


@register("lime", needs_gradients=False, reference=REFERENCE)
def lime(
    model: Model,
    x: np.ndarray,
    targets: np.ndarray,
    *,
    components: Any = "auto",
    samples: int = 1000,
    kernel_width: float | None = None,
    baseline: Any = None,
    alpha: float = 1.0,
    seed: int | None = 0,
    sampling: str = "coalitions",
    discretize: str | None = "quartile",
    categorical: Any = None,
) -> Attribution:
    """LIME attributions: one ridge coefficient per component, painted over its elements.

    Parameters
    ----------
    components : "auto", str, dict, or int array
        How the input is cut (:func:`xaikit.components.make_components`): ``"auto"`` (SLIC for
        images from 64 px, a grid below; one per feature; one per token), a name such as
        ``"slic"`` or ``"grid"``, a name with options (``{"how": "slic", "n_segments": 100}``,
        ``{"how": "grid", "cell": (4, 4)}``), or an id map (the input without channels, or one
        per item with ``batch=True``) with ids ``0 .. M-1``, every id used.
    samples : int
        Coalitions drawn, the input itself first (lime's ``num_samples``, 1000).
    kernel_width : float or None
        Width of the kernel ``pi(z) = sqrt(exp(-d(z)^2 / width^2))``. ``None``: 0.25 on the
        cosine distance ``d`` between a coalition and the all-ones one (lime's images; its text
        explainer's 25 on 100 x cosine is the same kernel), or with ``sampling="training"``
        ``0.75 sqrt(F)`` on the euclidean distance of representations (lime's tabular).
    baseline : None, number, str, array, or background rows
        What a removed component becomes (:func:`xaikit.baselines.make_baseline`). ``None``:
        images fill each component with its own mean colour (lime's ``hide_color=None``);
        tabular rows and tokens use 0 (pass a pad id for tokens). Background rows
        ``(R, *x.shape)`` make ``v(z)`` the mean score over the rows (tabular data: pass
        training rows, the "background statistics" to sample from).
    alpha : float
        Ridge penalty (lime's ``Ridge(alpha=1)``).
    seed : int or None
        Seeds the coalitions (default 0: reproducible; ``None`` draws a fresh seed); every
        item of a batch uses the same draws, so an item's result
        does not depend on the other items.
    sampling : "coalitions" or "training"
        ``"coalitions"`` removes components (any input kind). ``"training"`` (table rows only)
        is the paper's tabular LIME: new rows drawn from the statistics of the training rows
        passed as ``baseline`` (see :mod:`xaikit.attribution.lime_tabular`).
    discretize : "quartile", "decile" or None
        With ``sampling="training"``: cut features into training percentile bins and regress on
        "in x's bin" (lime's default ``"quartile"``), or ``None`` for standardised values.
    categorical : sequence of int, optional
        With ``sampling="training"``: features drawn from their training frequencies and
        represented as "same value as x".

    Returns
    -------
    Attribution
        ``component_values (N, M)`` (padded with 0 where items have fewer components),
        ``info``: ``intercept``, ``r2`` (the surrogate's weighted R², its local fidelity),
        ``local_prediction`` (surrogate at the input), ``score`` (the model's output there),
        ``evaluations`` (distinct coalitions run), ``explained_output`` (what the model returns:
        coefficients of logits are not coefficients of probabilities).

    Notes
    -----
    What is explained is what the model returns (``explained_output``): with a module that
    returns logits the coefficients are in logit units, so a threshold like lime's
    ``min_weight=0.05`` means something else than on probabilities (the HW9 notebook ran lime on
    logits). Wrap the model with ``Model(..., output=...)`` or add a softmax to explain
    probabilities.

    With ``sampling="training"`` the component values are lime's coefficients (of the bin
    indicators, or per training std); ``info["contributions"]`` gives each feature's share of
    the local prediction relative to the training rows' mean (``w_i (x_i - mean_i)`` for a linear
    model with ``discretize=None``), ``info["bin_low"]``/``["bin_high"]`` x's bin per feature.
    ``sampling="coalitions"`` with training rows as ``baseline`` is the other reading: a
    removed feature takes the background's values (the expectation over the rows).

    References
    ----------
    Ribeiro, Singh & Guestrin 2016, KDD: coalitions "by drawing nonzero elements of x'
    uniformly at random (where the number of such draws is also uniformly sampled)".
    """
    samples = check_positive_int(samples, name="samples")
    if kernel_width is not None:
        kernel_width = _check_positive_float(kernel_width, name="kernel_width")
    alpha = _check_positive_float(alpha, name="alpha", allow_zero=True)
    seed = check_seed(seed)
    sampling = check_choice(sampling, name="sampling", choices=("coalitions", "training"))
    if sampling == "training":
        return _lime_from_training(
            model, x, targets, baseline=baseline, discretize=discretize,
            categorical=categorical, samples=samples, kernel_width=kernel_width, alpha=alpha,
            seed=seed,
        )  # fmt: skip
    kernel_width = 0.25 if kernel_width is None else kernel_width
    games = games_for(model, x, targets, components=components, baseline=baseline, seed=seed)
    fits = []
    for game in games:
        z = lime_coalitions(game.m, samples, np.random.default_rng(seed))
        y = game(z)
        distance = 1.0 - np.sqrt(z.sum(axis=1) / game.m)  # cosine distance to all-ones
        weights = np.sqrt(np.exp(-(distance**2) / kernel_width**2))
        with single_threaded_blas():
            coef, intercept, r2 = weighted_ridge(z, y, weights, alpha=alpha)
        fits.append((game, coef, {"intercept": intercept, "r2": r2, "score": y[0]}))
    info = {key: np.array([f[2][key] for f in fits]) for key in ("intercept", "r2", "score")}
    info["local_prediction"] = np.array([f[2]["intercept"] + f[1].sum() for f in fits])
    info["evaluations"] = np.array([f[0].evaluations for f in fits])
    info["explained_output"] = model.output
    return assemble(x, [(g, c) for g, c, _ in fits], info)


def _lime_from_training(model, x, targets, *, baseline, discretize, categorical, **fit):
    """``sampling="training"``: the paper's tabular LIME (:mod:`.lime_tabular`)."""
    from xaikit.attribution.lime_tabular import (  # it builds on this module's ridge
        DISCRETIZERS,
        check_categorical,
        check_training_rows,
        tabular_lime,
    )

    if input_kind(x[0]) != "tabular":
        raise ValueError(
            f"sampling: 'training' draws table rows and needs rows of shape (F,); got inputs of "
            f"shape {x.shape[1:]} (use sampling='coalitions' for images and tokens)"
        )
    if discretize is not None:
        discretize = check_choice(discretize, name="discretize", choices=tuple(DISCRETIZERS))
    training = check_training_rows(baseline, x[0])
    categorical = check_categorical(categorical, x.shape[1])
    if fit["samples"] < 2:
        raise ValueError(f"samples: sampling='training' needs at least 2, got {fit['samples']}")
    result = tabular_lime(
        model, x.astype(np.float64), targets, training=training, discretize=discretize,
        categorical=categorical, **fit,
    )  # fmt: skip
    coef = result.pop("coefficients")
    components = np.broadcast_to(np.arange(x.shape[1]), x.shape).copy()
    info = {**result, "evaluations": np.full(len(x), fit["samples"])}
    info["explained_output"] = model.output
    return Attribution(values=coef.copy(), components=components, component_values=coef, info=info)


def lime_coalitions(m: int, samples: int, rng: np.random.Generator) -> np.ndarray:
    """``samples`` coalitions ``(samples, m)`` of bools: all-ones first, then random ones.

    As in the paper and lime's text explainer: the number of kept components is uniform on
    ``0 .. m-1``, then which are kept is uniform given that number. (lime's image explainer
    instead keeps each component with probability 1/2, which rarely draws coalitions near the
    input.) Built per chunk of rows: a random permutation per row, kept where its value is
    below the drawn count (exactly ``k`` positions, uniformly chosen).
    """
    z = np.ones((samples, m), dtype=bool)
    kept = rng.integers(0, m, size=samples - 1)
    rows = max(1, _CHUNK_ELEMENTS // m)
    for start in range(1, samples, rows):
        stop = min(samples, start + rows)
        permutation = np.argsort(rng.random((stop - start, m)), axis=1)
        z[start:stop] = permutation < kept[start - 1 : stop - 1, None]
    return z


def weighted_ridge(z: np.ndarray, y: np.ndarray, weights: np.ndarray, *, alpha: float):
    """Weighted ridge with an unpenalised intercept, in closed form (scikit-learn's ``Ridge``).

    Minimises ``sum_i w_i (y_i - b - z_i . c)^2 + alpha |c|^2``: centre by the weighted means,
    solve the normal equations. Returns ``(coef, intercept, weighted R²)``.
    """
    X = z.astype(np.float64)
    total = weights.sum()
    x_mean = weights @ X / total
    y_mean = weights @ y / total
    Xc, yc = X - x_mean, y - y_mean
    gram = Xc.T @ (weights[:, None] * Xc)
    gram[np.diag_indices_from(gram)] += alpha
    rhs = Xc.T @ (weights * yc)
    try:
        coef = np.linalg.solve(gram, rhs)
    except np.linalg.LinAlgError:  # alpha = 0 with too few distinct coalitions
        coef = np.linalg.lstsq(gram, rhs, rcond=None)[0]
    intercept = float(y_mean - x_mean @ coef)
    ss_res = float(weights @ (yc - Xc @ coef) ** 2)
    ss_tot = float(weights @ yc**2)
    # scikit-learn's convention for a constant target: perfect fit 1, otherwise 0
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else float(ss_res <= 1e-12)
    return coef, intercept, r2


# ---------------------------------------------------------------------- shared with kernel_shap


class CoalitionGame:
    """One input as a cooperative game: ``v(z)``, the target score with components ``z`` kept.

    Removed components take the baseline's values, or, with background rows, ``v(z)`` is the
    mean score over the rows (the expectation KernelSHAP defines removal by).
    """

    def __init__(self, model: Model, x: np.ndarray, target: int, *, components, baseline, seed):
        kind = input_kind(x)
        self.x, self.target, self.map = x, int(target), components
        self.m = n_components(components)
        if baseline is None:
            values = component_mean(x, components) if kind == "image" else np.zeros(x.shape)
            self.baseline, self.background = values.astype(np.float32), False
        else:
            self.baseline, self.background = make_baseline(x, baseline, seed=seed, kind=kind)
        self.rows = len(self.baseline) if self.background else 1
        self.model = model  # token ids stay ids: the engine never blends them
        self.evaluations = 0

    def __call__(self, z: np.ndarray) -> np.ndarray:
        """``v`` for coalitions ``z (n, M)``; each distinct coalition runs once (float64)."""
        packed = np.packbits(z, axis=1)
        _, first, inverse = np.unique(packed, axis=0, return_index=True, return_inverse=True)
        masks = z[np.sort(first)]  # distinct rows in order of first appearance
        order = np.argsort(np.argsort(first))  # position of each unique row within masks
        size = chunk_size(self.x, n_background=self.rows)
        scores = perturbation_scores(
            self.model,
            self.x,
            (chunk.astype(np.float32) for chunk in batched(masks, size)),
            baseline=self.baseline,
            components=self.map,
            background=self.background,
        )
        self.evaluations += len(masks)
        return scores[:, self.target].astype(np.float64)[order[inverse.reshape(-1)]]


def games_for(model, x, targets, *, components, baseline, seed) -> list[CoalitionGame]:
    """One :class:`CoalitionGame` per item of the batch ``x``.

    Warns when an item has a single component (a uniform image, or a segmentation too coarse
    for it): its one value is then the whole score difference, which explains nothing.
    """
    maps = component_maps(x, components)
    single = [i for i, c in enumerate(maps) if n_components(c) == 1]
    if single:
        where = f"item {single[0]}" if len(x) > 1 else "the input"
        warnings.warn(
            f"components: {where} has a single component, so its value is the whole score "
            "difference and shows nothing about where the evidence is; for an image, use a "
            "finer segmentation, e.g. components='grid' or "
            "components={'how': 'slic', 'n_segments': 100}",
            UserWarning,
            stacklevel=4,
        )
    return [
        CoalitionGame(model, xi, t, components=c, baseline=baseline, seed=seed)
        for xi, t, c in zip(x, targets, maps, strict=True)
    ]


def component_maps(x: np.ndarray, components: Any) -> list[np.ndarray]:
    """A validated map (ids ``0 .. M-1``) per item: one how-string/map for all, or one per item.

    A dict names a segmentation with its options, e.g. ``{"how": "slic", "n_segments": 100}``.
    """
    if isinstance(components, dict):
        options = dict(components)
        how = options.pop("how", None)
        if not isinstance(how, str):
            raise ValueError(
                "components: a dict needs 'how', the segmentation's name, e.g. "
                f"{{'how': 'slic', 'n_segments': 100}}; got {components!r}"
            )
        return [make_components(xi, how, **options) for xi in x]
    if isinstance(components, str):
        return [make_components(xi, components) for xi in x]
    arr = components.detach().cpu().numpy() if hasattr(components, "detach") else components
    arr = np.asarray(arr) if isinstance(arr, (list, tuple, np.ndarray)) else arr
    spatial = component_shape(x[0])
    if isinstance(arr, np.ndarray) and arr.shape == (len(x), *spatial) and arr.ndim > 1:
        return [make_components(xi, a) for xi, a in zip(x, arr, strict=True)]
    if not isinstance(arr, np.ndarray):
        raise TypeError(
            f"components: expected 'auto', a segmentation name or an int id map of shape "
            f"{spatial}, got {describe(components)}"
        )
    return [make_components(xi, arr) for xi in x]


def component_mean(x: np.ndarray, components: np.ndarray) -> np.ndarray:
    """Each component filled with its own mean, per channel (lime's ``hide_color=None``)."""
    flat = components.reshape(-1)
    counts = np.bincount(flat)
    planes = x.reshape(-1, flat.size).astype(np.float64)  # (channels, H*W)
    means = np.stack([np.bincount(flat, weights=p) / counts for p in planes])
    return means[:, flat].reshape(x.shape)


def assemble(x: np.ndarray, fits: list[tuple[CoalitionGame, np.ndarray]], info) -> Attribution:
    """Paint each item's component values over its map; pad ``component_values`` to max M."""
    width = max(g.m for g, _ in fits)
    values = np.zeros(x.shape, dtype=np.float64)
    table = np.zeros((len(fits), width))
    for i, (game, coef) in enumerate(fits):
        values[i] = np.broadcast_to(coef[game.map], x.shape[1:])
        table[i, : game.m] = coef
    maps = np.stack([g.map for g, _ in fits])
    return Attribution(values=values, components=maps, component_values=table, info=info)


def single_threaded_blas():
    """BLAS on one thread for the small solves between model batches.

    On a shared CPU, OpenBLAS threads spin against torch's and each other: a 256 x 256 inverse
    measured 0.2 s with threads and 5 ms without (see DESIGN.md's field notes).
    """
    global _BLAS
    if _BLAS is None:
        try:  # scikit-learn brings threadpoolctl; scanning the libraries once is enough
            from threadpoolctl import ThreadpoolController

            _BLAS = ThreadpoolController()
        except ImportError:
            _BLAS = False
    return _BLAS.limit(limits=1, user_api="blas") if _BLAS else contextlib.nullcontext()


_BLAS: Any = None


def check_seed(seed: Any) -> int:
    """An int seed; ``None`` draws one (items of a batch then still share their draws)."""
    if seed is None:
        return int(np.random.SeedSequence().entropy % 2**63)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed: expected an int or None, got {describe(seed)}")
    return int(seed)


def _check_positive_float(value: Any, *, name: str, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a positive number, got {describe(value)}")
    if not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(
            f"{name}: expected a {'non-negative' if allow_zero else 'positive'} number, got {value}"
        )
    return float(value)
