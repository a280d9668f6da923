"""DeepLIFT (rescale rule) and DeepLiftShap: equal to Captum where Captum's hooks hold, complete."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from captum.attr import DeepLift, DeepLiftShap
from torch import nn

import xaikit as xk
from _lrp_models import ResNetLike, VGGLike, images
from _models import AliasedUpdateCNN
from xaikit.baselines import make_baseline
from xaikit.datasets import load_mnist


def relative_error(ours, theirs):
    axes = tuple(range(1, theirs.ndim))
    return (np.abs(ours - theirs).max(axis=axes) / np.abs(theirs).max(axis=axes)).max()


def captum(algorithm, net, x, **kwargs):
    with warnings.catch_warnings():  # Captum warns that it sets hooks
        warnings.simplefilter("ignore")
        return algorithm(net).attribute(x, **kwargs).detach().numpy()


class _Copy(nn.Module):
    def forward(self, x):
        return x.clone()


class _CaptumTwin(nn.Module):
    """The default CNN with a copy between each ReLU and the max pooling after it.

    Captum hooks every nonlinear module by registering tensor hooks on its input and output;
    when a ReLU's output is the max pooling's input, both hooks sit on one tensor, the ReLU reads
    the gradient before the pooling's rule changed it, and the pooling's rule is lost (its
    convergence delta is far from 0; meta-pytorch/captum#1104 reports the symptom). A copy in
    between gives each its own tensor; the function is the same.
    """

    def __init__(self, net):
        super().__init__()
        self.net = copy.deepcopy(net)
        self.copy1, self.copy2 = _Copy(), _Copy()

    def forward(self, x):
        n = self.net
        x = n.pool1(self.copy1(n.relu1(n.bn1(n.conv1(x)))))
        x = n.pool2(self.copy2(n.relu2(n.conv2(x))))
        return n.fc2(n.relu3(n.fc1(n.flatten(x))))


@pytest.mark.parametrize("baseline", [0.0, "blur"])
def test_deeplift_equals_captum_on_the_default_mnist_cnn(clean_cnn, baseline):
    X = load_mnist("test")[0][:8]
    x = torch.as_tensor(X)
    targets = clean_cnn(x).argmax(dim=1)
    e = xk.explain(
        clean_cnn, X, method="deeplift", baseline=baseline, target=targets.numpy(), batch=True
    )
    refs = torch.as_tensor(np.stack([make_baseline(item, baseline).values for item in X]))
    twin = _CaptumTwin(clean_cnn).eval()
    # One item per Captum call: Captum's max-pooling fallback (where input and reference agree)
    # reads the first item's gradient for the whole batch (meta-pytorch/captum#1276).
    theirs = np.concatenate(
        [
            captum(
                DeepLift, twin, x[i : i + 1], baselines=refs[i : i + 1], target=targets[i : i + 1]
            )
            for i in range(len(x))
        ]
    )
    assert relative_error(e.values, theirs) < 1e-5
    # Summation to delta: attributions add up to F(x) - F(x')
    logits = clean_cnn(x).detach().numpy()[np.arange(8), targets]
    ref_logits = clean_cnn(refs).detach().numpy()[np.arange(8), targets]
    np.testing.assert_allclose(e.info["output_difference"], logits - ref_logits, rtol=1e-5)
    assert (e.info["completeness_gap"] <= 1e-4 * np.abs(logits - ref_logits)).all()


def test_deeplift_shap_equals_captum_on_the_default_mnist_cnn(clean_cnn):
    X = load_mnist("test")[0][:6]
    background = load_mnist("train")[0][:4]
    x, bg = torch.as_tensor(X), torch.as_tensor(background)
    targets = clean_cnn(x).argmax(dim=1)
    e = xk.explain(
        clean_cnn,
        X,
        method="deeplift_shap",
        baseline=background,
        target=targets.numpy(),
        batch=True,
    )
    # DeepLiftShap is DeepLift averaged over the background rows; Captum's own DeepLiftShap
    # puts all pairs in one batch, where its max-pooling fallback is wrong (captum#1276).
    twin = _CaptumTwin(clean_cnn).eval()
    theirs = np.stack(
        [
            np.mean(
                [
                    captum(
                        DeepLift,
                        twin,
                        x[i : i + 1],
                        baselines=bg[r : r + 1],
                        target=targets[i : i + 1],
                    )[0]
                    for r in range(len(bg))
                ],
                axis=0,
            )
            for i in range(len(x))
        ]
    )
    assert relative_error(e.values, theirs) < 1e-5
    mean_ref = clean_cnn(bg).detach().numpy()[:, targets].mean(axis=0)
    logits = clean_cnn(x).detach().numpy()[np.arange(6), targets]
    np.testing.assert_allclose(e.info["output_difference"], logits - mean_ref, rtol=1e-5)


def _captum_model(model):
    # average pooling and separate, not in-place ReLUs: the models Captum's hooks handle
    net = VGGLike(pool="avg") if model == "vgg" else ResNetLike(shared=False)
    net = net.eval()
    x = images(4)
    return net, x, net(x).argmax(dim=1)


@pytest.mark.parametrize("model", ["vgg", "resnet"])
def test_deeplift_equals_captum_without_max_pooling(model):
    net, x, targets = _captum_model(model)
    e = xk.explain(
        net, x.numpy(), method="deeplift", baseline=0.1, target=targets.numpy(), batch=True
    )
    theirs = captum(DeepLift, net, x, baselines=torch.full_like(x, 0.1), target=targets)
    assert relative_error(e.values, theirs) < 1e-5


@pytest.mark.parametrize("model", ["vgg", "resnet"])
def test_deeplift_shap_equals_captum_without_max_pooling(model):
    net, x, targets = _captum_model(model)
    bg = images(3, seed=7)
    e = xk.explain(
        net,
        x.numpy(),
        method="deeplift_shap",
        baseline=bg.numpy(),
        target=targets.numpy(),
        batch=True,
    )
    theirs = captum(DeepLiftShap, net, x, baselines=bg, target=targets)
    assert relative_error(e.values, theirs) < 1e-5


def test_a_shared_in_place_relu_gives_what_separate_relus_give():
    # torchvision-style blocks (one in-place ReLU module used twice): Captum refuses a module used
    # twice; here it gives the same as separate ReLU modules
    x = images(3)
    shared, separate = ResNetLike(shared=True).eval(), ResNetLike(shared=False).eval()
    separate.load_state_dict(shared.state_dict())
    a = xk.explain(shared, x.numpy(), method="deeplift", batch=True)
    b = xk.explain(separate, x.numpy(), method="deeplift", batch=True)
    np.testing.assert_allclose(a.values, b.values, rtol=1e-5, atol=1e-8)
    assert (a.info["completeness_gap"] < 1e-5).all()


def test_functional_relu_with_max_pooling_keeps_completeness():
    x = images(3)

    class Functional(nn.Module):  # F.relu and F.max_pool2d get the rules as well
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4 * 7 * 7, 3)

        def forward(self, x):
            y = torch.nn.functional.max_pool2d(torch.relu(self.conv(x)), 2)
            return self.fc(y.flatten(1))

    e = xk.explain(Functional().eval(), x.numpy(), method="deeplift", batch=True)
    assert (e.info["completeness_gap"] < 1e-5 * np.abs(e.info["output_difference"]).max()).all()


@pytest.mark.parametrize(("items", "batch_size"), [(7, 3), (5, 8), (3, 4)])
def test_batches_never_split_a_pair(items, batch_size):
    # 10 rows at 8 would run evened out as 2 x 5, splitting the third pair
    net = VGGLike().eval()
    x = images(items).numpy()
    auto = xk.explain(net, x, method="deeplift", batch=True).values
    odd = xk.explain(xk.Model(net, batch_size=batch_size), x, method="deeplift", batch=True)
    np.testing.assert_allclose(odd.values, auto, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize(
    ("model", "options", "pattern"),
    [
        (lambda: VGGLike().eval(), {"method": "deeplift_shap"},
         "baseline: deeplift_shap needs background data"),
        (lambda: VGGLike().eval(), {"method": "deeplift_shap", "baseline": np.zeros((2, 3, 8, 8))},
         "baseline: background rows must have the input's shape"),
        (lambda: nn.Sequential(
            nn.Conv2d(3, 4, 3), nn.LayerNorm(14), nn.Flatten(), nn.Linear(784, 2)),
         {"method": "deeplift"}, r"model: deeplift has no rule for module '1' \(LayerNorm\)"),
        (lambda: AliasedUpdateCNN().eval(), {"method": "deeplift"},
         r"model: deeplift runs the forward .* updated in place \(a \+= b\)"),
    ],
    ids=["shap without background", "background of another shape", "module without a rule",
         "an update the trace cannot see"],
)  # fmt: skip
def test_refusals(model, options, pattern):
    x = images(1)[0].numpy()
    with pytest.raises(ValueError, match=pattern):
        xk.explain(model(), x, **options)


def test_methods_lists_the_deeplift_defaults():
    spec = xk.methods()
    assert spec["deeplift"]["params"] == {"baseline": 0.0, "seed": 0}
    assert spec["deeplift_shap"]["params"] == {"baseline": None}
