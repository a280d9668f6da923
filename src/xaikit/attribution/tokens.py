"""Transformer tokens on the image's patch grid, shared by Grad-CAM and attention rollout.

A vision transformer's layer gives ``T`` tokens: a few extra ones in front (class,
distillation, register tokens) and one per patch of the image, row by row.
"""

from __future__ import annotations

import torch

MAX_EXTRA_TOKENS = 8  # class + distillation + register tokens in front of the patch tokens


def token_grid_shape(tokens: int, size: tuple[int, ...]) -> tuple[int, int, int] | None:
    """``(extra, h, w)`` when ``tokens`` = ``extra`` + a patch grid ``h x w`` of an image of
    ``size`` (square patches dividing both sides), with the fewest extra tokens; else None."""
    if len(size) != 2:
        return None
    height, width = size
    best = None
    for patch in range(1, min(height, width) + 1):
        if height % patch or width % patch:
            continue
        h, w = height // patch, width // patch
        extra = tokens - h * w
        if h * w > 1 and 0 <= extra <= MAX_EXTRA_TOKENS and (best is None or extra < best[0]):
            best = (extra, h, w)
    return best


def token_grid(tokens: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Tokens ``(N, T, D)`` as maps ``(N, D, h, w)``: the extra tokens in front dropped."""
    found = token_grid_shape(tokens.shape[1], size)
    if found is None:
        raise ValueError(
            f"layer: its {tokens.shape[1]} tokens do not lay out on a patch grid of the "
            f"{size[0]}x{size[1]} input (at most {MAX_EXTRA_TOKENS} class/register tokens in "
            "front); give layer= a block of the encoder"
        )
    extra, h, w = found
    patches = tokens[:, extra:]
    return patches.transpose(1, 2).reshape(len(tokens), tokens.shape[2], h, w)
