"""Every model family users bring × every method: right by the method's own check, or refused.

The families and the checks are in ``tests/_families.py`` (shared with
``benchmarks/families.py``, which writes the same matrix into docs/models.md). A pair passes
when the explanation passes the method's own check (completeness, efficiency, summation to
delta, equality with Captum, ...) or when xaikit refuses it up front with an error that names
the argument it is about. A few pairs must run (they are the point of the families), and a
few must be refused with a reason that names the model.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

import _families as families
import xaikit as xk

METHODS = sorted(xk.methods())


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers' notices about random weights
        yield


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", list(families.FAMILIES))
def test_each_family_runs_each_method_or_refuses_it_clearly(family, method):
    status, detail = families.outcome(family, method)
    assert status in ("ok", "refused"), detail


MUST_RUN = [
    ("ViT", "gradcam"),
    ("ViT", "attention_rollout"),
    ("DeiT", "attention_rollout"),
    ("Swin", "gradcam"),
    ("ConvNeXt", "gradcam"),
    ("ResNet (bottleneck)", "deeplift"),
    ("ResNet (bottleneck)", "lrp"),
    ("VGG-BN", "guided_backprop"),
    ("BERT", "integrated_gradients"),
    ("all-MiniLM-L6-v2", "kernel_shap"),
    ("LSTM", "saliency"),
]


@pytest.mark.parametrize(("family", "method"), MUST_RUN)
def test_the_families_point_runs(family, method):
    status, detail = families.outcome(family, method)
    assert status == "ok", detail


@pytest.mark.parametrize(
    ("family", "method", "named"),
    [
        ("ViT", "guided_backprop", "ViTForImageClassification"),
        ("Swin", "attention_rollout", "SwinForImageClassification"),
        ("ConvNeXt", "lrp", "ConvNextForImageClassification"),
        ("MobileNetV3", "lrp", "Hardswish"),
        ("GRU", "smoothgrad", "RecurrentClassifier"),
    ],
)
def test_a_refusal_names_the_family(family, method, named):
    status, detail = families.outcome(family, method)
    assert status == "refused"
    assert named in detail


def test_grad_cam_on_a_torchvision_resnet_uses_the_last_block_output():
    e = xk.explain(
        families.model("ResNet (bottleneck)"), families.inputs("image"), method="gradcam"
    )
    assert e.params["layer"] == "layer2.1"  # after the skip addition, not conv3 inside it


def test_grad_cam_on_a_vit_takes_the_tokens_entering_the_last_block():
    e = xk.explain(families.model("ViT"), families.inputs("image"), method="gradcam")
    assert e.params["layer"] == "vit.layers.1.layernorm_before"  # after it, only [CLS] counts
    assert e.info["cam"].shape == (4, 4)  # 32 px / patch 8, class token dropped


def test_the_docs_page_shows_this_matrix():
    page = (Path(__file__).resolve().parents[1] / "docs" / "models.md").read_text()
    assert families.matrix_table() in page, "run python benchmarks/families.py"
