"""Coalition games: what LIME and KernelSHAP share.

An input is cut into M components (superpixels, features, tokens). A coalition ``z`` in
{0, 1}^M keeps the components where it is 1 and replaces the others by the baseline; the
model's output for the target on that input is ``v(z)``, a :class:`CoalitionGame`. LIME and
KernelSHAP explain the same ``v`` and differ only in how they draw, weight and fit coalitions;
this module holds ``v``, the streamed weighted ridge regression (:class:`RidgeMoments`) and the
assembly of per-item fits, so that neither method module imports the other.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from xaikit._validation import check_seed as _check_seed
from xaikit._validation import describe
from xaikit.attribution.perturbation import batched, chunk_size, perturbation_scores, rechunk
from xaikit.attribution.registry import Attribution
from xaikit.baselines import make_baseline
from xaikit.components import component_shape, input_kind, make_components, n_components
from xaikit.model import Model

# Coalition elements per chunk (float64 in the regression): bounds memory whatever samples and
# M are.
_CHUNK_ELEMENTS = 2**21


def coalition_rows(m: int) -> int:
    """Coalitions per chunk: about ``_CHUNK_ELEMENTS`` elements (float64 in the regression)."""
    return max(1, _CHUNK_ELEMENTS // m)


class RidgeMoments:
    """Weighted ridge regression from sufficient statistics accumulated chunk by chunk.

    ``add(z, y, w)`` adds rows; :meth:`solve` gives what :func:`weighted_ridge` gives on all
    rows at once (to float rounding), while holding only ``(m, m)`` numbers. Sums are taken
    around the first chunk's weighted means, so they stay centred (no cancellation when the
    outputs sit far from 0).
    """

    def __init__(self, m: int) -> None:
        self.shift: tuple[np.ndarray, float] | None = None
        self.total = 0.0
        self.sx, self.sy = np.zeros(m), 0.0
        self.sxx, self.sxy, self.syy = np.zeros((m, m)), np.zeros(m), 0.0

    def add(self, z: np.ndarray, y: np.ndarray, weights: np.ndarray) -> None:
        X = z.astype(np.float64)
        total = weights.sum()
        if self.shift is None:
            scale = total if total > 0 else 1.0
            self.shift = (weights @ X / scale, float(weights @ y / scale))
        Xc, yc = X - self.shift[0], y - self.shift[1]
        wXc = weights[:, None] * Xc
        self.total += total
        self.sx += weights @ Xc
        self.sy += float(weights @ yc)
        self.sxx += Xc.T @ wXc
        self.sxy += wXc.T @ yc
        self.syy += float(weights @ yc**2)

    def solve(self, *, alpha: float) -> tuple[np.ndarray, float, float]:
        """``(coef, intercept, weighted R²)``, the intercept unpenalised (scikit-learn's Ridge)."""
        total = self.total if self.total > 0 else 1.0
        dx, dy = self.sx / total, self.sy / total  # the weighted means, relative to the shift
        gram = self.sxx - total * np.outer(dx, dx)
        rhs = self.sxy - total * dx * dy
        ss_tot = self.syy - total * dy**2
        penalised = gram + alpha * np.eye(len(gram))
        try:
            coef = np.linalg.solve(penalised, rhs)
        except np.linalg.LinAlgError:  # alpha = 0 with too few distinct coalitions
            coef = np.linalg.lstsq(penalised, rhs, rcond=None)[0]
        intercept = float(self.shift[1] + dy - (self.shift[0] + dx) @ coef)
        ss_res = max(0.0, float(ss_tot - 2 * coef @ rhs + coef @ gram @ coef))
        # scikit-learn's convention for a constant target: perfect fit 1, otherwise 0
        r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else float(ss_res <= 1e-12)
        return coef, intercept, min(1.0, r2)


def weighted_ridge(z: np.ndarray, y: np.ndarray, weights: np.ndarray, *, alpha: float):
    """Weighted ridge with an unpenalised intercept, in closed form (scikit-learn's ``Ridge``).

    Minimises ``sum_i w_i (y_i - b - z_i . c)^2 + alpha |c|^2``: centre by the weighted means,
    solve the normal equations. Returns ``(coef, intercept, weighted R²)``.
    """
    moments = RidgeMoments(z.shape[1])
    moments.add(z, y, weights)
    return moments.solve(alpha=alpha)


# ---------------------------------------------------------------------- shared with kernel_shap


class CoalitionGame:
    """One input as a cooperative game: ``v(z)``, the target score with components ``z`` kept.

    Removed components take the baseline's values, or, with background rows, ``v(z)`` is the
    mean score over the rows (the expectation KernelSHAP defines removal by).

    The all-ones coalition is the input itself: its scores for every class are kept as
    ``input_scores`` when it is first run, so that :func:`~xaikit.explain` needs no forward pass
    of its own. With ``target=None`` the target is the class the input scores highest, read
    there; LIME and KernelSHAP run that coalition in their first chunk.
    """

    def __init__(
        self, model: Model, x: np.ndarray, target: int | None, *, components, baseline, seed
    ):
        kind = input_kind(x)
        self.x, self.map = x, components
        self.target = None if target is None else int(target)
        self.input_scores: np.ndarray | None = None
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
        keys = row_keys(np.packbits(z, axis=1))
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
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
        self._note_input(masks, scores)
        return scores[:, self.target].astype(np.float64)[order[inverse.reshape(-1)]]

    def _note_input(self, masks: np.ndarray, scores: np.ndarray) -> None:
        """Keep the input's own scores (its all-ones coalition) and resolve a missing target."""
        if self.input_scores is None:
            full = np.flatnonzero(np.all(masks, axis=1))
            if len(full):
                self.input_scores = scores[full[0]]
        if self.target is None:
            if self.input_scores is None:  # a caller's mistake, never a user's
                raise RuntimeError("the all-ones coalition must run first to resolve the target")
            self.target = int(np.argmax(self.input_scores))

    def stream(self, coalitions: Iterable[np.ndarray]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(z, v(z))`` chunk by chunk for coalitions given in chunks, each run once, in order.

        For coalitions known to be distinct (no deduplication, which would hold them all):
        they are regrouped and batched as :meth:`__call__` batches its distinct coalitions,
        so the model sees the same batches, and memory is one chunk.
        """
        # at least 2: KernelSHAP's first two coalitions, the empty and the all-ones one, must
        # run together (the input's scores and the target are read there)
        size = max(2, chunk_size(self.x, n_background=self.rows))
        for chunk in rechunk(coalitions, size):
            scores = perturbation_scores(
                self.model,
                self.x,
                [chunk.astype(np.float32)],
                baseline=self.baseline,
                components=self.map,
                background=self.background,
            )
            self.evaluations += len(chunk)
            self._note_input(chunk, scores)
            yield chunk, scores[:, self.target].astype(np.float64)


def row_keys(packed: np.ndarray) -> np.ndarray:
    """One sortable key per row of packed bits ``(n, bytes)``, equal exactly for equal rows.

    ``np.unique(keys)`` finds the same distinct rows, first occurrences and inverse as
    ``np.unique(packed, axis=0)`` (only the order of the distinct values may differ), several
    times faster: rows of up to 8 bytes (64 components) become one integer each, longer ones one
    opaque bytes value, instead of a structured view compared field by field.
    """
    packed = np.ascontiguousarray(packed, dtype=np.uint8)
    n, width = packed.shape
    if width <= 8:
        padded = np.zeros((n, 8), dtype=np.uint8)
        padded[:, :width] = packed
        return padded.view(np.uint64)[:, 0]
    return packed.view(np.dtype((np.void, width)))[:, 0]


def games_for(model, x, targets, *, components, baseline, seed) -> list[CoalitionGame]:
    """One :class:`CoalitionGame` per item of the batch ``x`` (``targets=None``: each item's
    predicted class, read from its all-ones coalition).

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
    targets = [None] * len(x) if targets is None else targets
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


def assemble(
    x: np.ndarray, fits: list[tuple[CoalitionGame, np.ndarray]], info, *, dtype: type
) -> Attribution:
    """Paint each item's component values over its map (maps in ``dtype``, as every map of
    this model: perturbation.values_dtype); pad ``component_values`` (float64) to max M. The
    scores at the inputs come from the games' all-ones coalitions."""
    width = max(g.m for g, _ in fits)
    values = np.zeros(x.shape, dtype=dtype)
    table = np.zeros((len(fits), width))
    for i, (game, coef) in enumerate(fits):
        values[i] = np.broadcast_to(coef[game.map], x.shape[1:])
        table[i, : game.m] = coef
    maps = np.stack([g.map for g, _ in fits])
    scores = np.stack([g.input_scores for g, _ in fits])
    return Attribution(
        values=values, components=maps, component_values=table, info=info, scores=scores
    )


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
    seed = _check_seed(seed)
    return int(np.random.SeedSequence().entropy % 2**63) if seed is None else seed
