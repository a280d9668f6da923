"""The model families users bring, built small here, and every method's own check on them.

Used by ``tests/test_families.py`` (the matrix must hold) and ``benchmarks/families.py`` (which
writes the matrix into docs/models.md). Every model is built from a config or written here with
random weights (no download): Hugging Face vision models (ViT, DeiT, Swin, ConvNeXt, ResNet,
MobileViT), torchvision-style networks written here (torchvision and timm do not import beside
the pinned CPU torch: ResNet with bottlenecks, VGG with BatchNorm, MobileNetV3 with
squeeze-excitation and hard-swish, DenseNet blocks), an LSTM and a GRU text model, a BERT
classifier from a config, and the packaged all-MiniLM-L6-v2.

:func:`outcome` runs one method on one family and returns ``("ok", check)`` when the result
passes the method's own check, or ``("refused", message)`` when xaikit refused the pair with a
clear error before computing (a ``ValueError``/``TypeError`` raised by xaikit, its message
starting with the argument it is about). Anything else raises.
"""

from __future__ import annotations

import functools
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

import xaikit as xk

SIDE = 32
CLASSES = 3
TOKENS = 8
VOCAB = 40
ARGUMENTS = ("x", "model", "method", "layer", "composite", "baseline", "target")


# ---------------------------------------------------------------------- torchvision-style nets


class Bottleneck(nn.Module):
    """ResNet's bottleneck: 1x1 down, 3x3, 1x1 up, BatchNorm after each, skip added, ReLU."""

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        cout = width * 4
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        skip = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + skip)


class ResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(2)
        self.layer1 = nn.Sequential(Bottleneck(8, 4), Bottleneck(16, 4))
        self.layer2 = nn.Sequential(Bottleneck(16, 8, stride=2), Bottleneck(32, 8))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, CLASSES)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def vgg_bn() -> nn.Module:
    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

    features = nn.Sequential(
        *block(3, 8), *block(8, 8), nn.MaxPool2d(2), *block(8, 16), nn.MaxPool2d(2)
    )
    return nn.Sequential(
        features, nn.Flatten(), nn.Linear(16 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, CLASSES)
    )


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, squeezed: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeezed, 1)
        self.fc2 = nn.Conv2d(squeezed, channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x):
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return x * scale


class InvertedResidual(nn.Module):
    """MobileNetV3's block: expand 1x1, depthwise 3x3, squeeze-excitation, project 1x1."""

    def __init__(self, cin: int, expanded: int, cout: int, stride: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(cin, expanded, 1, bias=False),
            nn.BatchNorm2d(expanded),
            nn.Hardswish(),
            nn.Conv2d(expanded, expanded, 3, stride, 1, groups=expanded, bias=False),
            nn.BatchNorm2d(expanded),
            nn.Hardswish(),
            SqueezeExcitation(expanded, max(expanded // 4, 4)),
            nn.Conv2d(expanded, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        out = self.block(x)
        return x + out if self.residual else out


def mobilenet_v3() -> nn.Module:
    stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.Hardswish())
    last = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.Hardswish())
    features = nn.Sequential(
        stem, InvertedResidual(8, 16, 8, 1), InvertedResidual(8, 24, 16, 2), last
    )
    return nn.Sequential(
        features,
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 32),
        nn.Hardswish(),
        nn.Linear(32, CLASSES),
    )


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(cin, 2 * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(2 * growth)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(2 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x):
        new = self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))
        return torch.cat([x, new], 1)


def densenet() -> nn.Module:
    features = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.Sequential(DenseLayer(8, 4), DenseLayer(12, 4)),
        nn.Sequential(nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 1), nn.AvgPool2d(2)),
        nn.Sequential(DenseLayer(8, 4), DenseLayer(12, 4)),
        nn.BatchNorm2d(16),
    )
    return nn.Sequential(
        features, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, CLASSES)
    )


# ---------------------------------------------------------------------- Hugging Face models


def _hf(config_name: str, model_name: str, **config) -> nn.Module:
    import transformers

    cfg = getattr(transformers, config_name)(num_labels=CLASSES, **config)
    cfg._attn_implementation = "eager"  # attention weights for rollout
    return getattr(transformers, model_name)(cfg)


VIT = dict(
    image_size=SIDE, patch_size=8, hidden_size=32, num_hidden_layers=2,
    num_attention_heads=2, intermediate_size=64,
)  # fmt: skip


def hf_vit():
    return _hf("ViTConfig", "ViTForImageClassification", **VIT)


def hf_deit():
    return _hf("DeiTConfig", "DeiTForImageClassification", **VIT)


def hf_swin():
    return _hf(
        "SwinConfig", "SwinForImageClassification", image_size=SIDE, patch_size=4,
        embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4,
    )  # fmt: skip


def hf_convnext():
    return _hf(
        "ConvNextConfig", "ConvNextForImageClassification", hidden_sizes=[8, 16],
        depths=[1, 1], num_stages=2,
    )  # fmt: skip


def hf_resnet():
    return _hf(
        "ResNetConfig", "ResNetForImageClassification", embedding_size=8,
        hidden_sizes=[8, 16], depths=[1, 1], layer_type="bottleneck",
    )  # fmt: skip


def hf_mobilevit():
    return _hf(
        "MobileViTConfig", "MobileViTForImageClassification", image_size=SIDE,
        hidden_sizes=[16, 24, 32], neck_hidden_sizes=[8, 8, 16, 16, 24, 24, 48],
    )  # fmt: skip


# ---------------------------------------------------------------------- text models


class RecurrentClassifier(nn.Module):
    """Token ids (N, L) -> embedding -> LSTM or GRU -> last state -> logits."""

    def __init__(self, cell: str) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, 16)
        self.rnn = (nn.LSTM if cell == "lstm" else nn.GRU)(16, 16, batch_first=True)
        self.head = nn.Linear(16, CLASSES)

    def forward(self, ids):
        out, _ = self.rnn(self.embedding(ids))
        return self.head(out[:, -1])


def bert():
    import transformers

    from xaikit.text import TextModel, Tokenizer

    cfg = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, num_labels=CLASSES, initializer_range=0.5,
    )  # fmt: skip
    cfg._attn_implementation = "eager"
    words = [f"w{i}" for i in range(VOCAB - 6)]
    return TextModel.from_hf(
        transformers.BertForSequenceClassification(cfg), Tokenizer.from_words(words)
    )


def minilm():
    from xaikit.text import load_minilm

    return load_minilm(None)


@dataclass(frozen=True)
class Family:
    name: str
    build: Callable[[], nn.Module]
    kind: str  # "image" or "text"
    source: str  # where the architecture comes from, for the docs


FAMILIES = {
    f.name: f
    for f in (
        Family("ViT", hf_vit, "image", "transformers ViTForImageClassification"),
        Family("DeiT", hf_deit, "image", "transformers DeiTForImageClassification"),
        Family("Swin", hf_swin, "image", "transformers SwinForImageClassification"),
        Family("ConvNeXt", hf_convnext, "image", "transformers ConvNextForImageClassification"),
        Family("HF ResNet", hf_resnet, "image", "transformers ResNetForImageClassification"),
        Family("MobileViT", hf_mobilevit, "image", "transformers MobileViTForImageClassification"),
        Family("ResNet (bottleneck)", ResNet, "image", "torchvision-style, written here"),
        Family("VGG-BN", vgg_bn, "image", "torchvision-style, written here"),
        Family("MobileNetV3", mobilenet_v3, "image", "torchvision-style, written here"),
        Family("DenseNet", densenet, "image", "torchvision-style, written here"),
        Family("LSTM", lambda: RecurrentClassifier("lstm"), "text", "written here"),
        Family("GRU", lambda: RecurrentClassifier("gru"), "text", "written here"),
        Family("BERT", bert, "text", "transformers BertForSequenceClassification"),
        Family("all-MiniLM-L6-v2", minilm, "text", "packaged sentence encoder + head"),
    )
}


@functools.cache
def model(name: str) -> nn.Module:
    """The family's model, built once per process with fixed random weights, in eval mode."""
    torch.manual_seed(0)
    return FAMILIES[name].build().eval()


@functools.cache
def inputs(kind: str) -> np.ndarray:
    rng = np.random.default_rng(0)
    if kind == "image":
        return rng.random((3, SIDE, SIDE), dtype=np.float32)
    return rng.integers(6, VOCAB, TOKENS)


# Small settings: the matrix checks correctness, not quality.
PARAMS = {
    "integrated_gradients": {"steps": "auto", "baseline": 0.5},
    "smoothgrad": {"samples": 4, "seed": 0},
    "expected_gradients": {"samples": 8, "seed": 0},
    "kernel_shap": {"samples": 200, "seed": 0, "baseline": 0.0},
    "lime": {"samples": 200, "seed": 0},
    "rise": {"samples": 64, "seed": 0},
    "occlusion": {"window": 8, "stride": 8},
}
BACKGROUND = ("deeplift_shap", "expected_gradients")  # they take background data


def params(method: str, kind: str) -> dict:
    given = dict(PARAMS.get(method, {}))
    if method == "integrated_gradients" and kind == "text":  # at the embeddings: fixed steps
        given = {"steps": 256}
    if method in BACKGROUND:
        rng = np.random.default_rng(1)
        shape = (4, *inputs(kind).shape)
        given["baseline"] = (
            rng.random(shape, dtype=np.float32)
            if kind == "image"
            else rng.integers(6, VOCAB, shape)
        )
    return given


def scores(module: nn.Module, x: np.ndarray) -> np.ndarray:
    return xk.Model(module).scores(x[None])[0]


def close(a: float, b: float, *, rel: float, scale: float) -> bool:
    return abs(a - b) <= rel * max(scale, 1e-6)


def check(method: str, module: nn.Module, x: np.ndarray, e: xk.Explanation) -> str:
    """The method's own check on its result; returns what was checked (AssertionError if not)."""
    values = np.asarray(e.values, dtype=np.float64)
    assert values.shape == x.shape and np.isfinite(values).all(), "values: shape or NaN"
    f = scores(module, x)
    spread = float(np.ptp(f)) + abs(float(f[e.target]))
    if method in ("integrated_gradients",):
        gap = abs(float(np.asarray(e.info["completeness_gap"])))
        assert gap <= 0.01 * spread, f"completeness gap {gap:.3g} at {e.params['steps']} steps"
        return "completeness"
    if method == "deeplift":
        zero = scores(module, np.zeros_like(x))
        delta = float(f[e.target] - zero[e.target])
        assert close(values.sum(), delta, rel=1e-3, scale=spread), "summation to delta"
        return "summation to delta"
    if method == "deeplift_shap":
        background = params(method, e.kind)["baseline"]
        mean = xk.Model(module).scores(background)[:, e.target].mean()
        delta = float(f[e.target] - mean)
        assert close(values.sum(), delta, rel=1e-3, scale=spread), "summation to mean delta"
        return "summation to delta"
    if method == "kernel_shap":
        removed = scores(module, np.zeros_like(x))
        delta = float(f[e.target] - removed[e.target])
        total = float(np.asarray(e.component_values).sum())
        assert close(total, delta, rel=1e-3, scale=spread), f"efficiency {total} vs {delta}"
        return "efficiency"
    if method in ("saliency", "input_x_gradient", "guided_backprop") and x.dtype.kind == "f":
        reference = captum_reference(method, module, x, int(e.target))
        assert np.allclose(values, reference, rtol=1e-4, atol=1e-6 * np.abs(reference).max()), (
            "differs from Captum"
        )
        return "= Captum"
    if method == "occlusion" and x.dtype.kind == "f":
        reference = captum_reference(method, module, x, int(e.target))
        assert np.allclose(values, reference, rtol=1e-4, atol=1e-6 * spread), "differs from Captum"
        return "= Captum"
    if method in ("gradcam", "gradcam++"):
        layer = e.params["layer"]
        assert (values >= 0).all(), "a CAM is non-negative"
        assert "embed" not in layer, f"layer {layer} is the patch embedding"
        assert np.asarray(e.info["cam"]).size > 1, "a map with one cell"
        return f"CAM at {layer}"
    if method == "attention_rollout":
        total = float(np.asarray(e.info["rollout"]).sum() + e.info["extra_share"])
        assert abs(total - 1) < 1e-5, f"rollout row sums to {total}"
        return "row sums to 1"
    if method in ("smoothgrad", "rise", "lime", "expected_gradients"):
        again = xk.explain(module, x, method=method, **params(method, e.kind))
        assert np.array_equal(again.values, e.values), "not reproducible with its seed"
        return "reproducible"
    return "finite"


def captum_reference(method: str, module: nn.Module, x: np.ndarray, target: int) -> np.ndarray:
    from captum.attr import GuidedBackprop, InputXGradient, Occlusion, Saliency

    class Logits(nn.Module):  # Captum wants a tensor out; HF models return an output object
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, t):
            out = self.inner(t)
            return out if isinstance(out, torch.Tensor) else out.logits

    wrapped = Logits(module).eval()
    t = torch.as_tensor(x[None])
    if method == "saliency":
        out = Saliency(wrapped).attribute(t, target=target, abs=True)
    elif method == "input_x_gradient":
        out = InputXGradient(wrapped).attribute(t, target=target)
    elif method == "guided_backprop":
        out = GuidedBackprop(wrapped).attribute(t, target=target)
    else:
        out = Occlusion(wrapped).attribute(
            t, target=target, sliding_window_shapes=(3, 8, 8), strides=(3, 8, 8), baselines=0.0
        )
    return out[0].detach().numpy()


@functools.cache
def outcome(family: str, method: str) -> tuple[str, str]:
    """``("ok", what was checked)`` or ``("refused", the error's message)``."""
    module = model(family)
    x = inputs(FAMILIES[family].kind)
    try:
        e = xk.explain(module, x, method=method, **params(method, FAMILIES[family].kind))
    except (ValueError, TypeError) as err:
        message = str(err)
        origin = traceback.extract_tb(err.__traceback__)[-1].filename
        clear = message.split(":")[0] in ARGUMENTS and "/xaikit/" in origin
        if not clear:
            raise
        return "refused", message
    return "ok", check(method, module, x, e)


# ---------------------------------------------------------------------- the docs table

SHORT = (
    ("needs nn.ReLU modules", "no nn.ReLU"),
    ("torch.fx can trace", "not fx-traceable"),
    ("has no rule for module", "no rule for {0}"),
    ("merges each BatchNorm", "BatchNorm not after a layer"),
    ("needs images", "images only"),
    ("takes images", "images only"),
    ("have no gradient", "token ids"),
    ("token ids do not allow", "token ids"),
    ("not one global token-to-token", "windowed attention"),
    ("no attention weights", "no attention"),
    ("does not take it", "no attention"),
)


def short_reason(message: str) -> str:
    """A refusal's message in a few words for the table."""
    import re

    for needle, label in SHORT:
        if needle in message:
            found = re.search(r"\(([A-Za-z0-9_]+)\)", message)
            return label.format(found.group(1) if found else "?")
    return message.split(";")[0][:40]


def matrix_table() -> str:
    """The matrix as a Markdown table: families down, methods across (docs/models.md)."""
    methods = sorted(xk.methods())
    header = "| family | " + " | ".join(f"`{m}`" for m in methods) + " |"
    lines = [header, "|" + "---|" * (len(methods) + 1)]
    for name in FAMILIES:
        cells = []
        for method in methods:
            status, detail = outcome(name, method)
            cells.append(f"✓ {detail}" if status == "ok" else f"– {short_reason(detail)}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
