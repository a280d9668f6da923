"""Probing by reconstruction: rebuild the input from a layer and look at what is left.

A speech example trains a text-to-speech decoder to rebuild the input audio from one layer
of a speech recogniser and listens: speaker identity fades with depth and background noise
vanishes after the first layers. What a decoder cannot rebuild from layer ``l``, layer ``l`` has
thrown away. Here the decoder is a small MLP from the flattened layer output back to the
flattened input, trained per layer on one part of the data (``min ||D(h_l(x)) - x||^2``) and
scored on the rest; the held-out mean squared error per layer and the reconstructions of a few
held-out items show what each layer keeps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from xaikit._plotting import plain
from xaikit._repr import HTMLRepr
from xaikit._validation import (
    check_count,
    check_memory,
    check_number,
    check_positive_int,
    check_seed,
)
from xaikit.representations._common import flat, new_figure
from xaikit.representations.activations import DEFAULT_MEMORY_BUDGET, capture

__all__ = ["Reconstruction", "reconstruct"]

_BATCH = 128
_LR = 2e-3


@dataclass
class Reconstruction(HTMLRepr):
    """How well each layer's output rebuilds the input.

    Attributes
    ----------
    error : dict of str to float
        Held-out mean squared error per input element, per layer (lower: the layer kept more).
    train_error : dict of str to float
        The same on the training part.
    baseline_error : float
        Held-out error of the training mean input: a decoder that learned nothing from the
        layer scores about this.
    originals : np.ndarray, shape (k, *input_shape)
        The first ``k`` held-out inputs.
    examples : np.ndarray, shape (len(layers), k, *input_shape)
        Their reconstructions from each layer, in the order of ``layers``.
    layers : list of str
    params : dict
    """

    error: dict[str, float]
    train_error: dict[str, float]
    baseline_error: float
    originals: np.ndarray
    examples: np.ndarray
    layers: list[str]
    params: dict = field(default_factory=dict)

    def plot(self, *, title: str | None = None) -> Any:
        """A grid: the inputs on top, then one row of reconstructions per layer (with its
        held-out error); images as images, other inputs as line plots. Returns the ``Figure``."""
        k = len(self.originals)
        rows = [("input", self.originals)] + [
            (f"{layer}\nMSE {self.error[layer]:.4f}", self.examples[i])
            for i, layer in enumerate(self.layers)
        ]
        fig = new_figure((1.3 * k + 1.4, 1.3 * len(rows) + 0.6))
        axes = fig.subplots(len(rows), k, squeeze=False)
        image = self.originals.ndim in (3, 4) and self.originals.shape[-1] > 1
        lo, hi = float(np.min(self.originals)), float(np.max(self.originals))
        for r, (name, items) in enumerate(rows):
            for c in range(k):
                ax = axes[r, c]
                if image:
                    picture = _as_image(items[c])
                    if picture.ndim == 3:  # RGB takes no vmin/vmax: scale to [0, 1] here
                        picture = np.clip((picture - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
                    ax.imshow(picture, cmap="gray", vmin=lo, vmax=hi)
                else:
                    ax.plot(np.ravel(items[c]), linewidth=0.8)
                ax.set_xticks([])
                ax.set_yticks([])
            axes[r, 0].set_ylabel(
                plain(name), rotation=0, ha="right", va="center", fontsize="small"
            )
        fig.suptitle(plain(title or "input rebuilt from each layer (held-out items)"))
        return fig


def reconstruct(
    model: Any,
    data: Any,
    *,
    layers: str | list[str],
    epochs: int = 20,
    hidden: int = 256,
    test_size: float = 0.25,
    examples: int = 8,
    seed: int = 0,
    pool: Any = None,
    batch_size: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    progress: bool | None = None,
) -> Reconstruction:
    """Train a decoder from each layer back to the input; report the held-out error per layer.

    Parameters
    ----------
    model : nn.Module or Model
    data : array, tensor, Dataset or DataLoader
        See :func:`xaikit.activations`. The inputs must be floating point (the decoder's
        target); a token model's ids cannot be rebuilt this way.
    layers : str or list of str
        Layer paths, typically shallow to deep.
    epochs : int
        Passes of the decoder's training over the training part (Adam, learning rate 1e-3,
        batches of 64).
    hidden : int
        Width of the decoder's hidden layer: ``Linear(features, hidden) -> ReLU ->
        Linear(hidden, input size)`` on standardised layer outputs.
    test_size : float
        Share of the items held out to score the decoders, split with ``seed``.
    examples : int
        How many held-out items to keep with their reconstructions.
    seed : int
        Seeds the split, each decoder's initial weights and the order of its batches; the
        global random state is left as it was.
    pool, batch_size, memory_budget, progress
        As in :func:`xaikit.activations`.

    Returns
    -------
    Reconstruction
        ``error`` (layer -> held-out MSE), ``baseline_error``, ``originals``, ``examples``,
        ``plot()``.

    References
    ----------
    Mahendran & Vedaldi 2015, Understanding deep image representations by inverting them,
    CVPR. Dosovitskiy & Brox 2016, Inverting visual representations with convolutional
    networks, CVPR. Li et al. 2020, What does a network layer hear? Analyzing hidden
    representations of end-to-end ASR through speech synthesis, ICASSP (the speech version:
    audio rebuilt by a TTS decoder from each layer of a speech recogniser).
    """
    epochs = check_count(epochs, name="epochs")
    hidden = check_positive_int(hidden, name="hidden")
    examples = check_positive_int(examples, name="examples")
    test_size = check_number(
        test_size, name="test_size", low=0, high=1, low_open=True, high_open=True, what="share"
    )
    seed = check_seed(seed, allow_none=False)
    acts = capture(
        model,
        data,
        layers=layers,
        pool=pool,
        batch_size=batch_size,
        memory_budget=memory_budget,
        progress=progress,
        keep_inputs=True,
    )
    inputs = np.asarray(acts.inputs)
    if inputs.dtype.kind != "f":
        raise TypeError(
            f"data: reconstruction rebuilds floating-point inputs, got dtype {inputs.dtype} "
            "(token ids cannot be rebuilt by regression)"
        )
    n = acts.n
    n_test = math.ceil(float(test_size) * n)
    if n_test < 1 or n - n_test < 2:
        raise ValueError(f"data: {n} items are too few to train and score a decoder")
    # Each decoder holds (features + input size) weights per hidden unit, with their gradients
    # and Adam's two moments: refuse a width that cannot fit before any training.
    widest = max(int(np.prod(acts[layer].shape[1:])) for layer in acts.layers)
    size = int(np.prod(inputs.shape[1:]))
    check_memory(
        hidden, 16 * (widest + size) + 8 * _BATCH, name="hidden",
        what=f"hidden units of a decoder from {widest} features to {size} inputs",
    )  # fmt: skip
    order = np.random.default_rng(seed).permutation(n)
    train, test = np.sort(order[n_test:]), np.sort(order[:n_test])
    target = torch.from_numpy(np.ascontiguousarray(flat(inputs), dtype=np.float32))
    mean = target[train].mean(dim=0)
    baseline = float(((target[test] - mean) ** 2).mean())
    shown = test[: min(examples, len(test))]
    result = Reconstruction(
        error={},
        train_error={},
        baseline_error=baseline,
        originals=inputs[shown].astype(np.float32),
        examples=np.empty((len(acts.layers), len(shown), *inputs.shape[1:]), np.float32),
        layers=list(acts.layers),
        params={"epochs": epochs, "hidden": hidden, "test_size": float(test_size), "seed": seed},
    )
    for i, layer in enumerate(acts.layers):
        features = torch.from_numpy(np.ascontiguousarray(flat(acts[layer]), dtype=np.float32))
        decoder, scale = _train_decoder(
            features[train], target[train], epochs=epochs, hidden=hidden, seed=seed
        )
        with torch.inference_mode():
            rebuilt = decoder(scale(features))
        result.error[layer] = float(((rebuilt[test] - target[test]) ** 2).mean())
        result.train_error[layer] = float(((rebuilt[train] - target[train]) ** 2).mean())
        result.examples[i] = rebuilt[shown].reshape(len(shown), *inputs.shape[1:]).numpy()
    return result


def _train_decoder(
    features: torch.Tensor, target: torch.Tensor, *, epochs: int, hidden: int, seed: int
) -> tuple[nn.Module, Any]:
    """A seeded MLP decoder ``standardised features -> input``, trained with Adam on MSE."""
    # Centre per feature and divide by one scale for the whole layer (training statistics):
    # layers differ in scale by orders of magnitude and one learning rate should suit them all.
    # Not a per-feature scale: a unit almost silent in training would blow up on new items.
    mu = features.mean(dim=0)
    sigma = (features - mu).pow(2).mean().sqrt().clamp_min(1e-12)

    def scale(f: torch.Tensor) -> torch.Tensor:
        return (f - mu) / sigma

    x = scale(features)
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # seeded weights, the caller's stream untouched
        torch.manual_seed(seed)
        decoder = nn.Sequential(
            nn.Linear(x.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, target.shape[1])
        )
    optimizer = torch.optim.Adam(decoder.parameters(), lr=_LR, foreach=True)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), _BATCH):
            idx = order[start : start + _BATCH]
            loss = nn.functional.mse_loss(decoder(x[idx]), target[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return decoder.eval(), scale


def _as_image(item: np.ndarray) -> np.ndarray:
    """(C, H, W) or (H, W) -> something imshow draws: grey for one channel, RGB for three."""
    if item.ndim == 3:
        if item.shape[0] == 1:
            return item[0]
        if item.shape[0] == 3:
            return np.moveaxis(item, 0, -1)
        return item.mean(axis=0)
    return item
