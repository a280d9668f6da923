"""Parameterisations: how the optimised image is made from the numbers the optimiser moves.

The optimiser never moves pixels in the data range directly. It moves an unconstrained tensor
``raw`` (one slice per batch item, so Adam's element-wise updates keep items independent) and
the image is ``low + (high - low) * sigmoid(f(raw))``, which keeps every pixel inside the data
range at every step. Without it, plain pixel ascent drifts far outside the data
range (to -11.9...12.3 on data in [0, 1], measured on a filter of the MNIST CNN).

- :func:`pixels`: ``f`` is the identity, one number per pixel.
- :func:`fourier`: ``raw`` is the image's 2-D spectrum, scaled by 1/frequency so that every
  frequency moves at a similar rate; for 3-channel images the colours are also decorrelated
  with Lucid's ImageNet colour matrix. Gradient steps in this basis favour the low frequencies
  that natural images have, so the result is smoother without a penalty (Olah et al. 2017,
  "Preconditioning and parameterization").
- a generator's latent vector (:class:`xaikit.featureviz.generator.Latent`): ``raw`` is ``z``
  and the image is ``G(z)``.

:func:`~xaikit.featureviz.visualize` asks every parameterisation the same questions (the
methods of :class:`Parameterization` below): its starting point, one item's first image for the
checks, and, as Lucid's ``param_f``, the tensor to optimise and the function from it to images.

References
----------
.. [1] Olah, Mordvintsev, Schubert (2017). Feature visualization. Distill.
.. [2] Mordvintsev, Pezzotti, Schubert, Olah (2018). Differentiable image parameterizations.
   Distill.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from xaikit._validation import check_batch

__all__ = ["Fourier", "Parameterization", "Pixels", "fourier", "pixels"]

# Lucid's square root of ImageNet's colour correlation (lucid/optvis/param/color.py); columns
# normalised so that the largest has norm 1.
_COLOR_SQRT = np.array([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
_COLOR = _COLOR_SQRT / np.linalg.norm(_COLOR_SQRT, axis=0).max()
# Lucid divides the Fourier image by 4 so that its initial values are small: the image starts
# as a near-uniform grey, not as saturated noise.
_FOURIER_DIVISOR = 4.0
# Start images are pulled this fraction of the range inside (low, high): the sigmoid's inverse
# is infinite at the ends, and a pixel at the very end could never move.
START_MARGIN = 0.01


class Parameterization:
    """Base class: maps an unconstrained ``raw`` tensor to images in ``(low, high)``.

    Subclasses define :meth:`raw_shape`, :meth:`noise` (the per-item initial value),
    :meth:`unbounded` (raw -> image before the sigmoid) and its inverse :meth:`from_unbounded`.
    What :func:`~xaikit.featureviz.visualize` calls (:meth:`check_start`,
    :meth:`first_image`, :meth:`init`, :meth:`penalty`, :meth:`modules`) works from those for
    any image parameterisation; a generator's latent overrides it.
    """

    name = "param"

    def raw_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of one item's raw tensor for images of shape ``(C, H, W)``."""
        raise NotImplementedError

    def noise(self, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        """A random initial raw value for one item (float64), drawn from ``rng``."""
        raise NotImplementedError

    def unbounded(self, raw: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """The image before the sigmoid, ``(B, C, H, W)``."""
        raise NotImplementedError

    def from_unbounded(self, t: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`unbounded`: the raw tensor giving ``t`` (B, C, H, W)."""
        raise NotImplementedError

    def image(
        self, raw: torch.Tensor, shape: tuple[int, ...], *, low: float, high: float
    ) -> torch.Tensor:
        """The images in the data range: ``low + (high - low) * sigmoid(unbounded(raw))``."""
        return low + (high - low) * torch.sigmoid(self.unbounded(raw, shape))

    def from_image(self, x: torch.Tensor, *, low: float, high: float) -> torch.Tensor:
        """The raw tensor whose image is ``x`` (pulled ``START_MARGIN`` inside the range)."""
        unit = ((x - low) / (high - low)).clamp(START_MARGIN, 1 - START_MARGIN)
        return self.from_unbounded(torch.logit(unit))

    def __repr__(self) -> str:
        return f"{self.name}()"

    # ---- what visualize asks

    def modules(self) -> tuple[nn.Module, ...]:
        """Modules the parameterisation runs, left as they were like the model (none here)."""
        return ()

    def check_start(
        self, start: Any, *, shape: tuple[int, ...] | None, low: float, high: float, device
    ) -> torch.Tensor | None:
        """The ``start`` argument as starting images ``(B, *shape)`` in ``(low, high)``."""
        if start is None:
            return None
        arr = check_batch(start, name="start", item_shape=shape)
        t = arr.detach() if isinstance(arr, torch.Tensor) else torch.from_numpy(np.asarray(arr))
        if not t.dtype.is_floating_point:
            t = t.to(torch.float64)
        lo, hi = float(t.min()), float(t.max())
        if lo < low or hi > high:
            raise ValueError(
                f"start: expected values in value_range ({low:g}, {high:g}), got "
                f"[{lo:g}, {hi:g}]; pass value_range= the data range"
            )
        return t.to(device)

    def first_image(
        self,
        start: torch.Tensor | None,
        *,
        shape: tuple[int, ...] | None,
        guess_shape: Callable[[], tuple[int, ...]],
        low: float,
        high: float,
        dtype: torch.dtype,
        device,
    ) -> tuple[torch.Tensor, str]:
        """One item's first image, for the forward pass that checks everything before
        optimising, and the argument that decided its shape (blamed when it does not fit).

        The first start image, else a mid-range grey image of ``shape`` (or of
        ``guess_shape()`` when no shape is known).
        """
        if start is not None:
            return start[:1], "start"
        if shape is None:
            shape = guess_shape()
        return torch.full((1, *shape), (low + high) / 2, dtype=dtype, device=device), "input_shape"

    def init(
        self,
        seeds: Sequence[int],
        *,
        start: torch.Tensor | None,
        shape: tuple[int, ...],
        low: float,
        high: float,
        dtype: torch.dtype,
        device,
    ) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        """Lucid's ``param_f``: the tensor the optimiser moves and the function to images.

        One slice per item: from that item's start image (``start``, one per item), else
        :meth:`noise` drawn from the item's seed. The images are :meth:`image` of it.
        """
        if start is not None:
            raw0 = self.from_image(start.to(dtype), low=low, high=high)
        else:
            raw0 = torch.from_numpy(
                np.stack([self.noise(shape, np.random.default_rng([s, 0])) for s in seeds])
            )
        raw = raw0.to(device=device, dtype=dtype).clone().requires_grad_(True)
        return raw, lambda r: self.image(r, shape, low=low, high=high)

    def penalty(self, raw: torch.Tensor) -> torch.Tensor | None:
        """A term subtracted from the objective at each step (None: none)."""
        return None


class Pixels(Parameterization):
    """One number per pixel, through a sigmoid into the data range.

    Parameters
    ----------
    sd : float
        Standard deviation of the initial noise (before the sigmoid; 0.01 as in Lucid, so the
        start is a near-uniform mid-range grey with faint noise).
    """

    name = "pixels"

    def __init__(self, *, sd: float = 0.01) -> None:
        self.sd = float(sd)

    def raw_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(shape)

    def noise(self, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        return self.sd * rng.standard_normal(self.raw_shape(shape))

    def unbounded(self, raw: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        return raw

    def from_unbounded(self, t: torch.Tensor) -> torch.Tensor:
        return t


class Fourier(Parameterization):
    """A decorrelated image: the 2-D spectrum, scaled by 1/frequency, and decorrelated colours.

    Parameters
    ----------
    decay : float
        Power of the frequency in the spectrum's scale ``1 / max(f, 1/max(H, W)) ** decay``
        (Lucid's ``decay_power``, 1 by default).
    decorrelate : bool
        Mix 3-channel images with Lucid's ImageNet colour matrix (no effect for other channel
        counts, e.g. grey MNIST digits).
    sd : float
        Standard deviation of the initial spectrum (0.01 as in Lucid).
    """

    name = "fourier"

    def __init__(self, *, decay: float = 1.0, decorrelate: bool = True, sd: float = 0.01) -> None:
        self.decay = float(decay)
        self.decorrelate = bool(decorrelate)
        self.sd = float(sd)
        self._scales: dict[tuple, torch.Tensor] = {}

    def raw_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        c, h, w = _check_image_shape(shape)
        return (c, h, w // 2 + 1, 2)  # real and imaginary parts of the rfft2 spectrum

    def noise(self, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        return self.sd * rng.standard_normal(self.raw_shape(shape))

    def _scale(self, h: int, w: int, like: torch.Tensor) -> torch.Tensor:
        key = (h, w, like.dtype, like.device)
        if key not in self._scales:
            fy = np.fft.fftfreq(h)[:, None]
            fx = np.fft.rfftfreq(w)[None, :]
            freqs = np.sqrt(fx**2 + fy**2)
            scale = 1.0 / np.maximum(freqs, 1.0 / max(h, w)) ** self.decay
            self._scales[key] = torch.as_tensor(scale, dtype=like.dtype, device=like.device)
        return self._scales[key]

    def _color(self, t: torch.Tensor, *, inverse: bool = False) -> torch.Tensor:
        if not self.decorrelate or t.shape[1] != 3:
            return t
        matrix = np.linalg.inv(_COLOR) if inverse else _COLOR
        m = torch.as_tensor(matrix, dtype=t.dtype, device=t.device)
        return torch.einsum("ij,bjhw->bihw", m, t)

    def unbounded(self, raw: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        _, h, w = shape
        spectrum = torch.view_as_complex(raw.contiguous()) * self._scale(h, w, raw)
        t = torch.fft.irfft2(spectrum, s=(h, w), norm="ortho") / _FOURIER_DIVISOR
        return self._color(t)

    def from_unbounded(self, t: torch.Tensor) -> torch.Tensor:
        h, w = t.shape[-2:]
        t = self._color(t, inverse=True) * _FOURIER_DIVISOR
        spectrum = torch.fft.rfft2(t, norm="ortho") / self._scale(h, w, t)
        return torch.view_as_real(spectrum).contiguous()

    def __repr__(self) -> str:
        return f"fourier(decay={self.decay:g}, decorrelate={self.decorrelate})"


def pixels(*, sd: float = 0.01) -> Pixels:
    """Pixel parameterisation (see :class:`Pixels`)."""
    return Pixels(sd=sd)


def fourier(*, decay: float = 1.0, decorrelate: bool = True, sd: float = 0.01) -> Fourier:
    """Fourier (decorrelated) parameterisation (see :class:`Fourier`)."""
    return Fourier(decay=decay, decorrelate=decorrelate, sd=sd)


def resolve(param: str | Parameterization) -> Parameterization:
    """Turn ``"pixels"``/``"pixel"``/``"fourier"`` or an instance into a parameterisation."""
    if isinstance(param, Parameterization):
        return param
    if param in ("pixel", "pixels"):
        return Pixels()
    if param == "fourier":
        return Fourier()
    raise ValueError(
        "param: expected 'fourier', 'pixels' or a Parameterization (xaikit.featureviz.param), "
        f"got {param!r}"
    )


def _check_image_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise ValueError(
            f"param: the Fourier parameterisation needs images (C, H, W), got items of shape "
            f"{tuple(shape)}; use param='pixels'"
        )
    return shape  # type: ignore[return-value]
