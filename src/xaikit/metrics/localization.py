"""Localisation: does the explanation point at the part of the input known to matter?

Against a ground-truth mask (one boolean per pixel: a planted patch, a watermark, an object
segmentation), following Arras, Osman & Samek 2022 ("CLEVR-XAI: a benchmark dataset for the
ground truth evaluation of neural network explanations", Information Fusion):

- **pointing game** (Zhang et al. 2018): is the pixel of maximal relevance inside the mask;
- **relevance mass accuracy**: the share of the positive relevance that falls inside the mask;
- **relevance rank accuracy**: with K the mask's size, the share of the K most relevant pixels
  that lie inside the mask.

Relevance per pixel is the attribution summed over channels (Arras et al. pool over channels
too). A score should be compared with what chance gives: the mask's share of the image for
relevance mass and rank (``mask.mean()``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xaikit.explanation import Explanation
from xaikit.metrics._common import as_array, check_mask
from xaikit.metrics.registry import metric


def _relevance(explanation: Any, x: Any = None) -> np.ndarray:
    """The per-pixel relevance map: channel sum for ``(C, H, W)`` attributions."""
    if isinstance(explanation, Explanation):
        if explanation.batch:
            raise ValueError(
                "explanation: expected one input's explanation, got a batch; pass e[i]"
            )
        kind = explanation.kind
        values = np.asarray(explanation.values, dtype=np.float64)
    else:
        values = as_array(explanation, name="explanation").astype(np.float64)
        kind = "image" if values.ndim in (2, 3) else "tabular"
    if kind == "image" and values.ndim == 3:
        return values.sum(axis=0)
    return values


def pointing_game(explanation: Any, mask: Any) -> bool:
    """True when the most relevant pixel lies inside ``mask`` (Zhang et al. 2018).

    Parameters
    ----------
    explanation : Explanation or array
        Attributions ``(C, H, W)``, ``(H, W)`` or ``(F,)``.
    mask : bool array of the pixel shape, or a region ``(y0, x0, y1, x1)``
        The ground truth.

    Ties for the maximum count as a hit only when every tied pixel is inside the mask (a flat
    map must not score by luck).
    """
    r = _relevance(explanation)
    gt = check_mask(mask, r.shape)
    top = r == r.max()
    return bool(gt[top].all())


def relevance_mass(explanation: Any, mask: Any) -> float:
    """Share of the positive relevance inside ``mask`` (Arras et al. 2022), in [0, 1].

    ``sum(R+ inside) / sum(R+)``; 0 when no relevance is positive.
    """
    r = _relevance(explanation)
    gt = check_mask(mask, r.shape)
    positive = np.clip(r, 0, None)
    total = positive.sum()
    return float(positive[gt].sum() / total) if total > 0 else 0.0


def relevance_rank(explanation: Any, mask: Any) -> float:
    """Share of the ``K = mask.sum()`` most relevant pixels that lie inside ``mask``.

    Arras et al. 2022's relevance rank accuracy, in [0, 1]; ties at the K-th value are broken by
    pixel order (stable sort), so a flat map scores what its first K pixels give.
    """
    r = _relevance(explanation)
    gt = check_mask(mask, r.shape)
    k = int(gt.sum())
    top = np.argsort(-r.ravel(), kind="stable")[:k]
    return float(gt.ravel()[top].sum() / k)


# As metrics, in xk.evaluate's argument order; the mask has no default (evaluate asks for it).
@metric("pointing_game", higher_is_better=True)
def _pointing_game_metric(model: Any, x: Any, explanation: Any, *, mask: Any) -> float:
    return float(pointing_game(explanation, mask))


@metric("relevance_mass", higher_is_better=True)
def _relevance_mass_metric(model: Any, x: Any, explanation: Any, *, mask: Any) -> float:
    return relevance_mass(explanation, mask)


@metric("relevance_rank", higher_is_better=True)
def _relevance_rank_metric(model: Any, x: Any, explanation: Any, *, mask: Any) -> float:
    return relevance_rank(explanation, mask)
