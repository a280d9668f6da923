"""Infidelity (Yeh, Hsieh, Suggala, Inouye & Ravikumar 2019).

Yeh et al. 2019, "On the (in)fidelity and sensitivity of explanations" (NeurIPS), define the
infidelity of attributions ``e`` of a model output ``f`` at ``x`` for perturbations ``I`` drawn
from a distribution ``mu`` as

    INFD(e, f, x) = E_{I ~ mu} [ (I . e  -  (f(x) - f(x - I)))^2 ],

the mean squared error of the attributions as a linear predictor of what a perturbation does to
the output. Low is faithful. The paper's perturbations are Gaussian noise around ``x`` ("noisy
baseline") and the removal of random squares (``I = x`` inside a square, 0 elsewhere, so
``x - I`` zeroes the square). ``f`` is the model's raw output for the target (what the
attributions explain: logits for a classifier). The perturbed inputs of a chunk of samples
stream through the perturbation engine together.

With ``normalize=True`` the attributions are first multiplied by the scale ``beta`` that
minimises the error, ``beta = E[(I.e) d] / E[(I.e)^2]`` with ``d = f(x) - f(x - I)`` (the
paper's remark that infidelity is not scale-invariant, and Captum's ``normalize``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from xaikit._progress import progress_bar
from xaikit._validation import (
    check_count,
    check_number,
    check_positive_int,
    check_seed,
    check_targets,
    describe,
)
from xaikit.attribution.perturbation import batched, chunk_size
from xaikit.metrics._common import as_array, input_score_chunks, one_input
from xaikit.metrics.registry import metric

PERTURBATIONS = ("gaussian", "square")


@metric("infidelity", higher_is_better=False)
def infidelity(
    model: Any,
    x: Any,
    explanation: Any,
    *,
    target: int | None = None,
    perturbation: Any = "gaussian",
    samples: int = 100,
    noise: float = 0.1,
    window: int | None = None,
    normalize: bool = False,
    seed: int = 0,
) -> float:
    """Infidelity of an explanation at ``x`` (Yeh et al. 2019); low is faithful.

    Parameters
    ----------
    model : nn.Module, xaikit.Model or callable
    x : array
        One input.
    explanation : Explanation or array
        Attributions of ``x``'s shape (a ``(H, W)`` map is repeated over the channels).
    target : int, optional
        Default the explanation's target, else the predicted class.
    perturbation : {"gaussian", "square"} or array (S, *x.shape)
        ``"gaussian"``: ``I ~ N(0, noise^2)`` per element; ``"square"``: ``I = x`` inside a
        random ``window`` x ``window`` square (all channels), 0 elsewhere (images only); an
        array: these perturbations ``I`` themselves (``samples`` and ``seed`` then unused), e.g.
        to share them with another implementation.
    samples : int
        Number of perturbations drawn.
    noise : float
        Standard deviation of the Gaussian perturbation, in the input's units.
    window : int, optional
        Side of the removed square (default a quarter of the image's smaller side).
    normalize : bool
        Rescale the attributions by the error-minimising ``beta`` first.
    seed : int

    Returns
    -------
    float
        The mean over the perturbations of ``(I . e - (f(x) - f(x - I)))^2``.
    """
    m, x, values, target = one_input(model, x, explanation, target)
    x = x.astype(np.float32)
    if values.shape != x.shape:  # a (H, W) map for a (C, H, W) image: the same on every channel
        values = np.broadcast_to(values, x.shape)
    if window is not None:  # checked even when unused: a bad value is a mistake either way
        check_positive_int(window, name="window")
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize: expected True or False, got {describe(normalize)}")
    draw = _perturbations(x, perturbation, samples, noise, window, seed)
    n = len(draw) if isinstance(draw, np.ndarray) else samples
    dots: list[np.ndarray] = []

    def inputs() -> Iterator[np.ndarray]:
        # The first row is x itself, so f(x) comes from the same forward passes as f(x - I);
        # I . e is taken as each chunk is built, so no perturbation outlives its chunk.
        yield x[None]
        size = chunk_size(x)
        blocks = (
            batched(draw, size)
            if isinstance(draw, np.ndarray)
            else (draw(min(size, n - s)) for s in range(0, n, size))
        )
        for block in blocks:
            dots.append(_dot(block, values))
            yield x[None] - block

    errors = _Errors()
    f_x = None
    with progress_bar(n, "infidelity") as bar:
        for scores in input_score_chunks(m, x, inputs()):
            if f_x is None:  # the first chunk is x alone
                check_targets(target, n=1, n_classes=scores.shape[1])
                f_x = float(scores[0, target])
                continue
            # the chunk's I . e, in float64 as the differences
            errors.add(dots.pop(0), f_x - scores[:, target].astype(np.float64))
            bar.advance(len(scores))
    return errors.mean(normalize=normalize)


class _Errors:
    """Mean squared error of ``I . e`` against the output differences, chunk by chunk.

    Up to ``_KEPT`` samples the values are kept and the mean is computed as on one array;
    beyond, running sums give it (the rescaled error expanded: ``beta^2 S_dd - 2 beta S_dy +
    S_yy``), so memory is bounded whatever ``samples`` is.
    """

    def __init__(self) -> None:
        self.kept: list[tuple[np.ndarray, np.ndarray]] | None = []
        self.n, self.dd, self.dy, self.yy, self.err = 0, 0.0, 0.0, 0.0, 0.0

    def add(self, dots: np.ndarray, difference: np.ndarray) -> None:
        self.n += len(dots)
        self.dd += float(np.add.reduce(dots**2))
        self.dy += float(np.add.reduce(dots * difference))
        self.yy += float(np.add.reduce(difference**2))
        self.err += float(np.add.reduce((dots - difference) ** 2))
        if self.kept is not None:
            self.kept.append((dots, difference))
            if self.n > _KEPT:
                self.kept = None

    def mean(self, *, normalize: bool) -> float:
        if self.kept is not None:  # all values at hand: as on one array (exact rounding)
            drawn = np.concatenate([d for d, _ in self.kept])
            difference = np.concatenate([y for _, y in self.kept])
            if normalize:
                denominator = float((drawn**2).mean())
                beta = float((drawn * difference).mean()) / denominator if denominator > 0 else 0.0
                drawn = beta * drawn
            return float(((drawn - difference) ** 2).mean())
        if not normalize:
            return self.err / self.n
        beta = self.dy / self.dd if self.dd > 0 else 0.0
        return max(0.0, beta**2 * self.dd - 2 * beta * self.dy + self.yy) / self.n


# Samples whose values are kept for the exact mean (16 bytes each); past them, running sums.
_KEPT = 2**20


def _dot(block: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``I . e`` for each perturbation of a block, in float64."""
    flat = block.reshape(len(block), -1).astype(np.float64)
    return flat @ values.reshape(-1).astype(np.float64)


def _perturbations(x, perturbation, samples, noise, window, seed):
    """An array of given perturbations, or a function ``draw(b) -> (b, *x.shape)`` (seeded)."""
    if not isinstance(perturbation, str):
        arr = as_array(perturbation, name="perturbation").astype(np.float32)
        if arr.ndim != x.ndim + 1 or arr.shape[1:] != x.shape or len(arr) == 0:
            raise ValueError(
                f"perturbation: expected an array (S, {', '.join(map(str, x.shape))}) of "
                f"perturbations, got shape {arr.shape}"
            )
        return arr
    if perturbation not in PERTURBATIONS:
        raise ValueError(
            f"perturbation: expected one of {PERTURBATIONS} or an array, got {perturbation!r}"
        )
    check_count(samples, name="samples")
    rng = np.random.default_rng(check_seed(seed))
    if perturbation == "gaussian":
        noise = check_number(noise, name="noise", low=0, low_open=True)
        return lambda b: rng.normal(0.0, noise, size=(b, *x.shape)).astype(np.float32)
    if x.ndim not in (2, 3):
        raise ValueError(
            f"perturbation: 'square' needs an image (C, H, W) or (H, W), got {x.shape}"
        )
    h, w = x.shape[-2:]
    side = max(1, min(h, w) // 4) if window is None else check_positive_int(window, name="window")
    if side > min(h, w):
        raise ValueError(
            f"window: expected at most the image's smaller side {min(h, w)}, got {side}"
        )

    def draw(b: int) -> np.ndarray:
        tops = rng.integers(0, h - side + 1, size=b)
        lefts = rng.integers(0, w - side + 1, size=b)
        rows = np.arange(h)[None, :, None]
        cols = np.arange(w)[None, None, :]
        inside = (
            (rows >= tops[:, None, None])
            & (rows < tops[:, None, None] + side)
            & (cols >= lefts[:, None, None])
            & (cols < lefts[:, None, None] + side)
        )
        if x.ndim == 3:
            inside = inside[:, None]
        return (inside * x[None]).astype(np.float32)

    return draw
