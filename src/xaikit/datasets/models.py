"""A small CNN for MNIST-5k, its deterministic training, and cached default models.

:func:`load_default_cnn` trains a :class:`SmallCNN` on MNIST-5k (clean or with the planted
watermark) the first time it is asked for, and keeps the weights in the user's cache directory.
The cache file's name holds a hash of everything that decides the weights (the code below, the
training data, the seed, the hyper-parameters and the torch version), so a change to any of them
trains a new model instead of loading a stale one.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xaikit._cache import default_cache_dir, load_weights, save_weights
from xaikit._progress import progress_bar
from xaikit._validation import check_count, check_number, check_positive_int, check_seed
from xaikit.datasets.mnist import load_mnist, load_watermark_mnist

__all__ = ["SmallCNN", "default_cache_dir", "load_default_cnn", "train_classifier", "train_cnn"]

#: Hyper-parameters of the default models (:func:`load_default_cnn`).
EPOCHS = 12
BATCH_SIZE = 64
LR = 2e-3
#: Largest random shift (pixels) of the training augmentation.
MAX_SHIFT = 2

_KINDS = ("clean", "watermark")


class SmallCNN(nn.Module):
    """A small convolutional network for 1×28×28 images with 10 classes.

    Layers (their names are the layer paths to give to xaikit)::

        conv1 (1→16, 3×3) → bn1 → relu1 → pool1 (28→14)
        conv2 (16→32, 3×3) → relu2 → pool2 (14→7)
        flatten → fc1 (1568→64) → relu3 → fc2 (64→10)

    Every ReLU is its own (not in-place) module so that hooks on it see its input and output.
    The output is raw logits of shape (N, 10).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, kernel_size=3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(32 * 7 * 7, 64)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.bn1(self.conv1(x))))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.fc2(self.relu3(self.fc1(self.flatten(x))))


def _random_shift(x: torch.Tensor, generator: torch.Generator, max_shift: int) -> torch.Tensor:
    """Shift each image by its own random offset in [-max_shift, max_shift] pixels, zero-filled."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift, max_shift, max_shift, max_shift))
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator).tolist()
    return torch.stack(
        [padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets)]
    )


def _check_training_data(X: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    X = np.asarray(X)
    y = np.asarray(y)
    if X.ndim != 4 or X.shape[1:] != (1, 28, 28):
        raise ValueError(f"X must have shape (N, 1, 28, 28), got {X.shape}")
    if y.shape != (len(X),):
        raise ValueError(f"y must have shape ({len(X)},) to match X, got {y.shape}")
    if len(X) == 0:
        raise ValueError("X must hold at least one image, got 0")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() > 9:
        raise ValueError(
            f"y must hold integer labels in 0..9, got {y.dtype} in [{y.min()}, {y.max()}]"
        )
    # Copies: the caller's arrays may be read-only, which torch.from_numpy warns about.
    return torch.from_numpy(np.array(X, dtype=np.float32)), torch.from_numpy(y.astype(np.int64))


def train_cnn(
    X: np.ndarray,
    y: np.ndarray,
    *,
    seed: int = 0,
    epochs: int = EPOCHS,
    batch_size: int = BATCH_SIZE,
    lr: float = LR,
    progress: bool | None = None,
) -> SmallCNN:
    """Train a :class:`SmallCNN` deterministically (:func:`train_classifier` with ``SmallCNN``).

    Parameters
    ----------
    X : np.ndarray, shape (N, 1, 28, 28)
        Training images in [0, 1].
    y : np.ndarray of int, shape (N,)
        Labels 0-9.
    seed, epochs, batch_size, lr, progress
        As in :func:`train_classifier`.

    Returns
    -------
    SmallCNN
        The trained model in eval mode, on the CPU.
    """
    return train_classifier(
        SmallCNN,
        X,
        y,
        seed=seed,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        progress=progress,
    )


def train_classifier(
    build: Callable[[], nn.Module],
    X: np.ndarray,
    y: np.ndarray,
    *,
    seed: int = 0,
    epochs: int = EPOCHS,
    batch_size: int = BATCH_SIZE,
    lr: float = LR,
    progress: bool | None = None,
) -> nn.Module:
    """Train the network ``build()`` makes on 1x28x28 images with 10 classes, deterministically.

    Adam with a one-cycle learning-rate schedule, cross-entropy loss, and random shifts of up to
    :data:`MAX_SHIFT` pixels as augmentation. The same data, seed and hyper-parameters give
    bit-identical weights on the same machine and torch version. The global random state of
    torch and NumPy and the deterministic-algorithms setting are left as they were.

    Parameters
    ----------
    build : callable
        Makes the untrained network (called after seeding, so its initial weights follow
        ``seed``); its output must be logits of shape (N, 10).
    X : np.ndarray, shape (N, 1, 28, 28)
        Training images in [0, 1].
    y : np.ndarray of int, shape (N,)
        Labels 0-9.
    seed : int
        Seeds the initial weights, the shuffling and the augmentation.
    epochs : int
        Passes over the training data.
    batch_size : int
        Images per optimisation step.
    lr : float
        Peak learning rate of the one-cycle schedule.
    progress : bool, optional
        Show a progress bar over the epochs; ``None`` follows :func:`xaikit.set_progress`.

    Returns
    -------
    nn.Module
        The trained model in eval mode, on the CPU.
    """
    if isinstance(build, nn.Module) or not callable(build):
        # A network itself would be trained in place and its weights not follow ``seed``.
        raise TypeError(
            "build: expected a callable that makes a new network (such as the class "
            f"SmallCNN), got {type(build).__name__}"
        )
    X_t, y_t = _check_training_data(X, y)
    epochs = check_count(epochs, name="epochs")
    batch_size = check_positive_int(batch_size, name="batch_size")
    lr = check_number(lr, name="lr", low=0, low_open=True)
    seed = check_seed(seed, allow_none=False)
    steps_per_epoch = -(-len(X_t) // batch_size)
    generator = torch.Generator().manual_seed(seed)

    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    # fork_rng: weight initialisation draws from torch's global generator; seed it without
    # disturbing the caller's random stream.
    name = getattr(build, "__name__", type(build).__name__)
    bar = progress_bar(epochs, f"training {name}", enabled=progress)
    with torch.random.fork_rng(devices=[]), bar as epochs_done:
        torch.use_deterministic_algorithms(True)
        try:
            torch.manual_seed(seed)
            model = build()
            if not isinstance(model, nn.Module):
                raise TypeError(f"build: expected it to return an nn.Module, got {model!r}")
            optimizer = torch.optim.Adam(model.parameters(), lr=lr)
            schedule = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch
            )
            model.train()
            for _ in range(epochs):
                order = torch.randperm(len(X_t), generator=generator)
                for start in range(0, len(X_t), batch_size):
                    idx = order[start : start + batch_size]
                    xb = _random_shift(X_t[idx], generator, MAX_SHIFT)
                    loss = F.cross_entropy(model(xb), y_t[idx])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    schedule.step()
                epochs_done.advance()
        finally:
            torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    return model.eval()


def _cache_key(X: np.ndarray, y: np.ndarray, seed: int) -> str:
    """Hash of everything that decides the trained weights."""
    h = hashlib.sha256()
    for obj in _TRAINING_CODE:
        h.update(inspect.getsource(obj).encode())
    h.update(hashlib.sha256(np.ascontiguousarray(X)).digest())
    h.update(hashlib.sha256(np.ascontiguousarray(y)).digest())
    h.update(repr((seed, EPOCHS, BATCH_SIZE, LR, MAX_SHIFT)).encode())
    h.update(".".join(torch.__version__.split(".")[:2]).encode())
    return h.hexdigest()[:16]


def load_default_cnn(
    kind: str = "clean",
    *,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
) -> SmallCNN:
    """Return the default MNIST-5k CNN, training it once and caching its weights.

    Parameters
    ----------
    kind : {"clean", "watermark"}
        ``"clean"``: trained on ``load_mnist("train")``. ``"watermark"``: trained on
        ``load_watermark_mnist("train")``, so it learns the planted shortcut.
    seed : int
        Seed of :func:`train_cnn`.
    cache_dir : path-like, optional
        Where the weights are kept; default :func:`default_cache_dir`.
    progress : bool, optional
        Show a progress bar while training; ``None`` follows :func:`xaikit.set_progress`.

    Returns
    -------
    SmallCNN
        A fresh model in eval mode on the CPU; changing it does not change the cache.

    Notes
    -----
    A cache file that cannot be read is ignored with a warning and overwritten by a newly
    trained model. Training takes some seconds on a laptop CPU.
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
    if kind == "clean":
        X, y = load_mnist("train")
    else:
        X, y, _ = load_watermark_mnist("train")

    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = directory / f"smallcnn-{kind}-seed{seed}-{_cache_key(X, y, seed)}.pt"
    model = SmallCNN()
    if load_weights(model, path, what="model"):
        return model.eval()

    model = train_cnn(
        X, y, seed=seed, epochs=EPOCHS, batch_size=BATCH_SIZE, lr=LR, progress=progress
    )
    save_weights(model, path, what="model")
    return model


# The code whose source goes into the cache key. Bound here, not looked up at call time, so the
# key describes this module as written.
_TRAINING_CODE = (SmallCNN, _random_shift, train_cnn, train_classifier)
