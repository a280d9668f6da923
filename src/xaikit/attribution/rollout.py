"""Attention rollout for vision transformers: how much of the class token comes from each patch.

Each layer's attention, averaged over heads and mixed half-and-half with the identity for the
skip connection (rows renormalised), is multiplied from the first layer up; the class token's
row of the product says how much of each input token flows into it. The patch tokens' shares,
laid out on the patch grid and upsampled to the image, are the map. It ignores the class (one
map for every target) and the MLP blocks: a view of the information flow, not an attribution
that adds up to a score (Abnar & Zuidema 2020).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from xaikit._torch import model_output, preserved_state
from xaikit.attribution.registry import Attribution, register
from xaikit.attribution.tokens import token_grid_shape
from xaikit.model import Model

REFERENCE = "Abnar & Zuidema 2020, arXiv:2005.00928"
CHUNK = 32  # items per forward pass; attention weights are (layers, N, heads, T, T)


def rollout_matrix(weights: np.ndarray, *, residual: bool = True) -> np.ndarray:
    """Attention rollout of weights ``(layers, heads, T, T)``: a ``(T, T)`` matrix.

    Heads are averaged; with ``residual`` the identity is mixed in half-and-half for the skip
    connection and rows are renormalised; the layers' matrices are multiplied from the first
    layer up. Rows of the result sum to 1 (Abnar & Zuidema 2020, "Quantifying attention flow
    in transformers").
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 4 or w.shape[-1] != w.shape[-2]:
        raise ValueError(f"weights: expected shape (layers, heads, T, T), got {w.shape}")
    result = np.eye(w.shape[-1])
    for layer in w:
        a = layer.mean(axis=0)
        if residual:
            a = 0.5 * a + 0.5 * np.eye(len(a))
            a = a / a.sum(axis=1, keepdims=True)
        result = a @ result
    return result


@register(
    "attention_rollout",
    needs_gradients=True,  # no gradients, but a PyTorch model: the flag's test of one
    needs="attention weights",
    scores_at_input=True,
    reference=REFERENCE,
)
def attention_rollout(
    model: Model, x: np.ndarray, targets: np.ndarray | None, *, residual: bool = True
) -> Attribution:
    """Attention rollout of a vision transformer (Abnar & Zuidema 2020, arXiv:2005.00928).

    The model must return attention weights when called with ``output_attentions=True`` (a
    Hugging Face ViT or DeiT loaded with ``attn_implementation="eager"``). The class token's
    row over the patch tokens (the mean row when there is no extra token), upsampled
    bilinearly to the image, repeated over its channels; the patch-grid map is in
    ``info["rollout"]`` and the share kept by the extra tokens in ``info["extra_share"]``.
    Windowed attention (Swin) has no global token-to-token matrix and is refused. For text
    models use :func:`xaikit.text.explain`.
    """
    if x.ndim != 4:
        raise ValueError(
            f"x: attention_rollout here takes images (C, H, W), got items of shape "
            f"{x.shape[1:]}; for text use xaikit.text.explain(..., method='attention_rollout')"
        )
    size = tuple(x.shape[2:])
    module = model.module
    if getattr(getattr(module, "config", None), "window_size", None) is not None:
        raise ValueError(_windowed(module, "its config has a window_size"))
    dtype = next((p.dtype for p in module.parameters() if p.dtype.is_floating_point), None)
    maps, extras, scores = [], [], []
    with preserved_state(module), torch.inference_mode():
        for start in range(0, len(x), CHUNK):
            chunk = torch.as_tensor(x[start : start + CHUNK], device=model.device, dtype=dtype)
            try:
                out = module(chunk, output_attentions=True, **model.forward_kwargs)
            except TypeError as err:
                raise ValueError(
                    f"model: attention_rollout needs a transformer that returns its attention "
                    f"weights (output_attentions=True); {type(module).__name__} does not take "
                    f"it ({err})"
                ) from err
            weights = _attentions(out, len(chunk), module)
            logits = model_output(out)
            scores.append(logits.float().cpu().numpy())
            for i in range(len(chunk)):
                matrix = rollout_matrix(weights[:, i], residual=residual)
                grid = token_grid_shape(matrix.shape[0], size)
                if grid is None:
                    raise ValueError(
                        f"model: its {matrix.shape[0]} tokens do not lay out on a patch grid of "
                        f"the {size[0]}x{size[1]} input"
                    )
                extra, h, w = grid
                row = matrix[0] if extra else matrix.mean(axis=0)
                maps.append(row[extra:].reshape(h, w))
                extras.append(float(row[:extra].sum()))
    grid_maps = torch.as_tensor(np.stack(maps), dtype=torch.float32)
    upsampled = F.interpolate(grid_maps[:, None], size=size, mode="bilinear", align_corners=False)
    values = upsampled.expand(-1, x.shape[1], -1, -1).numpy()
    return Attribution(
        values=np.ascontiguousarray(values, dtype=np.float32),
        info={"rollout": grid_maps.numpy(), "extra_share": np.array(extras)},
        params={"residual": bool(residual)},
        scores=np.concatenate(scores),
    )


def _attentions(out, n: int, module) -> np.ndarray:
    """The attention weights in a forward's output as ``(layers, N, heads, T, T)``."""
    if not hasattr(out, "attentions"):
        raise ValueError(
            f"model: {type(module).__name__} returns no attention weights (not a transformer?); "
            "attention_rollout needs a vision transformer such as ViT or DeiT"
        )
    attentions = out.attentions
    if not attentions or any(a is None for a in attentions):
        raise ValueError(
            f"model: {type(module).__name__} returned no attention weights; load it with "
            "attn_implementation='eager' (other attention kernels do not return them)"
        )
    shapes = {tuple(a.shape) for a in attentions}
    if any(len(s) != 4 or s[0] != n or s[-1] != s[-2] for s in shapes) or len(shapes) != 1:
        raise ValueError(_windowed(module, f"attention shapes {sorted(shapes)[:2]}"))
    return torch.stack([a.float() for a in attentions]).cpu().numpy()


def _windowed(module, evidence: str) -> str:
    return (
        f"model: {type(module).__name__}'s attention is not one global token-to-token matrix "
        f"per layer ({evidence}: windowed attention, as in Swin?); rollout needs global "
        "attention (ViT, DeiT); use gradcam or integrated_gradients for this model"
    )
