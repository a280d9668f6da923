"""Random transforms applied to the image at every optimisation step: pad, jitter, scale, rotate.

An image that maximises the objective only at one exact pixel alignment is an adversarial
pattern; asking it to work under small random shifts, zooms and rotations ("transformation
robustness", Olah et al. 2017) removes much of that high-frequency noise.

Each transform draws its parameters from uniform numbers that the caller supplies, one row per
batch item. :func:`xaikit.visualize` draws those numbers for item ``i`` from item ``i``'s own
seed, so an item's transforms do not depend on which other items share its batch (batched
visualisation equals one item at a time).

All affine steps (jitter, scale, rotate) are composed into one sampling matrix per item and
applied with a single bilinear ``grid_sample``, so the image is resampled once per step, not
once per transform (each resampling blurs a little). Padding fills the border that the motion
reveals; the output has the input's size, so models with a fixed input size (a linear layer
after the convolutions) work.

References
----------
.. [1] Olah, Mordvintsev, Schubert (2017). Feature visualization. Distill.
.. [2] Mordvintsev, Olah, Tyka (2015). Inceptionism: going deeper into neural networks. Google
   Research blog (jitter).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from xaikit._validation import describe

__all__ = ["Pad", "Transform", "Transforms", "default", "jitter", "pad", "rotate", "scale"]


class Transform:
    """One random transform. ``draws`` uniform numbers per item and step decide its parameters.

    Affine transforms return, for each item, the 3x3 matrix that maps an output pixel position
    (pixel units, origin at the image centre) to the input position it samples.
    """

    draws = 0

    def matrix(self, u: torch.Tensor) -> torch.Tensor:
        """Sampling matrices ``(B, 3, 3)`` from uniforms ``u`` of shape ``(B, draws)``."""
        raise NotImplementedError


class Jitter(Transform):
    """Shift by a random whole number of pixels in ``[-pixels, pixels]`` on each axis."""

    draws = 2

    def __init__(self, pixels: int) -> None:
        self.pixels = _check_nonnegative_int(pixels, name="pixels")

    def matrix(self, u: torch.Tensor) -> torch.Tensor:
        shift = torch.floor(u * (2 * self.pixels + 1)).clamp(max=2 * self.pixels) - self.pixels
        m = _eye(u)
        m[:, 0, 2] = -shift[:, 0]  # content moves by +shift: output p samples input p - shift
        m[:, 1, 2] = -shift[:, 1]
        return m

    def __repr__(self) -> str:
        return f"jitter({self.pixels})"


class Scale(Transform):
    """Zoom by a random factor drawn uniformly from ``[low, high]``."""

    draws = 1

    def __init__(self, low: float, high: float) -> None:
        if not (0 < low <= high) or not math.isfinite(high):
            raise ValueError(f"factors: expected 0 < low <= high, got ({low}, {high})")
        self.low, self.high = float(low), float(high)

    def matrix(self, u: torch.Tensor) -> torch.Tensor:
        s = self.low + u[:, 0] * (self.high - self.low)
        m = _eye(u)
        m[:, 0, 0] = 1 / s
        m[:, 1, 1] = 1 / s
        return m

    def __repr__(self) -> str:
        return f"scale(({self.low:g}, {self.high:g}))"


class Rotate(Transform):
    """Rotate by a random angle drawn uniformly from ``[-degrees, degrees]``."""

    draws = 1

    def __init__(self, degrees: float) -> None:
        if not (math.isfinite(degrees) and degrees >= 0):
            raise ValueError(f"degrees: expected a non-negative angle, got {degrees}")
        self.degrees = float(degrees)

    def matrix(self, u: torch.Tensor) -> torch.Tensor:
        angle = (2 * u[:, 0] - 1) * math.radians(self.degrees)
        cos, sin = torch.cos(angle), torch.sin(angle)
        m = _eye(u)  # output p samples input R(-angle) p
        m[:, 0, 0], m[:, 0, 1] = cos, sin
        m[:, 1, 0], m[:, 1, 1] = -sin, cos
        return m

    def __repr__(self) -> str:
        return f"rotate({self.degrees:g})"


class Pad(Transform):
    """Pad by ``pixels`` on every side with ``value`` (default: the low end of the data range).

    Not random; it decides what a shifted or rotated image shows at its border. A constant
    border rather than a mirror: a dark border is what MNIST-style models saw in training.
    """

    def __init__(self, pixels: int, value: float | None = None) -> None:
        self.pixels = _check_nonnegative_int(pixels, name="pixels")
        self.value = None if value is None else float(value)

    def __repr__(self) -> str:
        return f"pad({self.pixels}" + ("" if self.value is None else f", {self.value:g}") + ")"


class Transforms:
    """A sequence of transforms applied together (pads first, then one composed resampling).

    Parameters
    ----------
    transforms : sequence of Transform
        In the order they act on the image.
    """

    def __init__(self, transforms: Sequence[Transform]) -> None:
        items = list(transforms)
        for t in items:
            if not isinstance(t, Transform):
                raise TypeError(
                    "transforms: expected Transform objects (xaikit.featureviz.transforms."
                    f"jitter, scale, rotate, pad), got {describe(t)}"
                )
        self.items = items
        self.pads = [t for t in items if isinstance(t, Pad)]
        self.affine = [t for t in items if not isinstance(t, Pad)]
        self.draws = sum(t.draws for t in self.affine)

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return f"[{', '.join(map(repr, self.items))}]"

    def __call__(self, x: torch.Tensor, u: torch.Tensor, *, fill: float) -> torch.Tensor:
        """Transform images ``x`` (B, C, H, W) with uniforms ``u`` (B, draws); same size out."""
        if not self.items:
            return x
        padding = sum(p.pixels for p in self.pads)
        if padding:
            # Several pads with different values: the outermost value wins, as padding twice would.
            value = next((p.value for p in reversed(self.pads) if p.value is not None), fill)
            x = F.pad(x, (padding,) * 4, mode="constant", value=value)
        if not self.affine:
            return x[..., padding : x.shape[-2] - padding, padding : x.shape[-1] - padding]
        u = u.to(torch.float64)
        matrix = torch.eye(3, dtype=torch.float64, device=x.device).expand(len(x), 3, 3)
        start = 0
        for t in self.affine:  # applying T1 then T2 samples input at M1 @ M2 @ p
            matrix = matrix @ t.matrix(u[:, start : start + t.draws])
            start += t.draws
        return _resample(x, matrix, out_size=(x.shape[-2] - 2 * padding, x.shape[-1] - 2 * padding))


def _resample(x: torch.Tensor, matrix: torch.Tensor, *, out_size: tuple[int, int]) -> torch.Tensor:
    """Sample ``x`` at ``matrix @ p`` for the pixel centres ``p`` of a central crop."""
    h, w = out_size
    canvas_h, canvas_w = x.shape[-2:]
    ys = torch.arange(h, dtype=torch.float64, device=x.device) - (h - 1) / 2
    xs = torch.arange(w, dtype=torch.float64, device=x.device) - (w - 1) / 2
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    points = torch.stack([gx, gy, torch.ones_like(gx)], dim=-1).reshape(-1, 3)  # (HW, 3)
    where = points @ matrix[:, :2, :].transpose(1, 2)  # (B, HW, 2), pixel units from the centre
    # grid_sample's normalised coordinates (align_corners=False): a centred pixel position c
    # on an axis of n pixels is 2c/n.
    grid = where / torch.tensor([canvas_w / 2, canvas_h / 2], dtype=torch.float64, device=x.device)
    grid = grid.reshape(len(x), h, w, 2).to(x.dtype)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def jitter(pixels: int) -> Jitter:
    """Random shift by up to ``pixels`` (whole pixels) on each axis."""
    return Jitter(pixels)


def scale(factors: tuple[float, float] = (0.9, 1.1)) -> Scale:
    """Random zoom by a factor in ``factors = (low, high)``."""
    if not isinstance(factors, (tuple, list)) or len(factors) != 2:
        raise TypeError(f"factors: expected (low, high), got {describe(factors)}")
    return Scale(*factors)


def rotate(degrees: float = 10.0) -> Rotate:
    """Random rotation by up to ``degrees`` either way."""
    return Rotate(degrees)


def pad(pixels: int, value: float | None = None) -> Pad:
    """Pad by ``pixels`` with ``value`` (default: the low end of the data range)."""
    return Pad(pixels, value)


def default(size: int) -> Transforms:
    """Lucid's standard transforms with pixel amounts scaled from 224 px to ``size``.

    Lucid (224 px): pad 12, jitter 8, scale 0.9-1.1, rotate +-10 degrees, jitter 4. At 28 px
    (MNIST): pad 2, jitter 1, scale 0.9-1.1, rotate +-10 degrees, jitter 1.
    """
    ratio = size / 224
    return Transforms(
        [
            pad(max(1, round(12 * ratio))),
            jitter(max(1, round(8 * ratio))),
            scale((0.9, 1.1)),
            rotate(10.0),
            jitter(max(1, round(4 * ratio))),
        ]
    )


def resolve(transforms, *, shape: tuple[int, ...]) -> Transforms:
    """``"default"``, ``None`` or a sequence of transforms -> :class:`Transforms`."""
    if transforms is None or (isinstance(transforms, str) and transforms == "none"):
        return Transforms([])
    if isinstance(transforms, str):
        if transforms != "default":
            raise ValueError(
                f"transforms: expected 'default', None or a list of transforms, got {transforms!r}"
            )
        # Inputs that are not images (C, H, W) have no pixels to move.
        return default(min(shape[-2:])) if len(shape) == 3 else Transforms([])
    if isinstance(transforms, Transforms):
        result = transforms
    elif isinstance(transforms, Transform):
        result = Transforms([transforms])
    elif isinstance(transforms, Sequence):
        result = Transforms(transforms)
    else:
        raise TypeError(
            f"transforms: expected 'default', None or a list of transforms, got "
            f"{describe(transforms)}"
        )
    if len(result) and len(shape) != 3:
        raise ValueError(f"transforms: need images (C, H, W), the items have shape {shape}")
    return result


def _eye(u: torch.Tensor) -> torch.Tensor:
    return torch.eye(3, dtype=u.dtype, device=u.device).repeat(len(u), 1, 1)


def _check_nonnegative_int(value, *, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name}: expected a non-negative int, got {describe(value)}")
    return value
