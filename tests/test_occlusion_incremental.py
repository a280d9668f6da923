"""Incremental occlusion (issue 20): the same maps as plain occlusion, or plain occlusion and why.

Plain occlusion (``incremental=False``) is the reference: every model here is compared with
it within 1e-5 of its score scale in float32, and within 1e-10 in float64 (where float
rounding cannot hide a wrong region).
"""

from __future__ import annotations

import gc
import re
import weakref

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import xaikit as xk
from _lrp_models import ResNetLike, VGGLike
from _models import (
    AliasedUpdateCNN,
    ConvHead,
    FunctionalCNN,
    ValueBranchingCNN,
    image_mlp,
    strided_cnn,
)
from xaikit import layout
from xaikit.attribution import _graph, _incremental
from xaikit.baselines import make_baseline
from xaikit.datasets.models import SmallCNN


def small_cnn(seed: int = 0) -> nn.Module:
    """The default CNN's architecture with random weights and BatchNorm statistics."""
    torch.manual_seed(seed)
    net = SmallCNN()
    with torch.no_grad():
        net.bn1.running_mean.uniform_(-0.2, 0.2)
        net.bn1.running_var.uniform_(0.5, 1.5)
    return net.eval()


def image(shape, seed: int = 0, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(seed).random(shape).astype(dtype)


def plain_model(net) -> xk.Model:
    """``net`` with a fixed batch size: plain occlusion as the reference, without the search."""
    return xk.Model(net, batch_size=256)


def both(net, x, **params):
    """(incremental, plain) explanations of ``x`` with the same parameters."""
    fast = xk.explain(net, x, method="occlusion", incremental=True, **params)
    plain = xk.explain(plain_model(net), x, method="occlusion", incremental=False, **params)
    return fast, plain


def assert_same_map(fast, plain, rtol=1e-5):
    """Equal within ``rtol`` of the score scale, and the incremental path did run."""
    assert fast.info["incremental"] is True, fast.info["incremental_note"]
    assert plain.info["incremental"] is False
    scale = np.abs(plain.prediction).max()
    assert np.abs(fast.values - plain.values).max() <= rtol * scale


# Model, input, parameters: every kind of layer the incremental path covers, windows that are
# cut at the image border (the last position sticks out), strides below the window, channels.
CASES = {
    "small_cnn_default_window": (small_cnn, (1, 28, 28), {"target": 3}),
    "small_cnn_cut_windows": (small_cnn, (1, 28, 28), {"window": (5, 3), "stride": (4, 2)}),
    "strided_non_square": (strided_cnn, (3, 21, 17), {"window": (5, 3), "stride": (2, 3)}),
    "strided_window_of_one": (strided_cnn, (3, 21, 17), {"window": 1, "stride": 1}),
    "strided_baseline_number": (
        strided_cnn, (3, 21, 17), {"window": 4, "stride": 3, "baseline": 0.7}
    ),
    "vgg_blur_baseline": (VGGLike, (3, 16, 16), {"window": 3, "stride": 1, "baseline": "blur"}),
    "vgg_average_pooling": (
        lambda: VGGLike(pool="avg"), (3, 16, 16), {"window": (2, 5), "stride": (2, 3)}
    ),
    "resnet_in_place_relu": (ResNetLike, (3, 19, 13), {"window": (4, 3), "stride": (2, 3)}),
    "resnet_noise_baseline": (
        lambda: ResNetLike(shared=False), (3, 16, 16), {"window": 5, "stride": 2,
                                                        "baseline": "noise"}
    ),
    "resnet_full_rank_window": (
        ResNetLike, (3, 16, 16), {"window": (2, 4, 4), "stride": (1, 2, 2)}
    ),
    "functional_layers": (FunctionalCNN, (3, 15, 11), {"window": 3, "stride": 2}),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_incremental_equals_plain_occlusion(case):
    factory, shape, params = CASES[case]
    fast, plain = both(factory(), image(shape), **params)
    assert_same_map(fast, plain)


@pytest.mark.parametrize("case", CASES)
def test_through_the_deepest_cut_equals_plain_occlusion(case, monkeypatch):
    # The cheapest cut may stop early; the last one recomputes regions through every local
    # layer (ceil_mode and padded average pooling, dilation, groups, the residual blocks).
    cuts = _incremental._cuts
    monkeypatch.setattr(_incremental, "_cuts", lambda *args: list(cuts(*args))[-1:])
    factory, shape, params = CASES[case]
    fast, plain = both(factory(), image(shape), **params)
    assert_same_map(fast, plain)


@pytest.mark.parametrize(("gain", "chosen"), [(0.0, "contiguous"), (1e9, "channels_last")])
@pytest.mark.parametrize(
    "case", ["strided_non_square", "resnet_in_place_relu", "functional_layers"]
)
def test_either_memory_layout_equals_plain_occlusion(case, gain, chosen, monkeypatch):
    # The first batch of windows is timed in both layouts; GAIN 0 never takes channels-last,
    # a huge GAIN always does (its scores equal the default layout's here).
    monkeypatch.setattr(layout, "GAIN", gain)
    factory, shape, params = CASES[case]
    net = factory()
    fast, plain = both(net, image(shape), **params)
    assert_same_map(fast, plain)
    plans = _graph.trace(net, method="occlusion").plans.values()
    assert [p.layout for p in plans if p.usable] == [chosen]


@pytest.mark.parametrize("case", ["strided_non_square", "resnet_in_place_relu"])
def test_float64_models_agree_to_rounding(case):
    factory, shape, params = CASES[case]
    fast, plain = both(factory().double(), image(shape, dtype=np.float64), **params)
    assert_same_map(fast, plain, rtol=1e-10)


def test_batch_with_different_targets_equals_plain():
    x = image((4, 3, 16, 16), seed=3)
    params = {"window": (3, 4), "stride": 2, "target": [0, 4, 2, 2], "batch": True}
    fast, plain = both(ResNetLike(shared=False), x, **params)
    assert_same_map(fast, plain)


def test_baseline_image_equals_plain():
    x = image((3, 21, 17), seed=4)
    base = image((3, 21, 17), seed=5)
    fast, plain = both(strided_cnn(), x, window=(3, 5), stride=(2, 2), baseline=base)
    assert_same_map(fast, plain)


def test_a_batch_size_set_on_the_model_chunks_the_windows():
    x = image((3, 16, 16), seed=6)
    fast = xk.explain(xk.Model(VGGLike(), batch_size=7), x, method="occlusion", window=3,
                      stride=1, incremental=True)  # fmt: skip
    plain = xk.explain(plain_model(VGGLike()), x, method="occlusion", window=3, stride=1,
                       incremental=False)  # fmt: skip
    assert_same_map(fast, plain)


def test_repeated_calls_are_bit_identical():
    net, x = ResNetLike(), image((3, 16, 16), seed=7)
    first = xk.explain(net, x, method="occlusion", window=4, stride=2, incremental=True)
    again = xk.explain(net, x, method="occlusion", window=4, stride=2, incremental=True)
    assert np.array_equal(first.values, again.values)


def test_auto_is_the_default(monkeypatch):
    monkeypatch.setattr(_incremental, "AUTO_MIN_COST", 0.0)  # a small model counts as large
    e = xk.explain(small_cnn(), image((1, 28, 28)), method="occlusion")
    assert e.params["incremental"] == "auto"
    assert e.info["incremental"] is True
    assert "estimated" in e.info["incremental_note"]


def test_auto_runs_plainly_where_little_would_be_saved(monkeypatch):
    # A window as large as the image changes every position of every map.
    monkeypatch.setattr(_incremental, "AUTO_MIN_COST", 0.0)
    e = xk.explain(small_cnn(), image((1, 28, 28)), method="occlusion", window=28)
    assert e.info["incremental"] is False
    assert e.info["incremental_note"].startswith("would save little here")


def test_auto_runs_plainly_where_a_forward_is_cheap():
    e = xk.explain(small_cnn(), image((1, 28, 28)), method="occlusion")
    assert e.info["incremental"] is False
    assert e.info["incremental_note"].startswith("a plain forward is cheap here")


def test_auto_runs_incrementally_on_a_large_image():
    x = image((3, 224, 224))
    e = xk.explain(FunctionalCNN(), x, method="occlusion", window=32, stride=16)
    assert e.info["incremental"] is True


VGG = VGGLike().eval()


def numpy_callable(batch: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return VGG(torch.from_numpy(batch)).numpy()


class StandardisedConv(nn.Conv2d):
    """Weight standardisation (BiT's StdConv): it overrides ``_conv_forward``, not ``forward``."""

    def _conv_forward(self, x, weight, bias):
        axes = (1, 2, 3)
        mean, std = weight.mean(dim=axes, keepdim=True), weight.std(dim=axes, keepdim=True)
        return F.conv2d(x, (weight - mean) / (std + 1e-5), bias, self.stride, self.padding)


class WritesThroughOut(nn.Module):
    """``torch.mul(h, 2.0, out=h)`` between two convolutions: a write whose result goes unused."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        h = torch.relu(self.conv1(x))
        torch.mul(h, 2.0, out=h)
        return self.head(self.conv2(h).mean((2, 3)))


def standardised_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        StandardisedConv(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    ).eval()  # fmt: skip


def forward_replaced_on_an_instance() -> nn.Module:
    net = VGGLike().eval()
    first = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
    original = first.forward
    first.forward = lambda t: original(t) * 2.0  # as accelerate's add_hook_to_module does
    return net


# Models and baselines where incremental inference cannot run, and the note that says why.
FALLBACKS = {
    "mlp_on_the_flat_image": (image_mlp, (2, 6, 7), {}, "no leading convolution or pooling"),
    "numpy_callable": (
        lambda: xk.Model(numpy_callable, batch_size=256), (3, 16, 16), {},
        "callable on NumPy batches",
    ),
    "untraceable_forward": (ValueBranchingCNN, (1, 8, 8), {}, "torch.fx cannot trace"),
    "background_rows": (
        lambda: plain_model(VGGLike()), (3, 16, 16), {"baseline": image((2, 3, 16, 16), seed=8)},
        "background rows",
    ),
    "switched_off": (
        lambda: plain_model(VGGLike()), (3, 16, 16), {"incremental": False}, "turned off"
    ),
    # these three gave other values than plain occlusion (by 5%, 2% and 1%)
    "conv_subclass_computing_otherwise": (
        standardised_cnn, (3, 24, 20), {}, "no leading convolution or pooling"
    ),
    "forward_replaced_on_an_instance": (
        forward_replaced_on_an_instance, (3, 16, 16), {}, "forward replaced on the instance"
    ),
    "write_through_out": (WritesThroughOut, (3, 16, 16), {}, "out="),
}  # fmt: skip


@pytest.mark.parametrize("case", FALLBACKS)
def test_plain_occlusion_where_the_model_does_not_allow_it(case):
    factory, shape, params, note = FALLBACKS[case]
    params = {"incremental": True, "window": 2, **params}
    e = xk.explain(factory(), image(shape), method="occlusion", **params)
    assert e.info["incremental"] is False
    assert note in e.info["incremental_note"]
    params["incremental"] = False
    plain = xk.explain(factory(), image(shape), method="occlusion", **params)
    np.testing.assert_allclose(e.values, plain.values, rtol=1e-5, atol=1e-7)


def test_a_global_hook_keeps_occlusion_plain():
    handle = torch.nn.modules.module.register_module_forward_hook(lambda m, i, o: None)
    try:
        e = xk.explain(VGGLike().eval(), image((3, 16, 16)), method="occlusion", incremental=True)
    finally:
        handle.remove()
    assert e.info["incremental"] is False and "every module" in e.info["incremental_note"]


def test_old_style_weight_norm_after_a_score_call():
    # its hook keeps the weight as a plain attribute, made under inference mode by the score
    # call: stamping it raised "Inference tensors do not track version counter"
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 3))
    with pytest.warns(FutureWarning):
        nn.utils.weight_norm(net[0])
    x = image((3, 8, 8))
    xk.Model(net).scores(x[None])
    fast, plain = both(net.eval(), x, window=2)
    np.testing.assert_allclose(fast.values, plain.values, rtol=1e-5, atol=1e-7)


def test_torchscript_runs_plainly():
    net = plain_model(torch.jit.script(VGGLike().eval()))
    e = xk.explain(net, image((3, 16, 16)), method="occlusion", window=2, incremental=True)
    assert e.info["incremental"] is False
    assert "TorchScript" in e.info["incremental_note"]


def test_hook_on_the_first_layer_keeps_the_plain_forward():
    net = strided_cnn()
    handle = net.conv1.register_forward_hook(lambda _m, _i, out: out * 2)
    try:
        fast, plain = both(net, image((3, 21, 17)), window=3, stride=2)
    finally:
        handle.remove()
    assert fast.info["incremental"] is False
    assert np.abs(fast.values - plain.values).max() <= 1e-5 * np.abs(plain.prediction).max()


def test_hook_after_the_cut_still_runs():
    net = small_cnn()
    handle = net.fc1.register_forward_hook(lambda _m, _i, out: out * 2)
    try:
        fast, plain = both(net, image((1, 28, 28)))
    finally:
        handle.remove()
    assert_same_map(fast, plain)
    unhooked = xk.explain(plain_model(net), image((1, 28, 28)), method="occlusion",
                          incremental=False)  # fmt: skip
    assert not np.allclose(unhooked.values, plain.values)  # the hook did change the scores


class GainCNN(FunctionalCNN):
    """FunctionalCNN with its residual's factor a plain attribute, read before the cut."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = 2.0

    def forward(self, x):
        h = F.relu(self.conv1((x - self.mean) / self.std))
        h = torch.sigmoid(self.conv2(h)) * self.gain + h
        return self.head(F.max_pool2d(h, 2).mean(dim=(2, 3)))


def test_a_changed_attribute_reaches_the_traced_forward():
    # A trace bakes the attribute in as a constant; the cached trace used to keep the old one.
    net = GainCNN().eval()
    x = image((3, 15, 11))
    both(net, x, window=3, stride=2)  # the trace is made and cached
    net.gain = -1.0
    assert_same_map(*both(net, x, window=3, stride=2))


def test_the_users_model_is_left_as_it_was():
    net = ResNetLike()
    net.train()
    net.layer1.eval()  # a mixed state must come back exactly
    flags = [m.training for m in net.modules()]
    state = {k: v.clone() for k, v in net.state_dict().items()}
    x = image((3, 16, 16), seed=9)
    e = xk.explain(net, x, method="occlusion", window=4, stride=2, incremental=True)
    assert e.info["incremental"] is True
    assert [m.training for m in net.modules()] == flags
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())
    assert "forward" not in net.__dict__


@pytest.mark.parametrize(
    ("value", "error"), [("yes", ValueError), (1, TypeError), (None, TypeError)]
)
def test_bad_incremental_names_the_argument(value, error):
    with pytest.raises(error, match=r"^incremental: "):
        xk.explain(VGGLike(), image((3, 16, 16)), method="occlusion", incremental=value)


def test_named_baseline_arrays_match_what_plain_occlusion_uses():
    # "mean" is an array baseline built per item: the incremental path must read the same one.
    x = image((3, 16, 16), seed=10)
    fast, plain = both(VGGLike(), x, window=3, stride=2, baseline="mean")
    assert_same_map(fast, plain)
    base = make_baseline(x, "mean").values
    assert base.shape == x.shape


@pytest.mark.parametrize("gain", [0.0, 1e9])
def test_the_model_is_freed_after_the_call(gain, monkeypatch):
    # The trace, the plan and the channels-last copy are kept per model, weakly: they must not
    # keep it alive.
    monkeypatch.setattr(layout, "GAIN", gain)
    net = ResNetLike()
    alive = weakref.ref(net)
    e = xk.explain(net, image((3, 16, 16)), method="occlusion", window=4, incremental=True)
    assert e.info["incremental"] is True
    del net
    gc.collect()
    assert alive() is None


def test_a_hidden_in_place_update_falls_back_to_plain_occlusion():
    # `skip = h; h += y`: the trace's skip misses the update the real forward gives it, which
    # shows only where the update is not zero: the windows' baseline of 5 makes it so
    net = AliasedUpdateCNN().eval()
    x = image((3, 8, 8))
    fast, plain = both(net, x, window=(3, 3), stride=(1, 1), baseline=5.0)
    assert fast.info["incremental"] is False
    assert "in place (a += b)" in fast.info["incremental_note"]
    np.testing.assert_allclose(fast.values, plain.values, rtol=1e-6)


class _TwistedConvHead(ConvHead):
    """A ConvHead whose forward either reads the input's shape (for a reshape: the input then
    reaches the output beside the layers) or halves the feature map in place and reads it
    afterwards (the result of mul_ unused)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how

    def forward(self, x):
        if self.how == "reads_shape":
            return self.head(F.relu(self.conv(x)).reshape(x.shape[0], -1))
        h = self.conv(x)
        h.mul_(0.5)
        return self.head(h.flatten(1))


@pytest.mark.parametrize(
    ("how", "note"),
    [
        ("reads_shape", r"^the forward reads the input's shape \(x.shape or x.size\(\)\)"),
        ("edits_then_reads", r"^the forward changes a tensor in place \('mul_'\)"),
    ],
)
def test_the_note_names_what_keeps_occlusion_plain(how, note):
    x = image((3, 8, 8))
    fast, plain = both(_TwistedConvHead(how).eval(), x, window=(3, 3), stride=(1, 1))
    assert fast.info["incremental"] is False
    assert re.match(note, fast.info["incremental_note"]), fast.info["incremental_note"]
    np.testing.assert_allclose(fast.values, plain.values, rtol=1e-6)
