"""Class activation maps: Grad-CAM and Grad-CAM++, for convolutional nets and transformers.

Both weight the layer's feature maps A_k by how much the target score depends on them and keep
the positive part: cam = ReLU(sum_k w_k A_k), upsampled bilinearly to the input. They differ
only in the channel weights w_k, so one function does the hooks, the upsampling and the result.

A vision transformer's layer gives tokens ``(N, T, D)``, not maps: the tokens that are not
patches (class, distillation and register tokens, in front) are dropped and the rest laid out
on the patch grid, ``(N, D, h, w)`` (:func:`token_grid`). The default layer is found by
:func:`default_cam_layer` (the rule is in docs/methods.md).
"""

from __future__ import annotations

import warnings
import weakref

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xaikit._torch import first_tensor
from xaikit.attribution.registry import Attribution, register
from xaikit.attribution.tokens import token_grid, token_grid_shape
from xaikit.model import Model

# The default layer per model and item shape: finding it costs one or two passes.
_CHOSEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def last_conv_layer(model: Model) -> str:
    """Path of the last ``nn.Conv2d`` in the model (registration order)."""
    convs = [name for name, m in model.module.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("layer: the model has no nn.Conv2d layer; give layer= a module path")
    return convs[-1]


def default_cam_layer(model: Model, x: np.ndarray) -> str:
    """The layer Grad-CAM uses when none is given: the output of the last block.

    A *block* is a module with submodules that is an element of an ``nn.Sequential`` or
    ``nn.ModuleList`` (a residual block, a stage, a transformer layer) and whose output is a
    spatial map ``(N, C, h, w)`` with ``h * w > 1`` or a token sequence that lays out on the
    input's patch grid. The last block to finish in one forward pass is chosen, except when
    the score does not depend on its patch tokens (a ViT classifies from the class token
    alone after its last layer): then the tokens where they enter the last block, as its first
    submodule (a ViT's first LayerNorm) gives them. A model without such blocks (a
    plain chain of layers) uses its last ``nn.Conv2d``.
    """
    module = model.module
    parents = {name: m for name, m in module.named_modules()}
    candidates = [(n, m) for n, m in parents.items() if n and _is_block(n, m, parents)]
    if not candidates:  # a plain chain of layers: no forward pass needed
        return last_conv_layer(model)
    key = tuple(x.shape[1:])
    known = _CHOSEN.setdefault(module, {})
    if key not in known:
        known[key] = _last_block(model, x, candidates)
    return known[key]


def _finish_order(model: Model, x: np.ndarray, modules: list) -> list[tuple[str, tuple]]:
    """``(name, output shape)`` of ``modules`` in the order their forwards finish, one item."""
    finished: list[tuple[str, tuple[int, ...]]] = []

    def recorder(name: str):
        def hook(_m, _i, output):
            tensor = first_tensor(output)
            if tensor is not None:
                finished.append((name, tuple(tensor.shape)))

        return hook

    handles = [m.register_forward_hook(recorder(name)) for name, m in modules]
    try:
        model.scores(x[:1], check=False)
    finally:
        for handle in handles:
            handle.remove()
    return finished


def _last_block(model: Model, x: np.ndarray, candidates: list) -> str:
    finished = _finish_order(model, x, candidates)
    size = tuple(x.shape[2:])
    blocks = []
    for name, shape in finished:
        spatial = len(shape) == 4 and shape[2] * shape[3] > 1 and shape[1] * shape[2] > 1
        tokens = len(shape) == 3 and token_grid_shape(shape[1], size) is not None
        if (spatial or tokens) and name not in blocks:
            blocks.append(name)
    if not blocks:
        return last_conv_layer(model)
    last = blocks[-1]
    shape = dict(finished)[last]
    if len(shape) == 4 or _patch_tokens_matter(model, x, last, shape, size):
        return last
    # Only the class token leaves the last block: take its tokens where they enter it, as its
    # first normalisation (or other submodule) gives them, before attention mixes them.
    inside = [(n, m) for n, m in model.module.named_modules() if n.startswith(last + ".")]
    for name, inner_shape in _finish_order(model, x, inside):
        if inner_shape == shape and _patch_tokens_matter(model, x, name, shape, size):
            return name
    return blocks[-2] if len(blocks) > 1 else last


def channels_last(shape: tuple[int, ...], size: tuple[int, ...]) -> bool:
    """Whether a 4-D layer output is ``(N, h, w, C)`` (timm's Swin stages), not ``(N, C, h, w)``.

    The spatial axes are the pair that lays out on the input as a grid of square cells.
    """

    def grid(h: int, w: int) -> bool:
        return h > 1 and size[0] % h == 0 and size[1] % w == 0 and size[0] // h == size[1] // w

    return len(size) == 2 and grid(shape[1], shape[2]) and not grid(shape[2], shape[3])


def _is_block(name: str, module: nn.Module, modules: dict[str, nn.Module]) -> bool:
    parent_name, _, last = name.rpartition(".")
    parent = modules.get(parent_name)
    return (
        last.isdigit()
        and isinstance(parent, (nn.Sequential, nn.ModuleList))
        and next(module.children(), None) is not None
    )


def _patch_tokens_matter(model: Model, x: np.ndarray, name: str, shape, size) -> bool:
    """Whether the predicted score's gradient at ``name`` is non-zero at some patch token."""
    _scores, _values, grads = model.layer_gradients(x[:1], layer=name, as_numpy=False)
    extra, _h, _w = token_grid_shape(shape[1], size)
    return bool(grads[:, extra:].abs().amax() > 0)


@register(
    "gradcam",
    needs_gradients=True,
    needs_hooks=True,
    scores_at_input=True,
    reference="Selvaraju et al. 2017, arXiv:1610.02391",
)
def gradcam(
    model: Model, x: np.ndarray, targets: np.ndarray, *, layer: str | None = None
) -> Attribution:
    """Grad-CAM: feature maps weighted by their spatially averaged gradients.

    w_k = mean_ij dy/dA_k[i, j]; cam = ReLU(sum_k w_k A_k). ``layer`` is a module path
    (default: the output of the last block, see :func:`default_cam_layer`). The map,
    upsampled bilinearly to the input, is repeated over the input's channels; the
    layer-resolution map is in ``info["cam"]``.
    Selvaraju et al. (2017), "Grad-CAM: visual explanations from deep networks".
    """
    return _cam(model, x, targets, layer=layer, weigh=_gradcam_weights)


@register(
    "gradcam++",
    needs_gradients=True,
    needs_hooks=True,
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


def _warn_if_no_gradient(grads: torch.Tensor, layer: str) -> None:
    """An all-zero map that says nothing must not pass for "no evidence anywhere"."""
    flat = grads.reshape(len(grads), -1)
    dead = ~flat.ne(0).any(dim=1)
    if dead.any():
        warnings.warn(
            f"layer: the score does not depend on layer {layer!r}'s output at the positions "
            f"of the map (zero gradient there) for {int(dead.sum())} of {len(grads)} item(s), "
            "so their maps are all zero and show nothing; a transformer that classifies from "
            "its class token reads the patch tokens only up to the last block: take them "
            "where they enter it (its first LayerNorm, the default with layer=None)",
            RuntimeWarning,
            stacklevel=5,
        )


def _cam(model: Model, x: np.ndarray, targets: np.ndarray, *, layer: str | None, weigh):
    if np.ndim(x) != 4:
        raise ValueError(f"x: Grad-CAM needs images (C, H, W), got items of shape {x.shape[1:]}")
    layer = layer or default_cam_layer(model, x)
    # Gradients at the layer only: the backward pass stops there instead of reaching the input.
    scores, activations, grads = model.layer_gradients(x, targets, layer=layer, as_numpy=False)
    # float32 for half-precision layers, float64 kept for a float64 model
    dtype = torch.float64 if activations.dtype == torch.float64 else torch.float32
    activations, grads = activations.to(dtype), grads.to(dtype)
    if activations.ndim == 3:  # transformer tokens (N, T, D): patch tokens on their grid
        activations = token_grid(activations, tuple(x.shape[2:]))
        grads = token_grid(grads, tuple(x.shape[2:]))
    elif activations.ndim == 4 and channels_last(tuple(activations.shape), tuple(x.shape[2:])):
        activations, grads = activations.permute(0, 3, 1, 2), grads.permute(0, 3, 1, 2)
    if activations.ndim != 4:
        raise ValueError(
            f"layer: Grad-CAM needs a layer with (N, C, h, w) outputs or patch tokens "
            f"(N, T, D); {layer!r} gives {tuple(activations.shape)}"
        )
    _warn_if_no_gradient(grads, layer)
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
