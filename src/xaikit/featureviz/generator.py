"""Generator-constrained visualisation and a small generator trained on the user's data.

Raw class visualisation finds noise that fools the model (an adversarial image); a generator
constrains the image to what a generator G can make: ``z* = argmax_z y_i(G(z))``,
``X* = G(z*)`` (Nguyen et al. 2016, DGN-AM). :func:`xaikit.visualize` does the search when given
``generator=``; this module provides :func:`train_generator`, which trains a small VAE or GAN
on the user's own images (deterministic with ``seed``, cached like the default CNN), and the
helpers that check a generator fits the model.

The generator is an MLP on flattened images (any item shape; meant for small images such as
28x28 digits). Its output passes a sigmoid scaled to the training data's range, so G(z) is
always a valid image.

References
----------
.. [1] Nguyen, Dosovitskiy, Yosinski, Brox, Clune (2016). Synthesizing the preferred inputs for
   neurons in neural networks via deep generator networks. NeurIPS.
.. [2] Kingma, Welling (2014). Auto-encoding variational Bayes. ICLR.
.. [3] Goodfellow et al. (2014). Generative adversarial nets. NeurIPS.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xaikit._cache import default_cache_dir, load_weights, save_weights
from xaikit._progress import progress_bar
from xaikit._torch import float_dtype, module_device
from xaikit._validation import (
    check_batch,
    check_choice,
    check_count,
    check_memory,
    check_positive_int,
    check_seed,
    describe,
)
from xaikit.featureviz.param import Parameterization

__all__ = ["Latent", "MLPGenerator", "check_fits", "generate", "latent_size", "train_generator"]

KINDS = ("vae", "gan")
#: Hyper-parameters per kind (epochs default; batch size; learning rate).
DEFAULT_EPOCHS = {"vae": 30, "gan": 30}
BATCH_SIZE = 64
LR = {"vae": 1e-3, "gan": 2e-4}
HIDDEN = (256, 512)
#: The GAN's target for real images (one-sided label smoothing).
REAL_LABEL = 0.9


class MLPGenerator(nn.Module):
    """Decoder ``z (B, latent_dim) -> x (B, *output_shape)`` with outputs in ``[low, high]``.

    Parameters
    ----------
    latent_dim : int
        Size of the latent vector ``z``; exposed as the attribute :func:`xaikit.visualize`
        reads.
    output_shape : tuple of int
        Shape of one generated item, e.g. ``(1, 28, 28)``.
    low, high : float
        The data range; the output is ``low + (high - low) * sigmoid(...)``.
    batch_norm : bool
        Hidden layers ``Linear -> BatchNorm -> LeakyReLU`` instead of ``Linear -> ReLU``. The
        GAN needs it: without it the generator collapsed to one digit on MNIST-5k within ten
        epochs (measured); BatchNorm keeps the batch's samples apart.
    """

    def __init__(
        self,
        *,
        latent_dim: int,
        output_shape: tuple[int, ...],
        low: float = 0.0,
        high: float = 1.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        self.latent_dim = int(latent_dim)
        self.output_shape = tuple(int(s) for s in output_shape)
        size = math.prod(self.output_shape)
        layers: list[nn.Module] = []
        width = self.latent_dim
        for hidden in HIDDEN:
            layers.append(nn.Linear(width, hidden))
            if batch_norm:
                layers += [nn.BatchNorm1d(hidden), nn.LeakyReLU(0.2)]
            else:
                layers.append(nn.ReLU())
            width = hidden
        layers.append(nn.Linear(width, size))
        self.net = nn.Sequential(*layers)
        # Buffers, so the range travels with the state dict and the cached file.
        self.register_buffer("low", torch.tensor(float(low)))
        self.register_buffer("high", torch.tensor(float(high)))

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """The pre-sigmoid output, flat ``(B, prod(output_shape))``."""
        return self.net(z)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        unit = torch.sigmoid(self.logits(z))
        return (self.low + (self.high - self.low) * unit).reshape(len(z), *self.output_shape)


class _Encoder(nn.Module):
    """VAE encoder: flat image -> (mean, log-variance) of q(z | x)."""

    def __init__(self, size: int, latent_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(size, HIDDEN[1]),
            nn.ReLU(),
            nn.Linear(HIDDEN[1], HIDDEN[0]),
            nn.ReLU(),
            nn.Linear(HIDDEN[0], 2 * latent_dim),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_var = self.net(x).chunk(2, dim=1)
        return mean, log_var


class _Critic(nn.Module):
    """GAN discriminator on flat images (LeakyReLU; dropout so it does not memorise the few
    thousand training images and overpower the generator)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(size, HIDDEN[1]),
            nn.LeakyReLU(0.2),
            nn.Dropout(0.3),
            nn.Linear(HIDDEN[1], HIDDEN[0]),
            nn.LeakyReLU(0.2),
            nn.Dropout(0.3),
            nn.Linear(HIDDEN[0], 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[:, 0]


def _train_vae(unit, generator, *, epochs, seed, rng, bar) -> None:
    """Maximise the evidence lower bound: Bernoulli reconstruction of ``unit`` + KL to N(0, I)."""
    n, size = unit.shape
    encoder = _Encoder(size, generator.latent_dim)
    optimizer = torch.optim.Adam([*encoder.parameters(), *generator.parameters()], lr=LR["vae"])
    for _ in range(epochs):
        order = torch.randperm(n, generator=rng)
        for start in range(0, n, BATCH_SIZE):
            xb = unit[order[start : start + BATCH_SIZE]]
            mean, log_var = encoder(xb)
            eps = torch.randn(mean.shape, generator=rng)
            z = mean + torch.exp(0.5 * log_var) * eps
            recon = F.binary_cross_entropy_with_logits(generator.logits(z), xb, reduction="sum")
            kl = -0.5 * torch.sum(1 + log_var - mean.pow(2) - log_var.exp())
            loss = (recon + kl) / len(xb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        bar.advance()


def _train_gan(unit, generator, *, epochs, seed, rng, bar) -> None:
    """Non-saturating GAN (Goodfellow et al. 2014) with Adam(2e-4, betas=(0.5, 0.999)) and
    one-sided label smoothing (real labels 0.9; Salimans et al. 2016)."""
    n, size = unit.shape
    critic = _Critic(size)
    opt_g = torch.optim.Adam(generator.parameters(), lr=LR["gan"], betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(critic.parameters(), lr=LR["gan"], betas=(0.5, 0.999))
    for _ in range(epochs):
        order = torch.randperm(n, generator=rng)
        for start in range(0, n, BATCH_SIZE):
            real = unit[order[start : start + BATCH_SIZE]]
            z = torch.randn((len(real), generator.latent_dim), generator=rng)
            fake = torch.sigmoid(generator.logits(z))
            ones, zeros = torch.ones(len(real)), torch.zeros(len(real))
            d_loss = F.binary_cross_entropy_with_logits(
                critic(real), REAL_LABEL * ones
            ) + F.binary_cross_entropy_with_logits(critic(fake.detach()), zeros)
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            g_loss = F.binary_cross_entropy_with_logits(critic(fake), ones)
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
        bar.advance()


_TRAINERS = {"vae": _train_vae, "gan": _train_gan}


def train_generator(
    data: Any,
    *,
    kind: str = "vae",
    latent_dim: int = 16,
    epochs: int | None = None,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
    cache: bool = True,
    progress: bool | None = None,
) -> MLPGenerator:
    """Train a small generator on ``data`` for generator-constrained visualisation.

    Deterministic: the same data, kind, seed and hyper-parameters give the same weights (on the
    same machine and torch version); the caller's random state is left as it was. The weights
    are cached under a key that hashes the training code, the data bytes, the seed, the
    hyper-parameters and the torch version, written atomically and loaded with
    ``torch.load(weights_only=True)`` (no pickle).

    Parameters
    ----------
    data : array or tensor, shape (N, ...)
        Training items, e.g. images ``(N, 1, 28, 28)`` in [0, 1]. The generator's output has
        the items' shape and lies in the data's range ``[data.min(), data.max()]``.
    kind : {"vae", "gan"}
        A variational auto-encoder's decoder (Kingma & Welling 2014; stable, slightly blurry)
        or a GAN generator (Goodfellow et al. 2014; sharper, less stable on small data).
    latent_dim : int
        Size of the latent vector z.
    epochs : int, optional
        Passes over the data; default 30 (MNIST-5k's 4,000 training images: about 30 s for a
        VAE, 60 s for a GAN on one CPU core).
    seed : int
        Seeds the initial weights, the shuffling and the sampled noise.
    cache_dir : path-like, optional
        Where the weights are kept; default :func:`xaikit.datasets.default_cache_dir`.
    cache : bool
        Read and write the cache (``False``: always train, write nothing).
    progress : bool, optional
        Show a progress bar over the epochs; ``None`` follows :func:`xaikit.set_progress`.

    Returns
    -------
    MLPGenerator
        The generator in eval mode on the CPU, with ``latent_dim`` and ``output_shape``.

    Examples
    --------
    >>> X, _ = xk.datasets.load_mnist("train")                     # doctest: +SKIP
    >>> G = xk.train_generator(X, kind="vae")                      # doctest: +SKIP
    >>> v = xk.visualize(cnn, xk.objectives.logit(3), generator=G)  # doctest: +SKIP
    """
    kind = check_choice(kind, name="kind", choices=KINDS)
    latent_dim = check_positive_int(latent_dim, name="latent_dim")
    # the first layer has HIDDEN[0] weights per latent unit (with gradients and Adam's moments,
    # and the encoder's mirror of it for a VAE): refuse a width that cannot fit
    check_memory(latent_dim, 32 * HIDDEN[0], name="latent_dim", what="latent units")
    epochs = DEFAULT_EPOCHS[kind] if epochs is None else check_count(epochs, name="epochs")
    seed = check_seed(seed, allow_none=False)
    x = check_batch(data, name="data")
    x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x
    x = np.ascontiguousarray(x, dtype=np.float32)
    if len(x) < 2:
        raise ValueError(f"data: expected at least 2 items to train on, got {len(x)}")
    low, high = float(x.min()), float(x.max())
    if not high > low:
        raise ValueError(f"data: all values are equal ({low}); nothing to learn")

    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    key = _cache_key(x, kind=kind, latent_dim=latent_dim, epochs=epochs, seed=int(seed))
    path = directory / f"generator-{kind}-z{latent_dim}-seed{seed}-{key}.pt"
    shape = tuple(x.shape[1:])
    if cache:
        generator = MLPGenerator(
            latent_dim=latent_dim, output_shape=shape, low=low, high=high, batch_norm=kind == "gan"
        )
        if load_weights(generator, path, what="generator"):
            return generator.eval()

    generator = _train(
        x,
        kind=kind,
        latent_dim=latent_dim,
        epochs=epochs,
        seed=int(seed),
        low=low,
        high=high,
        progress=progress,
    )
    if cache:
        save_weights(generator, path, what="generator")
    return generator


def _train(x, *, kind, latent_dim, epochs, seed, low, high, progress) -> MLPGenerator:
    unit = torch.from_numpy((x.reshape(len(x), -1) - low) / (high - low))
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    bar = progress_bar(epochs, f"training {kind} generator", enabled=progress)
    # fork_rng: weight initialisation draws from torch's global generator; seed it without
    # disturbing the caller's random stream.
    with torch.random.fork_rng(devices=[]), bar as epochs_done:
        torch.use_deterministic_algorithms(True)
        try:
            torch.manual_seed(seed)
            rng = torch.Generator().manual_seed(seed)
            generator = MLPGenerator(
                latent_dim=latent_dim,
                output_shape=tuple(x.shape[1:]),
                low=low,
                high=high,
                batch_norm=kind == "gan",
            )
            generator.train()
            _TRAINERS[kind](unit, generator, epochs=epochs, seed=seed, rng=rng, bar=epochs_done)
        finally:
            torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    return generator.eval()


def _cache_key(x: np.ndarray, *, kind: str, latent_dim: int, epochs: int, seed: int) -> str:
    """Hash of everything that decides the trained weights."""
    h = hashlib.sha256()
    for obj in _TRAINING_CODE:
        h.update(inspect.getsource(obj).encode())
    h.update(hashlib.sha256(x).digest())
    h.update(repr((x.shape, str(x.dtype))).encode())
    h.update(
        repr((kind, latent_dim, epochs, seed, BATCH_SIZE, LR[kind], HIDDEN, REAL_LABEL)).encode()
    )
    h.update(".".join(torch.__version__.split(".")[:2]).encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------- use in visualize


class Latent(Parameterization):
    """The generator constraint as a parameterisation: the optimiser moves ``z``, the image is
    ``G(z)`` (Nguyen et al. 2016), with the penalty ``prior * ||z||^2`` at each step.

    Made by :func:`~xaikit.featureviz.visualize` for its ``generator=`` argument, for one call:
    the latent size comes from ``start`` latent vectors when given, else from the generator
    (:func:`latent_size`). The latents live on the generator's device in its dtype; the images
    are cast to the model's dtype.
    """

    name = "generator"

    def __init__(self, generator: nn.Module, *, prior: float) -> None:
        self.generator = generator
        self.prior = prior
        self.latent_dim: int | None = None  # set by check_start

    def __repr__(self) -> str:
        return "generator"

    def modules(self) -> tuple[nn.Module, ...]:
        return (self.generator,)

    def raw_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (self.latent_dim,)

    def noise(self, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        return rng.standard_normal(self.raw_shape(shape))

    def image(
        self, raw: torch.Tensor, shape: tuple[int, ...], *, low: float, high: float
    ) -> torch.Tensor:
        return generate(self.generator, raw)

    def check_start(
        self, start: Any, *, shape: tuple[int, ...] | None, low: float, high: float, device
    ) -> torch.Tensor | None:
        """``start`` as latent vectors ``(B, latent_dim)`` in float64 (None without one)."""
        if start is None:
            self.latent_dim = latent_size(self.generator)
            return None
        arr = check_batch(start, name="start")
        t = arr.detach() if isinstance(arr, torch.Tensor) else torch.from_numpy(np.asarray(arr))
        if t.ndim != 2:
            raise ValueError(
                f"start: with a generator, expected latent vectors (B, latent_dim), got shape "
                f"{tuple(t.shape)}"
            )
        self.latent_dim = t.shape[1]
        return t.to(torch.float64)

    def first_image(
        self, start, *, shape, guess_shape, low, high, dtype, device
    ) -> tuple[torch.Tensor, str]:
        """``G(z)`` of the first start vector (or of z = 0), checked against ``shape`` and the
        model's device; the generator decides the item shape."""
        z0 = start[:1] if start is not None else torch.zeros(1, self.latent_dim)
        z0 = z0.to(device=module_device(self.generator), dtype=float_dtype(self.generator))
        x0 = check_fits(generate(self.generator, z0), expected=shape, n=1)
        if x0.device != device:
            raise ValueError(f"generator: its output is on {x0.device}, the model on {device}")
        return x0, "generator"

    def init(self, seeds, *, start, shape, low, high, dtype, device):
        """Latents from ``start`` or a standard normal per item's seed; images ``G(z)`` in the
        model's ``dtype``."""
        if start is not None:
            raw0 = start
        else:
            raw0 = torch.from_numpy(
                np.stack([self.noise(shape, np.random.default_rng([s, 0])) for s in seeds])
            )
        raw = raw0.to(device=module_device(self.generator), dtype=float_dtype(self.generator))
        raw = raw.clone().requires_grad_(True)
        return raw, lambda r: self.image(r, shape, low=low, high=high).to(dtype)

    def penalty(self, raw: torch.Tensor) -> torch.Tensor | None:
        return self.prior * raw.pow(2).sum() if self.prior else None


def generate(generator: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """``generator(z)``; a failure is a ValueError naming ``generator`` and the shape of z."""
    try:
        return generator(z)
    except Exception as err:
        raise ValueError(
            f"generator: failed on latent vectors of shape {tuple(z.shape)} "
            f"({type(err).__name__}: {err})"
        ) from err


def latent_size(generator: nn.Module) -> int:
    """The length of ``z`` a generator takes: its ``latent_dim`` attribute or first layer."""
    size = getattr(generator, "latent_dim", None)
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool) and size > 0:
        return int(size)
    first = next((m for m in generator.modules() if isinstance(m, nn.Linear)), None)
    if first is not None:
        return first.in_features
    raise ValueError(
        f"generator: cannot tell the size of its latent vector z from {type(generator).__name__};"
        " give it an int attribute latent_dim, or pass start= latent vectors (B, latent_dim)"
    )


def check_fits(output: Any, *, expected: tuple[int, ...] | None, n: int) -> torch.Tensor:
    """Check one batch of generator output ``(n, *expected)``; raise naming ``generator``."""
    if not isinstance(output, torch.Tensor):
        raise ValueError(f"generator: expected a tensor of images, got {describe(output)}")
    if output.ndim < 2 or output.shape[0] != n:
        raise ValueError(
            f"generator: expected a batch of {n} items (N, ...), got shape {tuple(output.shape)}"
        )
    if not output.dtype.is_floating_point:
        raise ValueError(f"generator: expected floating-point images, got {output.dtype}")
    if expected is not None and tuple(output.shape[1:]) != tuple(expected):
        hint = ""
        if math.prod(output.shape[1:]) == math.prod(expected):
            hint = f"; reshape its output, e.g. end it with nn.Unflatten(1, {tuple(expected)})"
        raise ValueError(
            f"generator: makes items of shape {tuple(output.shape[1:])}, the model takes "
            f"{tuple(expected)}{hint}"
        )
    return output


# The code whose source goes into the cache key. Bound here, not looked up at call time, so the
# key describes this module as written.
_TRAINING_CODE = (MLPGenerator, _Encoder, _Critic, _train_vae, _train_gan, _train)
