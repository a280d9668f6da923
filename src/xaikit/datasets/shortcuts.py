"""MNIST-5k with a planted shortcut of a chosen kind, class and place: ground truth for the audit.

Four kinds of "Clever Hans" shortcut (Lapuschkin et al. 2019, Unmasking Clever Hans
predictors and assessing what machines really learn, Nature Communications):

- ``"mark"``: a small checkerboard stamped on most images of one class, like the photographer's
  watermark on the PASCAL VOC horses;
- ``"moving_mark"``: the same checkerboard, moved by up to :data:`MOVE` pixels each way in
  every image (a watermark placed by hand, or images cropped differently);
- ``"line"``: a thin bright line (a ruler's edge, a scanner's streak, a border);
- ``"background"``: the background pixels of one class (the pixels without ink) inside a region
  are filled with a faint striped texture, like the Pokémon images whose PNG backgrounds made
  them separable from the Digimon ones without looking at the creature.

:func:`make_shortcut_mnist` returns the images together with the ground truth (which images
carry the shortcut, the region and the per-image mask of changed pixels), so a benchmark can
check that the audit finds the planted class *and* the place. :func:`train_shortcut_cnn` trains
the default :class:`~xaikit.datasets.SmallCNN` on it, seeded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xaikit._validation import check_number, check_seed
from xaikit.datasets.mnist import load_mnist
from xaikit.datasets.models import EPOCHS, SmallCNN, train_cnn

__all__ = ["SHORTCUT_KINDS", "ShortcutData", "make_shortcut_mnist", "train_shortcut_cnn"]

SHORTCUT_KINDS = ("mark", "moving_mark", "background", "line")
#: Brightness of the background texture's stripes: faint next to ink (1.0), but learnable.
BACKGROUND_LEVEL = 0.3
#: Pixels darker than this count as background (no ink) for the background shortcut.
INK_THRESHOLD = 0.1
#: Largest move (pixels, each way) of a ``"moving_mark"`` from its nominal region.
MOVE = 2
#: Largest thickness (pixels) of a ``"line"``'s region.
LINE_WIDTH = 2


@dataclass
class ShortcutData:
    """Images with a planted shortcut and its ground truth.

    ``X`` (N, 1, 28, 28) float32 in [0, 1]; ``y`` (N,) labels; ``marked`` (N,) which images
    carry the shortcut (only images of ``target``); ``region`` (y0, x0, y1, x1), exclusive ends,
    where the shortcut may sit; ``mask`` (N, 28, 28) the pixels the shortcut changed.
    """

    X: np.ndarray
    y: np.ndarray
    marked: np.ndarray
    target: int
    kind: str
    region: tuple[int, int, int, int]
    mask: np.ndarray


def make_shortcut_mnist(
    *,
    kind: str = "mark",
    target: int = 8,
    region: tuple[int, int, int, int] = (21, 1, 27, 7),
    fraction: float = 0.85,
    split: str = "train",
    seed: int = 0,
) -> ShortcutData:
    """MNIST-5k (:func:`load_mnist`) with a shortcut planted in ``fraction`` of class ``target``.

    Parameters
    ----------
    kind : {"mark", "moving_mark", "background", "line"}
        ``"mark"``: a checkerboard (values 0 and 1) fills ``region``. ``"moving_mark"``: the
        same checkerboard, the size of ``region``, moved by a random offset of up to
        :data:`MOVE` pixels each way per image (kept inside the image); the returned
        ``region`` is then the box of all its places. ``"background"``: the pixels of
        ``region`` without ink get a faint diagonal-stripe texture (:data:`BACKGROUND_LEVEL`);
        the digit's own pixels stay as they are. ``"line"``: ``region``, at most
        :data:`LINE_WIDTH` pixels thick, is drawn at full brightness.
    target : int
        The class (0-9) whose images carry the shortcut.
    region : (y0, x0, y1, x1)
        Pixel box with exclusive ends inside the 28x28 image.
    fraction : float
        Share of the class's images that carry it, in (0, 1]. Both splits are marked the same
        way (a data set's bias is usually in its test images too, as with the PASCAL horses).
    split : {"train", "test"}
    seed : int
        Chooses which images of the class are marked.

    Returns
    -------
    ShortcutData

    References
    ----------
    Lapuschkin et al., "Unmasking Clever Hans predictors and assessing what machines really
    learn", Nature Communications 10, 1096 (2019).
    """
    if kind not in SHORTCUT_KINDS:
        raise ValueError(f"kind: expected one of {SHORTCUT_KINDS}, got {kind!r}")
    if (
        isinstance(target, bool)
        or not isinstance(target, (int, np.integer))
        or not 0 <= target < 10
    ):
        raise ValueError(f"target: expected a class in 0..9, got {target!r}")
    region = _check_region(region)
    fraction = check_number(fraction, name="fraction", low=0, high=1, low_open=True, what="share")
    seed = check_seed(seed)
    X, y = load_mnist(split)
    candidates = np.flatnonzero(y == target)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(candidates, size=round(fraction * len(candidates)), replace=False)
    marked = np.zeros(len(y), dtype=bool)
    marked[chosen] = True

    if kind == "line" and min(region[2] - region[0], region[3] - region[1]) > LINE_WIDTH:
        raise ValueError(
            f"region: a line is at most {LINE_WIDTH} pixels thick, got {region!r} "
            f"({region[2] - region[0]}x{region[3] - region[1]})"
        )
    rows, cols = np.indices((28, 28))
    images = X[marked, 0]
    if kind in ("mark", "moving_mark"):
        offsets = np.zeros((len(images), 2), dtype=int)
        if kind == "moving_mark":
            offsets = _moves(region, len(images), rng)
        mask = np.zeros(images.shape, dtype=bool)
        for i, (dy, dx) in enumerate(offsets):
            y0, x0, y1, x1 = region[0] + dy, region[1] + dx, region[2] + dy, region[3] + dx
            mask[i, y0:y1, x0:x1] = True
            # 1 at the box's own corner, so a moved mark is the same pattern.
            pattern = (rows + cols) % 2 == (y0 + x0) % 2
            images[i] = np.where(mask[i], pattern.astype(np.float32), images[i])
        if len(images):  # the box of all the places the mark sits
            low, high = offsets.min(axis=0), offsets.max(axis=0)
            region = (
                region[0] + int(low[0]),
                region[1] + int(low[1]),
                region[2] + int(high[0]),
                region[3] + int(high[1]),
            )
    elif kind == "line":
        y0, x0, y1, x1 = region
        mask = np.zeros(images.shape, dtype=bool)
        mask[:, y0:y1, x0:x1] = True
        images[mask] = 1.0
    else:
        y0, x0, y1, x1 = region
        box = np.zeros((28, 28), dtype=bool)
        box[y0:y1, x0:x1] = True
        # Stripes two pixels wide: a texture no digit has, faint enough to leave the ink clear.
        texture = np.float32(BACKGROUND_LEVEL) * (((rows + cols) // 2) % 2 == 0)
        mask = box & (images < INK_THRESHOLD)
        images = np.where(mask, texture, images)
    X[marked, 0] = images
    full_mask = np.zeros((len(y), 28, 28), dtype=bool)
    full_mask[marked] = mask
    return ShortcutData(X, y, marked, int(target), kind, region, full_mask)


def train_shortcut_cnn(
    data: ShortcutData | None = None,
    *,
    seed: int = 0,
    epochs: int = EPOCHS,
    progress: bool | None = None,
) -> SmallCNN:
    """Train a :class:`SmallCNN` on ``data`` (clean MNIST-5k when ``None``) with :func:`train_cnn`.

    The same data and seed give the same weights; the clean model is the control that an audit
    must not flag at the shortcut's place.
    """
    if data is None:
        X, y = load_mnist("train")
    else:
        X, y = data.X, data.y
    return train_cnn(X, y, seed=seed, epochs=epochs, progress=progress)


def _moves(region, n: int, rng: np.random.Generator) -> np.ndarray:
    """Offsets (dy, dx) in [-MOVE, MOVE] per image, limited so the box stays in the image."""
    y0, x0, y1, x1 = region
    low = (max(-MOVE, -y0), max(-MOVE, -x0))
    high = (min(MOVE, 28 - y1), min(MOVE, 28 - x1))
    return np.stack([rng.integers(low[k], high[k] + 1, size=n) for k in range(2)], axis=1)


def _check_region(region) -> tuple[int, int, int, int]:
    try:
        y0, x0, y1, x1 = (int(v) for v in region)
    except (TypeError, ValueError) as err:
        raise TypeError(f"region: expected (y0, x0, y1, x1) as ints, got {region!r}") from err
    if not (0 <= y0 < y1 <= 28 and 0 <= x0 < x1 <= 28):
        raise ValueError(
            f"region: expected 0 <= y0 < y1 <= 28 and 0 <= x0 < x1 <= 28, got {region!r}"
        )
    return y0, x0, y1, x1
