"""The defaults the library and the ``xaikit`` command share, kept in one place.

- :data:`DEFAULT_METHOD`: what ``xk.explain`` and ``xaikit explain`` run when no method is
  named. Occlusion (Zeiler & Fergus 2014), because it is the one method that works on every
  model xaikit takes (a PyTorch module, a ``predict_proba`` callable, ONNX, a pickle; images,
  rows and token ids), needs no gradient, no random seed and no reference path, and its value
  reads in one sentence: how much the score drops when that part of the input is covered.
  docs/methods.md says when to prefer another method.
- :func:`default_methods` and :data:`FAST_PARAMS`: the methods ``compare`` and ``report`` run
  (in the API and the command) when none are named, each with parameters that keep it to
  about a second on a small image.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DEFAULT_METHOD", "FAST_PARAMS", "default_methods", "fast_params"]

DEFAULT_METHOD = "occlusion"

# Parameters that keep every method to about a second on a small image; methods not listed run
# with their own defaults.
FAST_PARAMS: dict[str, dict[str, Any]] = {
    "smoothgrad": {"samples": 32},
    "integrated_gradients": {"steps": 32},
    "rise": {"samples": 1000},
    "lime": {"samples": 500},
    "kernel_shap": {"samples": 500},
}
IMAGE_METHODS = (
    "saliency", "input_x_gradient", "smoothgrad", "integrated_gradients", "gradcam",
    "guided_backprop", "occlusion", "rise", "lime", "kernel_shap",
)  # fmt: skip
ROW_METHODS = (
    "saliency", "input_x_gradient", "integrated_gradients", "occlusion", "lime", "kernel_shap",
)  # fmt: skip


def fast_params(names: Any) -> dict[str, dict[str, Any]]:
    """Method name -> its fast parameters, for methods named without parameters."""
    return {n: dict(FAST_PARAMS.get(n, {})) for n in names}


def default_methods(
    *, image: bool, gradients: bool, hooks: bool = True
) -> dict[str, dict[str, Any]]:
    """The methods compare and report run by default, with fast parameters.

    Images get the ten of :data:`IMAGE_METHODS` (not every registered method: no LRP, DeepLIFT,
    Grad-CAM++, or the methods that need background data or attention weights); rows (tabular
    data) the ones that make sense per feature (no Grad-CAM, Guided Backprop or RISE's image
    masks). Without gradients (a callable, ONNX,
    scikit-learn), only the perturbation methods; without hooks (TorchScript), no method that
    hooks or re-traces the model's layers.
    """
    # The catalogue registers every method; api.methods() would import this module back.
    from xaikit.attribution import _catalogue  # noqa: F401
    from xaikit.attribution.registry import METHODS

    names = IMAGE_METHODS if image else ROW_METHODS
    return fast_params(
        n
        for n in names
        if n in METHODS
        and (gradients or not METHODS[n].needs_gradients)
        and (hooks or not METHODS[n].needs_hooks)
    )
