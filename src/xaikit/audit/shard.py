"""One shard's work, the same on the driver and in a Ray actor: explain, pool, mark background.

Kept apart from the runner (``run.py``) so that the Ray actors (``_ray.py``) import this
module only, and no import goes both ways.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xaikit.attribution.api import explain
from xaikit.model import Model


def explain_shard(
    model: Model,
    x: np.ndarray,
    targets: np.ndarray | None,
    *,
    method: str,
    params: dict[str, Any],
    factor: int,
) -> dict[str, np.ndarray]:
    """Explain one shard and pool its maps: the work a local loop or a Ray actor does per shard."""
    e = explain(model, x, method=method, target=targets, batch=True, **params)
    values = np.asarray(e.values, dtype=np.float32)
    if values.ndim == 4:  # (N, C, H, W): relevance of a pixel is the sum over its channels
        values = values.sum(axis=1)
    return {
        "maps": pool(values, factor, how="sum"),
        "background": pooled_background(x, factor),
        "background_rule": np.array(BACKGROUND_RULE),
        "targets": np.asarray(e.target, dtype=np.int64),
        "predictions": np.asarray(e.prediction).argmax(axis=1).astype(np.int64),
    }


def pool(maps: np.ndarray, factor: int, *, how: str) -> np.ndarray:
    """Pool (N, H, W) maps over ``factor`` x ``factor`` cells (edges padded with zeros)."""
    if factor == 1:
        return np.ascontiguousarray(maps, dtype=np.float32)
    n, h, w = maps.shape
    hp, wp = -(-h // factor) * factor, -(-w // factor) * factor
    padded = np.zeros((n, hp, wp), dtype=np.float32)
    padded[:, :h, :w] = maps
    blocks = padded.reshape(n, hp // factor, factor, wp // factor, factor)
    summed = blocks.sum(axis=(2, 4))
    if how == "sum":
        return summed
    counts = np.zeros((hp, wp), dtype=np.float32)
    counts[:h, :w] = 1
    return summed / counts.reshape(hp // factor, factor, wp // factor, factor).sum(axis=(1, 3))


#: Pixels within this share of the image's longer side (at least one pixel) of the object
#: count as its edge, not as background. Relevance maps spill a pixel or two around thin
#: strokes (a small ResNet's Integrated Gradients put 15% of a "1"'s relevance in the ring
#: of pixels next to it, against 4% for other digits), which is no shortcut.
EDGE = 1 / 28
#: ... where the object and its edge cover at most this share of the image (MNIST digits
#: and their edge: 10-46%).
MAX_NEAR = 0.6
#: Names the background rule in every shard, so shards written under another rule get their
#: background recomputed from the items (the maps stand) instead of mixing two rules.
BACKGROUND_RULE = "border colour, half the largest difference, edge 1/28 up to 0.6"


def pooled_background(x: np.ndarray, factor: int) -> np.ndarray:
    """The share of background pixels (:func:`background_mask`) per pooled cell."""
    return pool(background_mask(x).astype(np.float32), factor, how="mean")


def background_mask(x: np.ndarray) -> np.ndarray:
    """(N, H, W) True where a pixel is background: close to the colour of the image's border,
    and more than :data:`EDGE` of the image away from the object (unless the object and that
    edge would cover more than :data:`MAX_NEAR` of the image).

    The object is what differs from the border by more than half of the image's largest
    difference; this suits plain or faint backgrounds (MNIST, PNG cut-outs on a
    transparent background), not cluttered photographs.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 3:
        x = x[:, None]
    ring = np.concatenate(
        [x[:, :, 0, :], x[:, :, -1, :], x[:, :, 1:-1, 0], x[:, :, 1:-1, -1]], axis=2
    )
    border = np.median(ring, axis=2)[:, :, None, None]
    deviation = np.abs(x - border).max(axis=1)
    largest = deviation.reshape(len(x), -1).max(axis=1)[:, None, None]
    on_object = deviation > 0.5 * largest
    near = _grown(on_object, max(1, round(EDGE * max(x.shape[-2:]))))
    # On a cluttered image every speck would get an edge and little background would remain:
    # there the object alone is left out, as on images that have no edge to leave out.
    cluttered = near.reshape(len(x), -1).mean(axis=1) > MAX_NEAR
    near[cluttered] = on_object[cluttered]
    return ~near


def _grown(mask: np.ndarray, by: int) -> np.ndarray:
    """(N, H, W) ``mask`` grown by ``by`` pixels each way (a square neighbourhood)."""
    out = mask.copy()
    for axis in (1, 2):  # separable: rows, then columns
        grown = out.copy()
        n = out.shape[axis]
        for shift in range(1, min(by, n - 1) + 1):
            ahead = [slice(None)] * 3
            behind = [slice(None)] * 3
            ahead[axis], behind[axis] = slice(shift, None), slice(None, n - shift)
            grown[tuple(ahead)] |= out[tuple(behind)]
            grown[tuple(behind)] |= out[tuple(ahead)]
        out = grown
    return out
