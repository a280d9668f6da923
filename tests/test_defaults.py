"""The defaults the API and the command share (attribution/defaults.py)."""

from __future__ import annotations

from xaikit.attribution.defaults import FAST_PARAMS, default_methods


def test_default_methods_for_images_with_gradients_are_every_image_method():
    chosen = default_methods(image=True, gradients=True)
    assert list(chosen) == [
        "saliency", "input_x_gradient", "smoothgrad", "integrated_gradients", "gradcam",
        "guided_backprop", "occlusion", "rise", "lime", "kernel_shap",
    ]  # fmt: skip
    assert chosen["integrated_gradients"] == FAST_PARAMS["integrated_gradients"]


def test_default_methods_without_gradients_are_the_perturbation_methods():
    assert list(default_methods(image=False, gradients=False)) == [
        "occlusion", "lime", "kernel_shap",
    ]  # fmt: skip
