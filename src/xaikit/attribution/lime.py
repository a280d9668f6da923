"""LIME (Ribeiro et al. 2016): a weighted linear surrogate fitted on random coalitions.

An input is cut into M components (superpixels, features, tokens). A coalition ``z`` in
{0, 1}^M keeps the components where it is 1 and replaces the others by the baseline; the model's
raw output for the target on that input is ``v(z)``. LIME draws coalitions near the input,
weights each by an exponential kernel on its distance to the all-ones coalition, and fits a
ridge regression ``v(z) ~ intercept + coef . z``: ``coef`` is the explanation.

The set function ``v`` (:class:`~xaikit.attribution.coalitions.CoalitionGame`) and the
streamed ridge regression live in :mod:`.coalitions`, shared with KernelSHAP.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xaikit._draws import block_generators
from xaikit._progress import progress_bar
from xaikit._validation import check_choice, check_count, check_number
from xaikit.attribution.coalitions import (
    RidgeMoments,
    assemble,
    check_seed,
    coalition_rows,
    games_for,
    single_threaded_blas,
)
from xaikit.attribution.perturbation import values_dtype
from xaikit.attribution.registry import Attribution, register
from xaikit.components import input_kind
from xaikit.model import Model

REFERENCE = (
    "Ribeiro, Singh & Guestrin 2016, 'Why Should I Trust You?': Explaining the Predictions of "
    "Any Classifier, KDD"
)


@register("lime", needs_gradients=False, reference=REFERENCE, scores_at_input=True)
def lime(
    model: Model,
    x: np.ndarray,
    targets: np.ndarray | None,
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
        Coalitions drawn, the input itself first (lime's ``num_samples``, 1000); they are
        drawn, scored and fitted chunk by chunk, so memory does not grow with ``samples``.
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
        ``evaluations`` (coalitions run: the distinct ones of each chunk),
        ``explained_output`` (what the model returns: coefficients of logits are not
        coefficients of probabilities).

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
    samples = check_count(samples, name="samples")
    if kernel_width is not None:
        kernel_width = check_number(kernel_width, name="kernel_width", low=0, low_open=True)
    alpha = check_number(alpha, name="alpha", low=0)
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
        # Coalitions, scores and the normal equations stream chunk by chunk: memory is one
        # chunk whatever ``samples`` is (coalitions repeated across chunks run again).
        ridge = RidgeMoments(game.m)
        score = None
        rows = coalition_rows(game.m)
        with progress_bar(samples, "LIME coalitions") as bar:
            for z in lime_coalition_chunks(game.m, samples, np.random.default_rng(seed), rows):
                y = game(z)
                score = y[0] if score is None else score
                distance = 1.0 - np.sqrt(z.sum(axis=1) / game.m)  # cosine distance to all-ones
                with single_threaded_blas():
                    ridge.add(z, y, np.sqrt(np.exp(-(distance**2) / kernel_width**2)))
                bar.advance(len(z))
        with single_threaded_blas():
            coef, intercept, r2 = ridge.solve(alpha=alpha)
        fits.append((game, coef, {"intercept": intercept, "r2": r2, "score": score}))
    info = {key: np.array([f[2][key] for f in fits]) for key in ("intercept", "r2", "score")}
    info["local_prediction"] = np.array([f[2]["intercept"] + f[1].sum() for f in fits])
    info["evaluations"] = np.array([f[0].evaluations for f in fits])
    info["explained_output"] = model.output
    return assemble(x, [(g, c) for g, c, _ in fits], info, dtype=values_dtype(model, x))


def _lime_from_training(model, x, targets, *, baseline, discretize, categorical, **fit):
    """``sampling="training"``: the paper's tabular LIME (:mod:`.lime_tabular`)."""
    from xaikit.attribution.lime_tabular import (
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
    scores = model.scores(x)  # the input is not among the drawn rows' chunks: scored alone
    targets = scores.argmax(axis=1) if targets is None else targets
    result = tabular_lime(
        model, x.astype(np.float64), targets, training=training, discretize=discretize,
        categorical=categorical, **fit,
    )  # fmt: skip
    coef = result.pop("coefficients")
    components = np.broadcast_to(np.arange(x.shape[1]), x.shape).copy()
    info = {**result, "evaluations": np.full(len(x), fit["samples"])}
    info["explained_output"] = model.output
    values = coef.astype(values_dtype(model, x))  # a copy
    return Attribution(
        values=values, components=components, component_values=coef, info=info, scores=scores
    )


def lime_coalitions(m: int, samples: int, rng: np.random.Generator) -> np.ndarray:
    """``samples`` coalitions ``(samples, m)`` of bools: all-ones first, then random ones.

    As in the paper and lime's text explainer: the number of kept components is uniform on
    ``0 .. m-1``, then which are kept is uniform given that number. (lime's image explainer
    instead keeps each component with probability 1/2, which rarely draws coalitions near the
    input.) Each row keeps the positions where a random permutation is below its drawn count
    (exactly ``k`` positions, uniformly chosen). :func:`lime_coalition_chunks` gives the same
    rows chunk by chunk.
    """
    return np.concatenate(list(lime_coalition_chunks(m, samples, rng, samples)))


def lime_coalition_chunks(m: int, samples: int, rng: np.random.Generator, rows: int):
    """:func:`lime_coalitions` as chunks of at most ``rows`` rows: the same coalitions, for any
    ``rows``, in memory of one chunk (all kept counts were drawn first, then the permutations:
    each block comes from its own positioned generator)."""
    counts, orders = block_generators(
        rng, [(samples - 1, lambda g, b: g.integers(0, m, b)), (0, None)]
    )
    for start in range(0, samples, rows):
        stop = min(samples, start + rows)
        first = start == 0  # row 0 is the input itself: all ones, no draws
        kept = counts.integers(0, m, size=stop - start - first)
        permutation = np.argsort(orders.random((len(kept), m)), axis=1)
        z = permutation < kept[:, None]
        yield np.concatenate([np.ones((1, m), dtype=bool), z]) if first else z
