"""Class activation maps from a convolutional layer: Grad-CAM and Grad-CAM++.

Both weight the layer's feature maps A_k by how much the target score depends on them and keep
the positive part: cam = ReLU(sum_k w_k A_k), upsampled bilinearly to the input. They differ
only in the channel weights w_k, so one function does the hooks, the upsampling and the result.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xaikit.attribution.registry import Attribution, register
from xaikit.model import Model


def last_conv_layer(model: Model) -> str:
    """Path of the last ``nn.Conv2d`` in the model (registration order)."""
    convs = [name for name, m in model.module.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("layer: the model has no nn.Conv2d layer; give layer= a module path")
    return convs[-1]


@register(
    "gradcam",
    needs_gradients=True,
    scores_at_input=True,
    reference="Selvaraju et al. 2017, arXiv:1610.02391",
)
def gradcam(
    model: Model, x: np.ndarray, targets: np.ndarray, *, layer: str | None = None
) -> Attribution:
    """Grad-CAM: feature maps weighted by their spatially averaged gradients.

    w_k = mean_ij dy/dA_k[i, j]; cam = ReLU(sum_k w_k A_k). ``layer`` is a module path
    (default: the last convolution). The map, upsampled bilinearly to the input, is repeated
    over the input's channels; the layer-resolution map is in ``info["cam"]``.
    Selvaraju et al. (2017), "Grad-CAM: visual explanations from deep networks".
    """
    return _cam(model, x, targets, layer=layer, weigh=_gradcam_weights)


@register(
    "gradcam++",
    needs_gradients=True,
    scores_at_input=True,
    reference="Chattopadhay et al. 2018, arXiv:1710.11063",
)
def gradcam_plus_plus(
    model: Model, x: np.ndarray, targets: np.ndarray, *, layer: str | None = None
) -> Attribution:
    """Grad-CAM++: channel weights from positive gradients weighted per position.

    alpha_ij = g^2 / (2 g^2 + sum_ab A_ab g^3), w_k = sum_ij alpha_ij ReLU(g_ij), with g the
    gradient of the target score (the paper's closed form for an exponential output).
    Chattopadhay et al. (2018), "Grad-CAM++: generalized gradient-based visual explanations".
    """
    return _cam(model, x, targets, layer=layer, weigh=_gradcam_pp_weights)


def _gradcam_weights(activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    return grads.mean(dim=(2, 3))


def _gradcam_pp_weights(activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    g2, g3 = grads**2, grads**3
    denominator = 2 * g2 + activations.sum(dim=(2, 3), keepdim=True) * g3
    alpha = torch.where(grads != 0, g2 / torch.where(denominator != 0, denominator, 1.0), 0.0)
    return (alpha * F.relu(grads)).sum(dim=(2, 3))


def _cam(model: Model, x: np.ndarray, targets: np.ndarray, *, layer: str | None, weigh):
    if np.ndim(x) != 4:
        raise ValueError(f"x: Grad-CAM needs images (C, H, W), got items of shape {x.shape[1:]}")
    layer = layer or last_conv_layer(model)
    # Gradients at the layer only: the backward pass stops there instead of reaching the input.
    scores, activations, grads = model.layer_gradients(x, targets, layer=layer, as_numpy=False)
    activations, grads = activations.float(), grads.float()
    if activations.ndim != 4:
        raise ValueError(
            f"layer: Grad-CAM needs a layer with (N, C, h, w) outputs; {layer!r} gives "
            f"{tuple(activations.shape)}"
        )
    weights = weigh(activations, grads)
    cam = F.relu((weights[:, :, None, None] * activations).sum(dim=1))
    upsampled = F.interpolate(cam[:, None], size=x.shape[2:], mode="bilinear", align_corners=False)
    values = upsampled.expand(-1, x.shape[1], -1, -1).cpu().numpy()
    return Attribution(
        values=np.ascontiguousarray(values),
        info={"cam": cam.cpu().numpy()},
        params={"layer": layer},
        scores=scores.cpu().numpy(),
    )
