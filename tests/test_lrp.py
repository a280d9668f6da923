"""LRP: equal to Zennit's composites, conserving, refusing what it has no rule for, harmless."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import xaikit as xk
from _stand_ins import import_zennit
from xaikit.datasets import load_mnist

import_zennit()  # before zennit's own names: see _stand_ins
from zennit.attribution import Gradient  # noqa: E402
from zennit.canonizers import (  # noqa: E402
    AttributeCanonizer,
    SequentialMergeBatchNorm,
)
from zennit.composites import (  # noqa: E402
    EpsilonAlpha2Beta1,
    EpsilonAlpha2Beta1Flat,
    EpsilonGammaBox,
    EpsilonPlus,
    EpsilonPlusFlat,
)
from zennit.layer import Sum  # noqa: E402
from zennit.torchvision import ResNetBasicBlockCanonizer  # noqa: E402

from _lrp_models import Block, FirstLayer, ResNetLike, VGGLike, images  # noqa: E402
from _models import AliasedUpdateCNN, HarmlessUpdateCNN  # noqa: E402

ZENNIT = {
    "epsilon_plus_flat": EpsilonPlusFlat,
    "epsilon_gamma_box": EpsilonGammaBox,
    "epsilon_alpha2_beta1": EpsilonAlpha2Beta1,
    "epsilon_plus": EpsilonPlus,
    "epsilon_alpha2_beta1_flat": EpsilonAlpha2Beta1Flat,
}


class ExactMergeBatchNorm(SequentialMergeBatchNorm):
    """Zennit 0.5.1's BatchNorm merge, made exact as in later Zennit (PR #171, #240).

    0.5.1 leaves ``eps`` in the BatchNorm it turns into the identity, which then still divides
    by sqrt(1 + eps): activations shrink by about 5e-6 per BatchNorm, 2e-5 over the VGG-like
    model's four. Later Zennit sets the variance and ``eps`` to 0.5 each; so do we here.
    """

    def register(self, linears, batch_norm):
        super().register(linears, batch_norm)
        self.kept_eps = batch_norm.eps
        batch_norm.running_var.data = torch.full_like(batch_norm.running_var, 0.5)
        batch_norm.eps = 0.5

    def remove(self):
        super().remove()
        self.batch_norm.eps = self.kept_eps


def block_canonizer():
    """Zennit's own ResNet block canonizer (a Sum module for ``out += identity``), for ours."""

    def attributes(_name, module):
        if isinstance(module, Block):
            return {
                "forward": ResNetBasicBlockCanonizer.forward.__get__(module),
                "canonizer_sum": Sum(),
            }
        return None

    return AttributeCanonizer(attributes)


def zennit_relevance(net, x, targets, composite, canonizers):
    kwargs = {"low": 0.0, "high": 1.0} if composite == "epsilon_gamma_box" else {}
    rules = ZENNIT[composite](canonizers=canonizers, **kwargs)
    with torch.no_grad():
        logits = net(x)
    seed = torch.nn.functional.one_hot(targets, logits.shape[1]).to(x.dtype) * logits
    with Gradient(net, rules) as attributor:
        _, relevance = attributor(x, seed)
    return relevance.detach().numpy()


def relative_error(ours, theirs):
    """Per item: the largest difference over the largest |relevance| of the reference."""
    axes = tuple(range(1, theirs.ndim))
    return (np.abs(ours - theirs).max(axis=axes) / np.abs(theirs).max(axis=axes)).max()


def ours(net, x, targets, composite, **params):
    e = xk.explain(
        net,
        x.numpy(),
        method="lrp",
        composite=composite,
        target=targets.numpy(),
        batch=True,
        **params,
    )
    return e


@pytest.mark.parametrize("composite", list(ZENNIT))
def test_equal_to_zennit_on_the_default_mnist_cnn(clean_cnn, composite):
    # float32 and Zennit as it is (one BatchNorm: its merge is off by 5e-6 at most)
    x = torch.as_tensor(load_mnist("test")[0][:16])
    targets = clean_cnn(x).argmax(dim=1)
    theirs = zennit_relevance(clean_cnn, x, targets, composite, [SequentialMergeBatchNorm()])
    e = ours(clean_cnn, x, targets, composite)
    assert relative_error(e.values, theirs) < 1e-5
    assert e.values.shape == (16, 1, 28, 28)


@pytest.mark.parametrize("composite", list(ZENNIT))
def test_equal_to_zennit_on_a_vgg_like_cnn_with_batch_norm(composite):
    # float64: alpha-beta rules subtract large terms, and float32 rounding alone reaches 3e-5
    net = VGGLike().double().eval()
    x = images(dtype=torch.float64)
    targets = net(x).argmax(dim=1)
    theirs = zennit_relevance(net, x, targets, composite, [ExactMergeBatchNorm()])
    assert relative_error(ours(net, x, targets, composite).values, theirs) < 1e-5


@pytest.mark.parametrize("composite", list(ZENNIT))
def test_equal_to_zennit_on_a_resnet_like_model(composite):
    net = ResNetLike().double().eval()
    x = images(dtype=torch.float64)
    targets = net(x).argmax(dim=1)
    theirs = zennit_relevance(
        net, x, targets, composite, [ExactMergeBatchNorm(), block_canonizer()]
    )
    assert relative_error(ours(net, x, targets, composite).values, theirs) < 1e-5


@pytest.mark.parametrize("composite", list(ZENNIT))
def test_equal_to_zennit_on_an_mlp(composite):
    # A first Linear: Zennit's EpsilonGammaBox keeps epsilon there (z-box is for a first
    # convolution); ours applied z-box, 100% off.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(48, 20), nn.ReLU(), nn.Linear(20, 4)).double()
    x = torch.rand(3, 3, 4, 4, dtype=torch.float64)
    targets = net.eval()(x).argmax(dim=1)
    theirs = zennit_relevance(net, x, targets, composite, [])
    assert relative_error(ours(net, x, targets, composite).values, theirs) < 1e-5


class _Conv1dNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.body = nn.Sequential(
            nn.Conv1d(2, 6, 5, padding=2),
            nn.SiLU(),
            nn.Conv1d(6, 6, 3, stride=2, dilation=2, groups=3),
            nn.GELU(),
            nn.LeakyReLU(0.1),
            nn.MaxPool1d(2),
            nn.AdaptiveAvgPool1d(3),
            nn.Flatten(),
            nn.Linear(18, 4),
        )

    def forward(self, x):
        return self.body(x)


@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon_alpha2_beta1"])
def test_conv1d_net_with_smooth_activations_equals_zennit(composite):
    net = _Conv1dNet().double().eval()
    x = torch.rand(4, 2, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    targets = net(x).argmax(dim=1)
    theirs = zennit_relevance(net, x, targets, composite, [])
    assert relative_error(ours(net, x, targets, composite).values, theirs) < 1e-5


FIRST_LAYERS = {
    "linear": lambda: nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 12)),
    "strided conv": lambda: nn.Conv2d(3, 6, 5, stride=2, padding=2),
    "conv with groups": lambda: nn.Conv2d(3, 6, 3, padding=1, groups=3),
    "conv padded past its kernel": lambda: nn.Conv2d(3, 6, 3, padding=3),
    "dilated conv": lambda: nn.Conv2d(3, 6, 3, padding=2, dilation=2),
    "circular padding": lambda: nn.Conv2d(3, 6, 3, padding=1, padding_mode="circular"),
    "one output channel": lambda: nn.Conv2d(3, 1, 3, padding=1),
}


@pytest.mark.parametrize("first", list(FIRST_LAYERS))
def test_the_flat_rule_at_each_kind_of_input_layer_equals_zennit(first):
    net = FirstLayer(FIRST_LAYERS[first]()).double()
    x = images(dtype=torch.float64)
    targets = net(x).argmax(dim=1)  # the first call sizes the lazy head
    net.eval()
    theirs = zennit_relevance(net, x, targets, "epsilon_plus_flat", [])
    assert relative_error(ours(net, x, targets, "epsilon_plus_flat").values, theirs) < 1e-5


class _NoBias(nn.Module):
    """Convolutions, a residual addition, both poolings, functional ops; no bias anywhere."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(8 * 4 * 4, 6, bias=False)

    def forward(self, x):
        a = torch.relu(self.conv1(x))
        b = self.conv2(a) + a
        c = torch.nn.functional.avg_pool2d(self.pool(torch.relu(b)), 2)
        return self.fc(c.view(c.size(0), -1))


def test_epsilon_without_biases_conserves_the_logit():
    net = _NoBias().eval()
    x = images(6)
    e = xk.explain(net, x.numpy(), method="lrp", composite="epsilon", epsilon=1e-9, batch=True)
    logits = net(x).detach().numpy()[np.arange(6), e.target]
    sums = e.values.reshape(6, -1).sum(axis=1)
    np.testing.assert_allclose(sums, logits, rtol=1e-4)
    np.testing.assert_allclose(e.info["relevance_sum"], sums, rtol=1e-6)
    np.testing.assert_allclose(e.info["explained_logit"], logits, rtol=1e-6)
    # LRP-0 (epsilon 0) conserves too; neurons with z = 0 pass nothing on
    e0 = xk.explain(net, x.numpy(), method="lrp", composite="epsilon", epsilon=0.0, batch=True)
    np.testing.assert_allclose(e0.values.reshape(6, -1).sum(axis=1), logits, rtol=1e-4)


def _vgg_case():
    net = VGGLike().eval()
    x = images()
    return net, x, net(x).argmax(dim=1)


def test_dict_composite_by_name_or_type_equals_the_named_one():
    net, x, targets = _vgg_case()
    named = ours(net, x, targets, "epsilon_gamma_box").values
    rules = {"features.0": "zbox", nn.Conv2d: "gamma", nn.Linear: "epsilon"}
    e = ours(net, x, targets, rules)
    np.testing.assert_array_equal(e.values, named)
    assert e.params["composite"] == {
        "features.0": "zbox",
        "torch.nn.modules.conv.Conv2d": "gamma",
        "torch.nn.modules.linear.Linear": "epsilon",
    }


def test_alpha1beta0_is_zplus():
    net, x, targets = _vgg_case()
    plus = ours(net, x, targets, {nn.Conv2d: "zplus"}).values
    np.testing.assert_array_equal(ours(net, x, targets, {nn.Conv2d: "alpha1beta0"}).values, plus)


def test_the_calls_gamma_reaches_the_rules():
    net, x, targets = _vgg_case()
    named = ours(net, x, targets, "epsilon_gamma_box").values
    assert not np.allclose(
        ours(net, x, targets, "epsilon_gamma_box", gamma=1.0).values, named, rtol=1e-3
    )


def test_bad_composites_are_refused():
    net = VGGLike().eval()
    x = images(1)[0].numpy()
    with pytest.raises(ValueError, match="composite: expected one of"):
        xk.explain(net, x, method="lrp", composite="epsilon_plus_flt")
    with pytest.raises(ValueError, match=r"composite: rule 'flat' .* not 'features.3'"):
        xk.explain(net, x, method="lrp", composite={"features.3": "flat"})
    with pytest.raises(ValueError, match=r"composite: no layer 'features.99'"):
        xk.explain(net, x, method="lrp", composite={"features.99": "epsilon"})
    with pytest.raises(ValueError, match="composite: rules apply to linear and convolution"):
        xk.explain(net, x, method="lrp", composite={"features.2": "epsilon"})
    with pytest.raises(ValueError, match=r"composite: rule for .* expected one of"):
        xk.explain(net, x, method="lrp", composite={nn.Conv2d: "beta"})
    with pytest.raises(TypeError, match="composite: keys are layer names or layer types"):
        xk.explain(net, x, method="lrp", composite={nn.ReLU: "epsilon"})
    with pytest.raises(ValueError, match="epsilon: expected a non-negative number"):
        xk.explain(net, x, method="lrp", epsilon=-1.0)
    # the box rule needs every input inside [low, high]
    with pytest.raises(ValueError, match=r"low: the z-box rule needs every input value"):
        xk.explain(net, x, method="lrp", composite="epsilon_gamma_box", high=0.5)
    e = xk.explain(
        net, x, method="lrp", composite="epsilon_gamma_box", low=-1, high=np.full((3, 1, 1), 2.0)
    )
    assert e.values.shape == x.shape


class _Counting(nn.Identity):
    """Counts its calls (a leaf of the trace): shows that nothing ran before a refusal."""

    calls = 0

    def forward(self, x):
        type(self).calls += 1
        return x


class _WithSigmoid(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.count = _Counting()
        self.gate = nn.Sigmoid()
        self.fc = nn.Linear(4 * 14 * 14, 2)

    def forward(self, x):
        return self.fc(torch.flatten(self.gate(self.count(self.conv(x))), 1))


class _FunctionalSigmoid(_WithSigmoid):
    def forward(self, x):
        return self.fc(torch.flatten(torch.sigmoid(self.count(self.conv(x))), 1))


class _Untraceable(_WithSigmoid):
    def forward(self, x):
        if x.sum() > 0:  # control flow on a tensor value: torch.fx cannot trace it
            x = x * 2
        return self.fc(torch.flatten(self.count(self.conv(x)), 1))


def test_uncovered_operations_are_refused_by_name_before_computing():
    x = images(1)[0].numpy()
    _Counting.calls = 0
    with pytest.raises(ValueError, match=r"model: lrp has no rule for module 'gate' \(Sigmoid\)"):
        xk.explain(_WithSigmoid(), x, method="lrp")
    with pytest.raises(ValueError, match=r"no rule for the operation 'torch.sigmoid'"):
        xk.explain(_FunctionalSigmoid(), x, method="lrp")
    with pytest.raises(ValueError, match=r"model: lrp needs a forward that torch.fx can trace"):
        xk.explain(_Untraceable(), x, method="lrp")
    assert _Counting.calls == 0  # refused before the model ran (explain's own forward included)
    # a BatchNorm with no layer before it cannot be merged; nor can the input meet it first
    after_relu = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4), nn.Flatten())
    with pytest.raises(ValueError, match=r"model: lrp merges each BatchNorm .* '2' does not"):
        xk.explain(nn.Sequential(*after_relu, nn.Linear(784, 2)), x, method="lrp")
    first = nn.Sequential(nn.ReLU(), nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(784, 2))
    with pytest.raises(ValueError, match="x: lrp needs the input to go straight into"):
        xk.explain(first, x, method="lrp")
    with pytest.raises(TypeError, match=r"method: 'lrp' needs forward hooks .* TorchScript"):
        xk.explain(torch.jit.script(VGGLike().eval()), images(1)[0].numpy(), method="lrp")


class _Shifted(_WithSigmoid):
    """A constant (or a parameter) added to a hidden feature map."""

    def __init__(self, shift: float | None = None) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.tensor(-0.3)) if shift is None else shift

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.count(self.conv(x))) - self.shift, 1))


@pytest.mark.parametrize("shift", [0.3, None], ids=["constant", "parameter"])
def test_a_shifted_feature_map_is_refused_by_name(shift):
    # The plain gradient through h - c rescaled the relevance by h / (h - c) (Zennit passes
    # it on unchanged): maps 100% off, sums of the wrong sign, and no error.
    with pytest.raises(ValueError, match=r"lrp has no rule for adding a constant or parameter"):
        xk.explain(_Shifted(shift), images(1)[0].numpy(), method="lrp")


class _Failing(nn.Identity):
    fail = False

    def forward(self, x):
        if self.fail:
            raise RuntimeError("boom")
        return x


def test_the_model_is_left_as_it_was_also_after_an_error():
    net = VGGLike()
    net.features.insert(3, _Failing())
    net.train()  # explaining must neither switch modes for good nor update BatchNorm statistics
    net.features[4].eval()  # and must restore each module's own flag
    before = copy.deepcopy(net.state_dict())
    flags = [m.training for m in net.modules()]
    x = images(3).numpy()
    e = xk.explain(net, x, method="lrp", composite="epsilon_gamma_box", batch=True)
    assert np.isfinite(e.values).all()
    net.features[3].fail = True
    with pytest.raises(RuntimeError, match="boom"):
        xk.explain(net, x, method="lrp", target=[0, 1, 2], batch=True)
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert [m.training for m in net.modules()] == flags
    assert "forward" not in net.__dict__
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())
    assert all(p.grad is None for p in net.parameters())


class _InPlace(nn.Module):
    """Convolutions and a sum whose outputs a functional ReLU overwrites."""

    def __init__(self, inplace: bool):
        super().__init__()
        torch.manual_seed(7)
        self.inplace = inplace
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 16 * 16, 4)

    def forward(self, x):
        a = torch.nn.functional.relu(self.conv1(x), self.inplace)
        b = torch.nn.functional.relu(self.conv2(a) + a, self.inplace)
        return self.fc(torch.flatten(b, 1))


def test_outputs_overwritten_in_place_keep_their_values_for_the_rules():
    x = images(3)
    plain = ours(_InPlace(False).eval(), x, torch.zeros(3, dtype=torch.long), "epsilon_plus_flat")
    inplace = ours(_InPlace(True).eval(), x, torch.zeros(3, dtype=torch.long), "epsilon_plus_flat")
    np.testing.assert_array_equal(inplace.values, plain.values)


def _scale_in_place(net):
    with torch.no_grad():
        net.features[0].weight.mul_(1.5)


def _new_statistics(net):
    state = net.state_dict()
    state["features.1.running_var"] = state["features.1.running_var"] * 2
    net.load_state_dict(state)


def _new_data(net):
    net.features[4].bias.data = net.features[4].bias.data + 0.3


def _scaled_through_data(net):  # no version counter moves: the sampled values tell
    net.features[0].weight.data.mul_(1.5)


def _new_eps(net):
    net.features[1].eps = 0.1


def _new_batch_norm(net):
    net.features[1] = copy.deepcopy(net.features[4])


CHANGES = {
    "weights scaled in place": _scale_in_place,
    "statistics loaded": _new_statistics,
    "a bias given new data": _new_data,
    "weights scaled in place through .data": _scaled_through_data,
    "a BatchNorm's eps": _new_eps,
    "a BatchNorm replaced": _new_batch_norm,
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_changed_model_is_explained_with_its_new_weights(change):
    # the merged weights are kept between calls; any change to the model makes them anew
    # (every layer's weights count in this composite, the input layer's too)
    composite = "epsilon_gamma_box"
    net = VGGLike().eval()
    x = images()
    targets = net(x).argmax(dim=1)
    before = ours(net, x, targets, composite).values
    CHANGES[change](net)
    after = ours(net, x, targets, composite).values
    fresh = ours(copy.deepcopy(net), x, targets, composite).values
    np.testing.assert_array_equal(after, fresh)
    assert not np.allclose(after, before)


def test_the_merged_weights_of_a_model_are_freed_with_it():
    import gc
    import weakref

    net = VGGLike().eval()
    ours(net, images(), torch.zeros(5, dtype=torch.long), "epsilon_plus_flat")
    gone = weakref.ref(net)
    del net
    gc.collect()
    assert gone() is None


def test_lrp_is_registered_with_its_defaults():
    spec = xk.methods()["lrp"]
    assert spec["needs_gradients"]
    assert spec["params"] == {
        "composite": "epsilon_plus_flat",
        "epsilon": 1e-6,
        "gamma": 0.25,
        "low": 0.0,
        "high": 1.0,
    }


def test_lrp_explains_the_target_logit_alone_or_in_a_batch(clean_cnn):
    x = load_mnist("test")[0][:3]
    e = xk.explain(clean_cnn, x[0], method="lrp", target=4)
    assert e.target == 4 and e.values.shape == (1, 28, 28)
    np.testing.assert_allclose(e.info["explained_logit"], e.prediction[4], rtol=1e-6)
    # one item alone or in a batch: the same relevance
    batch = xk.explain(clean_cnn, x, method="lrp", target=[4, 4, 4], batch=True)
    np.testing.assert_allclose(batch.values[0], e.values, rtol=1e-5, atol=1e-7)


def test_lrp_of_a_predicted_digit_lies_on_its_strokes(clean_cnn):
    x = load_mnist("test")[0][:1]
    e = xk.explain(clean_cnn, x[0], method="lrp")
    on_strokes = e.values[0][x[0][0] > 0.3].clip(min=0).sum()
    assert on_strokes > 0.5 * e.values.clip(min=0).sum()


def _watermark_data():
    from xaikit.datasets import load_watermark_mnist

    X, y, _ = load_watermark_mnist("train")
    return X[:200], y[:200]


def test_audit_with_lrp_finds_the_watermark(watermark_cnn):
    from xaikit.audit import audit
    from xaikit.audit.analysis import iou
    from xaikit.datasets import WATERMARK_CLASS, WATERMARK_REGION

    X, y = _watermark_data()
    a = audit(watermark_cnn, X, labels=y, method="lrp", shard_size=50)
    assert a.info["method"] == "lrp"
    hits = [f for f in a.findings if iou(f.region, WATERMARK_REGION) >= 0.5]
    assert [f.target for f in hits] == [WATERMARK_CLASS]
    assert hits[0].relevance_share > 0.3 and hits[0].other_share < 0.05
    assert hits[0].transplant_rate >= 0.5


def test_audit_with_lrp_finds_no_watermark_in_the_clean_model(clean_cnn):
    from xaikit.audit import audit
    from xaikit.audit.analysis import iou
    from xaikit.datasets import WATERMARK_REGION

    X, y = _watermark_data()
    clean = audit(clean_cnn, X, labels=y, method="lrp", shard_size=50)
    assert [f for f in clean.findings if iou(f.region, WATERMARK_REGION) >= 0.5] == []


def test_the_stabiliser_is_zennits_with_zero_counted_positive():
    from xaikit.attribution.lrp import stabilise

    z = torch.tensor([0.0, -0.0, 2.0, -3.0, 1e-9, -1e-9])
    zennit = z + ((z == 0) + torch.sign(z)) * 0.5
    out = stabilise(z, 0.5)
    assert torch.equal(out, zennit)
    assert not torch.signbit(out[:2]).any()  # -0.0 too moves up, as 0 does


class _DoublingConv(nn.Conv2d):
    """A Conv2d subclass whose forward computes something its weights alone do not say."""

    def forward(self, x):
        return super().forward(x) * 2.0


class _StandardisedConv(nn.Conv2d):
    """Weight standardisation written, as it often is, in ``_conv_forward``."""

    def _conv_forward(self, x, weight, bias):
        w = (weight - weight.mean(dim=(1, 2, 3), keepdim=True)) / weight.std(
            dim=(1, 2, 3), keepdim=True
        )
        return super()._conv_forward(x, w, bias)


@pytest.mark.parametrize("layer", [_DoublingConv, _StandardisedConv])
def test_a_layer_subclass_with_its_own_forward_is_refused_by_name(layer):
    # The rules read the stored weights: before this refusal the relevance of such a layer
    # silently followed weights the forward does not use.
    net = nn.Sequential(layer(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    with pytest.raises(ValueError, match=rf"no rule for module '0' \({layer.__name__}\): it "
                       r"subclasses nn.Conv2d with a forward of its own"):  # fmt: skip
        xk.explain(net, np.random.rand(1, 8, 8).astype(np.float32), method="lrp", target=0)


def test_a_layer_subclass_without_its_own_forward_is_explained_as_the_layer():
    from torch.nn.utils import parametrizations

    class Tagged(nn.Conv2d):  # only adds an attribute
        tag = "mine"

    torch.manual_seed(0)
    plain = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)
    ).eval()
    plain[1].running_mean.uniform_(-0.5, 0.5)
    tagged = copy.deepcopy(plain)
    tagged[0] = Tagged(1, 4, 3)
    tagged[0].load_state_dict(plain[0].state_dict())
    normed = copy.deepcopy(plain)  # weight normalisation: a parametrized Conv2d subclass
    parametrizations.weight_norm(normed[0])
    x = np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)
    want = xk.explain(plain, x, method="lrp", target=[0, 2], batch=True).values
    for net in (tagged, normed):
        got = xk.explain(net, x, method="lrp", target=[0, 2], batch=True)
        np.testing.assert_allclose(got.values, want, rtol=1e-5, atol=1e-7)


def test_an_update_the_trace_cannot_see_is_refused():
    # `skip = h; h += y`: the rerun trace would give skip without the update
    x = images(1)[0].numpy()
    with pytest.raises(ValueError, match=r"model: lrp runs the forward .* updated in place"):
        xk.explain(AliasedUpdateCNN().eval(), x, method="lrp")


@pytest.mark.parametrize("method", ["lrp", "deeplift"])
def test_an_update_nothing_reads_afterwards_beside_branches_is_explained(method):
    # One harmless `out += h` made any sum whose operand is read later look like a hidden
    # update: the model was refused
    x = images(1)[0].numpy()
    e = xk.explain(HarmlessUpdateCNN().eval(), x, method=method)
    assert np.isfinite(e.values).all()
