"""RISE (Petsiuk et al. 2018): saliency as the score-weighted average of random soft masks.

Each mask is a random binary ``cell x cell`` grid (each cell kept with probability ``p``),
upsampled bilinearly to ``(cell + 1) * ceil(H / cell)`` pixels per side and cropped to ``H x W``
at a random shift below one cell (the paper's Sec. 3.2: smooth masks whose cell borders fall
anywhere). The saliency of pixel u is ``sum_i f(x * M_i) M_i(u) / (N p)`` (eq. 6), the
Monte-Carlo estimate of ``E[f(x * M) | M(u) = 1]``.

The low-resolution grids and shifts are drawn chunk by chunk (each block of draws from a
generator positioned where it began, so the masks equal one draw of all of them); the
full-size masks exist only one chunk at a time, upsampled and cropped, so memory is one chunk
whatever ``samples`` is, and the result does not depend on the chunk size.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from xaikit._draws import block_generators
from xaikit._progress import progress_bar
from xaikit._validation import check_count, check_number, check_seed, describe
from xaikit.attribution.perturbation import chunk_size, perturbation_scores, values_dtype
from xaikit.attribution.registry import Attribution, register
from xaikit.baselines import make_baseline
from xaikit.components import input_kind
from xaikit.model import Model


@register(
    "rise",
    needs_gradients=False,
    reference="Petsiuk, Das & Saenko 2018, RISE: Randomized input sampling for explanation "
    "of black-box models",
    scores_at_input=True,  # the input rides in the first batch of masks: explain skips its own
)
def rise(
    model: Model,
    x: np.ndarray,
    targets: np.ndarray | None,
    *,
    samples: int = 4000,
    cell: Any = None,
    p: float = 0.5,
    seed: int | None = 0,
    baseline: Any = 0.0,
) -> Attribution:
    """Score-weighted average of random smooth masks (Petsiuk et al. 2018, eq. 6).

    Parameters
    ----------
    samples : int
        Number of masks N (the paper uses 4000 to 8000).
    cell : int or tuple of int, optional
        Side of the low-resolution grid, per spatial axis. Default for images: ``side / 7``
        clipped to [2, 7]: 7 on 224 px (the paper's), 4 on 28 px; for 1-D inputs (tokens,
        features) cells of about 3 elements.
    p : float
        Probability that a grid cell is kept, in (0, 1] (paper: 0.5).
    seed : int or None
        Seed of the grids and shifts (default 0: reproducible as it is); the same seed gives
        the same saliency, ``None`` draws fresh randomness.
    baseline : number, str or array
        What masked-out pixels become (paper: 0); see :func:`xaikit.baselines.make_baseline`.

    References
    ----------
    Petsiuk, Das & Saenko 2018, RISE: Randomized input sampling for explanation of black-box
    models, BMVC.
    """
    samples = check_count(samples, name="samples")
    p = check_number(p, name="p", low=0, high=1, low_open=True, what="keep probability")
    seed = check_seed(seed)
    item = x.shape[1:]
    kind = input_kind(x[0])
    if kind == "text":
        raise TypeError(
            "x: RISE blends inputs with soft masks, which token ids do not allow; use "
            "occlusion, lime or kernel_shap for text (or pass float features)"
        )
    spatial = item[-2:] if kind == "image" else item
    cell = _resolve_cell(cell, spatial)
    cell_px = [math.ceil(d / c) for d, c in zip(spatial, cell, strict=True)]
    # per axis, torch's linear upsampling of a grid row to (cell + 1) * cell_px, as a matrix
    interpolation = [
        _interpolation_matrix(c, (c + 1) * px) for c, px in zip(cell, cell_px, strict=True)
    ]
    # All grids were drawn first, then the shifts axis by axis: one generator per block, drawn
    # chunk by chunk, gives the same masks in memory of one chunk whatever ``samples`` is.
    blocks = [(samples * math.prod(cell), None)]
    blocks += [(samples, lambda gen, b, c=c: gen.integers(0, c, b)) for c in cell_px]
    starts = block_generators(np.random.default_rng(seed), blocks)
    values = np.empty(x.shape, dtype=values_dtype(model, x))
    at_input = []  # the scores of each input itself
    for i in range(len(x)):
        grid_draws, *shift_draws = (copy.deepcopy(g) for g in starts)  # same masks per item
        base = make_baseline(x[i], baseline, seed=seed)
        size = chunk_size(x[i], n_background=len(base.values) if base.background else 1)
        saliency = np.zeros(int(np.prod(spatial)), dtype=np.float64)
        with progress_bar(samples, "RISE masks") as bar:
            for start in range(0, samples, size):
                b = min(start + size, samples) - start
                grids = grid_draws.random((b, *cell)) < p
                shifts = np.stack(
                    [g.integers(0, c, b) for g, c in zip(shift_draws, cell_px, strict=True)], axis=1
                )
                masks = _upsample(grids, shifts, interpolation, spatial)
                # the input itself (a mask of ones) joins the first chunk: one item more in a
                # batch costs less than a separate forward pass of one item
                keep = torch.cat([torch.ones_like(masks[:1]), masks]) if start == 0 else masks
                scores = perturbation_scores(
                    model, x[i], [keep.numpy()], baseline=base.values, background=base.background
                )
                if start == 0:
                    at_input.append(scores[0])
                    scores = scores[1:]
                target = int(at_input[i].argmax()) if targets is None else int(targets[i])
                # float32 product (no float64 copy of the masks), float64 running sum; in torch,
                # whose threads the forwards use: NumPy's BLAS threads would spin against them
                weights = torch.from_numpy(scores[:, target].astype(np.float32))
                saliency += (weights @ masks.reshape(len(masks), -1)).numpy()
                bar.advance(b)
        saliency /= samples * p
        values[i] = np.broadcast_to(saliency.reshape(spatial), item)
    return Attribution(values=values, params={"cell": cell}, scores=np.stack(at_input))


def _resolve_cell(cell: Any, spatial: tuple[int, ...]) -> tuple[int, ...]:
    if cell is None:
        if len(spatial) == 1:  # tokens and features: cells of about 3 elements
            return (math.ceil(spatial[0] / 3),)
        return tuple(max(2, min(7, round(d / 7))) for d in spatial)
    if isinstance(cell, (int, np.integer)) and not isinstance(cell, bool):
        cell = (int(cell),) * len(spatial)
    if (
        not isinstance(cell, (tuple, list))
        or len(cell) != len(spatial)
        or not all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in cell)
    ):
        raise TypeError(
            f"cell: expected an int or {len(spatial)} ints (one per spatial axis), got "
            f"{describe(cell)}"
        )
    if any(c < 1 or c > d for c, d in zip(cell, spatial, strict=True)):
        raise ValueError(f"cell: expected grid sizes in [1, input side {spatial}], got {cell}")
    return tuple(int(c) for c in cell)


def _upsample(grids, shifts, interpolation, spatial) -> torch.Tensor:
    """Soft masks ``(b, *spatial)``: bilinear upsampling of the grids, then shifted crops.

    Bilinear interpolation is separable, so upsampling a grid G and cropping at (dy, dx) is
    ``U_y[dy:dy+H] @ G @ U_x[dx:dx+W].T`` with ``U`` the 1-D interpolation matrix of
    ``F.interpolate`` (align_corners=False, ``interpolation``, one per axis): two small batched
    products instead of building the full upsampled masks and gathering crops from them.
    """
    factors = []
    for axis, (u, d) in enumerate(zip(interpolation, spatial, strict=True)):
        rows = torch.from_numpy(shifts[:, axis])[:, None] + torch.arange(d)[None, :]
        factors.append(u[rows])  # (b, d, c): the crop's rows of U, per mask
    grid = torch.from_numpy(grids).to(torch.float32)
    if len(spatial) == 1:
        return torch.bmm(factors[0], grid[:, :, None])[:, :, 0]
    return torch.bmm(torch.bmm(factors[0], grid), factors[1].transpose(1, 2))


def _interpolation_matrix(n: int, size: int) -> torch.Tensor:
    """``(size, n)`` matrix of torch's linear upsampling from n to size (align_corners=False)."""
    eye = torch.eye(n, dtype=torch.float32)[None]  # interpolate the n unit vectors at once
    return F.interpolate(eye, size=size, mode="linear", align_corners=False)[0].T.contiguous()
