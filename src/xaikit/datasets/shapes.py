"""Shapes: a procedurally drawn data set whose relevant region is known by construction.

Each 32x32 grey image holds one **class shape** (a filled circle, square, triangle or plus) and
one to three **distractors** (a ring, a square frame or a diagonal bar) on a faint noisy
background, none overlapping. The class is the kind of the class shape; the distractors are
drawn independently of the class, so they carry no information about it and a model that
predicts well must look at the class shape. Its mask is the ground truth for localisation
metrics (pointing game, relevance mass and rank accuracy, Arras et al. 2022), in the spirit of
CLEVR-XAI's single-object masks but small enough to draw and train on a CPU in seconds.

:func:`load_shapes_cnn` trains a small CNN on :func:`load_shapes` ``("train")`` once and keeps
the weights in xaikit's cache (``xaikit._cache``), under a key that hashes the drawing and
training code, the seed, the hyper-parameters and the torch version.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xaikit._cache import default_cache_dir, load_weights, save_weights
from xaikit._validation import check_memory, check_number, check_positive_int, check_seed

__all__ = [
    "SHAPE_CLASSES",
    "Shapes",
    "ShapesCNN",
    "load_shapes",
    "load_shapes_cnn",
    "make_shapes",
    "train_shapes_cnn",
]

#: The classes, in label order: the kind of the one class shape in the image.
SHAPE_CLASSES = ("circle", "square", "triangle", "plus")
#: Shapes that are never a class: they make a model look for the class shape among others.
DISTRACTORS = ("ring", "frame", "bar")
#: Image side in pixels.
SIZE = 32
#: Images per split of :func:`load_shapes`.
SPLIT_SIZES = {"train": 2000, "test": 500}
#: Hyper-parameters of :func:`load_shapes_cnn`.
EPOCHS = 10
BATCH_SIZE = 32
LR = 5e-3


class Shapes(NamedTuple):
    """Images ``(N, 1, H, W)`` float32 in [0, 1], labels ``(N,)`` int64, masks ``(N, H, W)``."""

    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray


@lru_cache(maxsize=64)
def _draw(kind: str, side: int) -> np.ndarray:
    """A boolean ``side`` x ``side`` stamp of one shape (read-only; drawn once per size)."""
    r, c = np.mgrid[0:side, 0:side] + 0.5
    center, radius = side / 2, side / 2
    d = np.hypot(r - center, c - center)
    third = side / 3
    if kind == "circle":
        return d <= radius
    if kind == "square":
        return np.ones((side, side), dtype=bool)
    if kind == "triangle":  # apex at the top, base at the bottom row
        return np.abs(c - center) <= (r / side) * radius
    if kind == "plus":
        return (np.abs(r - center) <= third / 2 + 0.5) | (np.abs(c - center) <= third / 2 + 0.5)
    if kind == "ring":
        return (d <= radius) & (d > radius - 2)
    if kind == "frame":
        return (r < 2) | (c < 2) | (r > side - 2) | (c > side - 2)
    return np.abs(r - c) <= 1.0  # "bar": a 2-pixel-wide diagonal (flipped at random when drawn)


def make_shapes(
    n: int,
    *,
    seed: int = 0,
    size: int = SIZE,
    distractors: tuple[int, int] = (1, 3),
    noise: float = 0.05,
) -> Shapes:
    """Draw ``n`` shape images with their labels and ground-truth masks, reproducibly.

    Parameters
    ----------
    n : int
        Number of images.
    seed : int
        The same seed draws the same images.
    size : int
        Image side in pixels (at least 24, so four shapes fit).
    distractors : (low, high)
        Each image gets ``low`` to ``high`` distractors (inclusive).
    noise : float
        Standard deviation of the background noise (its absolute value is taken).

    Returns
    -------
    Shapes
        ``images``, ``labels`` (index into :data:`SHAPE_CLASSES`; balanced up to one image) and
        ``masks``: the class shape's pixels grown by one pixel, since a convolutional model sees
        a shape through its edges, which lie on both sides of the boundary.
    """
    n = check_positive_int(n, name="n")
    size = check_positive_int(size, name="size")
    if size < 24:
        raise ValueError(f"size: expected at least 24 pixels, got {size}")
    noise = check_number(noise, name="noise", low=0)
    seed = check_seed(seed)
    # images (float32, drawn in float64) and masks are held whole: refuse what cannot fit
    check_memory(size**2, 13, name="size", what="pixels of one image")
    check_memory(n, 13 * size**2, name="n", what=f"images of {size} x {size} pixels")
    low, high = (int(v) for v in distractors)
    if not 0 <= low <= high <= 3:
        raise ValueError(f"distractors: expected 0 <= low <= high <= 3, got {distractors!r}")
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(SHAPE_CLASSES)).astype(np.int64)
    images = np.abs(rng.normal(0.0, noise, size=(n, 1, size, size))).astype(np.float32)
    masks = np.zeros((n, size, size), dtype=bool)
    lo_side, hi_side = size // 4, size * 13 // 32  # 8 to 13 pixels on 32-pixel images
    for i in range(n):
        kinds = [SHAPE_CLASSES[labels[i]]]
        kinds += [DISTRACTORS[j] for j in rng.integers(0, 3, size=rng.integers(low, high + 1))]
        taken = np.zeros((size, size), dtype=bool)
        for j, kind in enumerate(kinds):
            for _ in range(100):  # rejection sampling: a free place with a 1-pixel gap around
                side = int(rng.integers(lo_side, hi_side + 1))
                top, left = rng.integers(0, size - side + 1, size=2)
                box = (
                    slice(max(top - 1, 0), top + side + 1),
                    slice(max(left - 1, 0), left + side + 1),
                )
                if not taken[box].any():
                    break
            else:
                continue  # no room left for this distractor (the class shape always fits first)
            stamp = _draw(kind, side)
            if kind == "bar" and rng.random() < 0.5:
                stamp = stamp[:, ::-1]
            region = (slice(top, top + side), slice(left, left + side))
            taken[box] = True
            images[i, 0][region][stamp] = rng.uniform(0.6, 1.0)
            if j == 0:
                masks[i][region] = stamp
    masks = _grow(masks)
    return Shapes(np.clip(images, 0.0, 1.0), labels, masks)


def _grow(masks: np.ndarray) -> np.ndarray:
    """Each mask grown by one pixel in the eight directions."""
    padded = np.pad(masks, ((0, 0), (1, 1), (1, 1)))
    h, w = masks.shape[1:]
    out = np.zeros_like(masks)
    for di in range(3):
        for dj in range(3):
            out |= padded[:, di : di + h, dj : dj + w]
    return out


@lru_cache(maxsize=4)
def _split(split: str, seed: int) -> Shapes:
    # Different streams for the two splits, both fixed by ``seed``.
    data = make_shapes(SPLIT_SIZES[split], seed=seed * 2 + (split == "test"))
    for arr in data:
        arr.setflags(write=False)
    return data


def load_shapes(split: str = "train", *, seed: int = 0) -> Shapes:
    """The shapes splits: 2,000 training and 500 test images (fresh copies).

    Parameters
    ----------
    split : {"train", "test"}
    seed : int
        Seed of the drawing; the two splits never share a stream.
    """
    if split not in SPLIT_SIZES:
        raise ValueError(f"split: expected one of {tuple(SPLIT_SIZES)}, got {split!r}")
    return Shapes(*(arr.copy() for arr in _split(split, int(seed))))


class ShapesCNN(nn.Module):
    """A small CNN for 1x32x32 shape images and 4 classes (raw logits).

    ``conv1 (1->8) -> relu1 -> pool1 -> conv2 (8->16) -> relu2 -> pool2 -> conv3 (16->16) ->
    relu3 -> pool3 -> flatten -> fc1 (256->32) -> relu4 -> fc2 (32->4)``; every ReLU is its own
    module (hooks, Guided Backprop and the attack's softplus copy see it).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1)
        self.relu3 = nn.ReLU()
        self.pool3 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(16 * 4 * 4, 32)
        self.relu4 = nn.ReLU()
        self.fc2 = nn.Linear(32, len(SHAPE_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.pool3(self.relu3(self.conv3(x)))
        return self.fc2(self.relu4(self.fc1(self.flatten(x))))


def train_shapes_cnn(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    seed: int = 0,
    epochs: int = EPOCHS,
    batch_size: int = BATCH_SIZE,
    lr: float = LR,
) -> ShapesCNN:
    """Train a :class:`ShapesCNN` deterministically (Adam, one-cycle schedule, cross-entropy).

    The caller's global random state of torch is left as it was. Returns the model in eval mode.
    """
    x = torch.from_numpy(np.array(images, dtype=np.float32))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    if x.ndim != 4 or x.shape[1] != 1 or len(y) != len(x):
        raise ValueError(
            f"images: expected (N, 1, H, W) with one label each, got {tuple(x.shape)} and "
            f"{tuple(y.shape)}"
        )
    epochs = check_positive_int(epochs, name="epochs")
    batch_size = check_positive_int(batch_size, name="batch_size")
    generator = torch.Generator().manual_seed(seed)
    steps = epochs * -(-len(x) // batch_size)
    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        # One thread: a step of this tiny network on 32 images is too small to split, and on a
        # busy machine extra threads mostly wait for each other (5x slower measured here).
        torch.set_num_threads(1)
        try:
            model = _fit(x, y, seed, epochs, batch_size, lr, steps, generator)
        finally:
            torch.set_num_threads(threads)
    return model.eval()


def _fit(x, y, seed, epochs, batch_size, lr, steps, generator) -> ShapesCNN:
    """The training loop of :func:`train_shapes_cnn` (seeded initialisation, shuffling)."""
    torch.manual_seed(seed)
    model = ShapesCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return model


def _cache_key(seed: int) -> str:
    """Hash of everything that decides the trained weights."""
    h = hashlib.sha256()
    for obj in (_draw, make_shapes, _grow, ShapesCNN, train_shapes_cnn, _fit):
        h.update(inspect.getsource(obj).encode())
    h.update(repr((seed, SIZE, SPLIT_SIZES, EPOCHS, BATCH_SIZE, LR)).encode())
    h.update(".".join(torch.__version__.split(".")[:2]).encode())
    return h.hexdigest()[:16]


def load_shapes_cnn(*, seed: int = 0, cache_dir: str | os.PathLike[str] | None = None) -> ShapesCNN:
    """The default shapes CNN, trained on ``load_shapes("train", seed=seed)`` once and cached.

    About 98% accurate on the test split; training takes some seconds on a CPU. A fresh model
    is returned each call (changing it does not change the cache).
    """
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = directory / f"shapescnn-seed{seed}-{_cache_key(seed)}.pt"
    model = ShapesCNN()
    if load_weights(model, path, what="shapes model"):
        return model.eval()
    images, labels, _ = load_shapes("train", seed=seed)
    model = train_shapes_cnn(images, labels, seed=seed)
    save_weights(model, path, what="shapes model")
    return model
