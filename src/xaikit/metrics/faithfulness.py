"""Faithfulness: does removing what the explanation calls relevant change the model's decision?

- **Deletion** (Petsiuk et al. 2018, "RISE", BMVC): remove pixels from the input in order of
  decreasing attribution, in equal steps, replacing them by a baseline (0 by default), and
  record the probability of the target class; a faithful explanation makes it fall fast, so
  the area under the curve is *low*.
- **Insertion** (same paper): start from a blurred copy of the input and reveal the original
  pixels in the same order; a faithful explanation makes the probability rise fast, so the
  area is *high*.
- **Pixel flipping** (Bach et al. 2015, MoRF/LeRF in Samek et al. 2017): deletion with the most
  relevant (MoRF) or least relevant (LeRF) pixels first.

A *pixel* is one spatial position: attributions are summed over channels and all channels of a
pixel are removed together. Every curve has ``steps + 1`` points (the untouched start and the
fully changed end included); its area is the trapezoid mean over the fraction of pixels changed,
``[0, 1]``. The masked inputs are built per chunk and streamed through the perturbation engine,
so a curve over a 224x224 image with one step per pixel never holds all its inputs at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from xaikit._plotting import new_figure
from xaikit._repr import HTMLRepr
from xaikit._validation import check_choice, check_positive_int, check_targets
from xaikit.attribution.perturbation import chunk_size, perturbation_scores
from xaikit.baselines import make_baseline
from xaikit.metrics._common import one_input, pixel_map
from xaikit.metrics.registry import metric
from xaikit.model import to_probabilities

ORDERS = ("morf", "lerf")


@dataclass
class Curve(HTMLRepr):
    """A deletion, insertion or pixel-flipping curve.

    Attributes
    ----------
    name : str
        ``"deletion"``, ``"insertion"``, ``"pixel_flipping"`` or ``"road"``.
    fractions : (steps + 1,) array
        Fraction of the pixels removed (deletion) or revealed (insertion) at each point, 0 to 1.
    probabilities : (steps + 1,) array
        Probability of ``target`` at each point.
    area : float
        Trapezoid area under the curve over ``fractions`` (the mean probability).
    target : int
    order : str
        ``"morf"`` (most relevant first) or ``"lerf"``.
    target_predicted : (steps + 1,) bool array
        Whether ``target`` is still the model's predicted class at each point.
    """

    name: str
    fractions: np.ndarray
    probabilities: np.ndarray
    area: float
    target: int
    order: str = "morf"
    target_predicted: np.ndarray | None = None

    def __float__(self) -> float:
        return self.area

    def plot(self, *, ax: Any = None) -> Any:
        """Draw the curve with its area shaded; return the matplotlib Figure."""
        if ax is None:
            ax = new_figure((4.5, 3.2)).add_subplot()
        ax.plot(self.fractions, self.probabilities, color="#b2182b")
        ax.fill_between(self.fractions, self.probabilities, alpha=0.25, color="#b2182b")
        verb = "revealed" if self.name == "insertion" else "removed"
        ax.set_xlabel(f"fraction of pixels {verb} ({self.order})")
        ax.set_ylabel(f"p(class {self.target})")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{self.name}: area {self.area:.3f}")
        return ax.figure


@metric("deletion", higher_is_better=False)
def deletion(
    model: Any,
    x: Any,
    explanation: Any,
    *,
    target: int | None = None,
    steps: int | None = None,
    baseline: Any = 0.0,
) -> Curve:
    """Deletion curve (Petsiuk et al. 2018): remove the most relevant pixels first.

    Parameters
    ----------
    model : nn.Module, xaikit.Model or callable
    x : array (C, H, W), (H, W) or (F,)
        One input.
    explanation : Explanation or array
        Attributions of ``x``'s shape (or ``(H, W)`` for a ``(C, H, W)`` image).
    target : int, optional
        Class whose probability is tracked; default the explanation's target (for an array,
        the predicted class).
    steps : int, optional
        Number of equal steps, 1 to the number of pixels. Default: the image side ``H`` (the
        paper removes 224 pixels per step on 224x224 images, i.e. one row's worth), or the
        number of features for a 1-D input.
    baseline : number, "mean", "blur", "noise" or array
        What a removed pixel becomes (:func:`xaikit.baselines.make_baseline`); default 0.

    Returns
    -------
    Curve
        ``area`` is low for a faithful explanation.
    """
    return _curve(model, x, explanation, "deletion", target, steps, baseline, None, "morf")


@metric("insertion", higher_is_better=True)
def insertion(
    model: Any,
    x: Any,
    explanation: Any,
    *,
    target: int | None = None,
    steps: int | None = None,
    baseline: Any = None,
    sigma: float | None = None,
) -> Curve:
    """Insertion curve (Petsiuk et al. 2018): reveal the most relevant pixels first.

    Starts from ``baseline`` (default a Gaussian blur of the image, as in the paper; 0 for a
    table row or text, which have no blur) and puts back the original pixels in order of
    decreasing attribution. Parameters as in
    :func:`deletion`; ``sigma`` is the blur's standard deviation in pixels (default the image's
    smaller side / 10, a blur that removes a digit's strokes but keeps its rough mass, like
    the paper's sigma 5 in an 11-pixel window on 224x224 images removes object detail).

    Returns
    -------
    Curve
        ``area`` is high for a faithful explanation.
    """
    return _curve(model, x, explanation, "insertion", target, steps, baseline, sigma, "morf")


@metric("lerf", higher_is_better=True, fixed={"order": "lerf"})
@metric("morf", higher_is_better=False, fixed={"order": "morf"})
def pixel_flipping(
    model: Any,
    x: Any,
    explanation: Any,
    *,
    target: int | None = None,
    order: str = "morf",
    steps: int | None = None,
    baseline: Any = 0.0,
) -> Curve:
    """Pixel flipping (Bach et al. 2015; Samek et al. 2017): deletion in MoRF or LeRF order.

    ``order="morf"`` removes the most relevant pixels first (equal to :func:`deletion`; a low
    area is faithful), ``"lerf"`` the least relevant first (a high area is faithful: the
    decision survives the removal of what the explanation calls irrelevant).
    """
    order = check_choice(order, name="order", choices=ORDERS)
    return _curve(model, x, explanation, "pixel_flipping", target, steps, baseline, None, order)


def _curve(model, x, explanation, name, target, steps, baseline, sigma, order) -> Curve:
    m, x, values, target = one_input(model, x, explanation, target)
    relevance = pixel_map(values, x)
    n_pixels = relevance.size
    if steps is None:
        steps = relevance.shape[0] if relevance.ndim == 2 else n_pixels
    steps = check_positive_int(steps, name="steps")
    if steps > n_pixels:
        raise ValueError(
            f"steps: expected at most the number of pixels ({n_pixels}), got {steps}; a step "
            "must change at least one pixel"
        )
    if baseline is None:  # insertion's default: a blur of an image, 0 for a row or text
        baseline = "blur" if relevance.ndim == 2 else 0.0
    if name == "insertion" and isinstance(baseline, str) and baseline == "blur" and sigma is None:
        sigma = min(x.shape[-2:]) / 10 if relevance.ndim == 2 else None
    base = make_baseline(x, baseline, sigma=sigma, background=False).values

    # rank[p] = position of pixel p in the order (0 = changed first); ties keep pixel order.
    key = -relevance.ravel() if order == "morf" else relevance.ravel()
    rank = np.empty(n_pixels, dtype=np.int64)
    rank[np.argsort(key, kind="stable")] = np.arange(n_pixels)
    rank = rank.reshape(relevance.shape)
    # counts[k] = pixels changed after step k: exactly equal steps when steps divides n_pixels.
    counts = (np.arange(steps + 1) * n_pixels) // steps
    inserting = name == "insertion"

    def masks() -> Iterator[np.ndarray]:
        # Keep-masks (1 = original pixel) for a chunk of steps at a time: bounded memory.
        size = chunk_size(x)
        for start in range(0, steps + 1, size):
            c = counts[start : start + size].reshape(-1, *([1] * relevance.ndim))
            keep = rank[None] < c if inserting else rank[None] >= c
            yield keep.astype(np.float32)

    scores = perturbation_scores(m, x, masks(), baseline=base)
    check_targets(target, n=1, n_classes=scores.shape[1])
    probabilities = to_probabilities(scores, output=m.output)[:, target]
    fractions = counts / n_pixels
    area = float(np.trapezoid(probabilities, fractions))
    predicted = scores.argmax(axis=1) == target
    return Curve(name, fractions, probabilities, area, target, order, predicted)
