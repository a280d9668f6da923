"""Gradient methods: cross-checks against Captum, known answers, and no trace on the model."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr import (
    GuidedBackprop,
    InputXGradient,
    IntegratedGradients,
    Saliency,
)
from torch import nn

import xaikit as xk
from _models import TokenNet, two_conv_net
from xaikit.attribution.gradients import path_rule


def images(n: int = 3, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, channels, 12, 12), dtype=np.float32)


def rel_close(got, want, rtol=1e-5):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= rtol * scale, np.abs(got - want).max() / scale


TARGETS = np.array([0, 3, 1])


def test_saliency_equals_captum():
    net, x = two_conv_net(), images()
    e = xk.explain(net, x, method="saliency", target=TARGETS, batch=True)
    want = Saliency(net).attribute(torch.from_numpy(x), target=TARGETS.tolist(), abs=True)
    rel_close(e.values, want.detach().numpy())
    assert e.values.shape == x.shape and e.method == "saliency"


def test_input_x_gradient_equals_captum():
    net, x = two_conv_net(), images()
    e = xk.explain(net, x, method="input_x_gradient", target=TARGETS, batch=True)
    want = InputXGradient(net).attribute(torch.from_numpy(x), target=TARGETS.tolist())
    rel_close(e.values, want.detach().numpy())


@pytest.mark.parametrize(
    "rule",
    ["riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre"],
)
@pytest.mark.parametrize("steps", [7, 32])
def test_integrated_gradients_equals_captum(rule, steps):
    net, x = two_conv_net(), images()
    baseline = np.full(x.shape[1:], 0.2, dtype=np.float32)
    e = xk.explain(
        net, x, method="integrated_gradients", target=TARGETS, batch=True,
        baseline=baseline, steps=steps, rule=rule,
    )  # fmt: skip
    want = IntegratedGradients(net).attribute(
        torch.from_numpy(x),
        baselines=torch.from_numpy(baseline)[None].expand_as(torch.from_numpy(x)),
        target=TARGETS.tolist(),
        n_steps=steps,
        method=rule,
    )
    want = want.detach().numpy()
    if rule == "riemann_trapezoid":
        # Captum weights its trapezoid points 1/n (ends halved): total weight (n-1)/n instead of 1.
        want = want * steps / (steps - 1)
    rel_close(e.values, want)


def test_path_rules_integrate_polynomials():
    for rule in ("riemann_middle", "riemann_trapezoid", "gausslegendre"):
        alphas, weights = path_rule(rule, 64)
        assert weights.sum() == pytest.approx(1.0)
        assert (weights * alphas**2).sum() == pytest.approx(1 / 3, abs=1e-3)


def test_guided_backprop_equals_captum_leaving_no_hook():
    net, x = two_conv_net(), images()
    e = xk.explain(net, x, method="guided_backprop", target=TARGETS, batch=True)
    want = GuidedBackprop(net).attribute(torch.from_numpy(x), target=TARGETS.tolist())
    rel_close(e.values, want.detach().numpy())
    assert all(len(m._forward_hooks) == 0 for m in net.modules())
    plain = xk.explain(net, x, method="saliency", target=TARGETS, batch=True)
    assert not np.allclose(np.abs(e.values), plain.values)  # the guidance changed something


def _cam_by_hand(net, x, targets, weights_fn):
    stash = {}

    def keep(_m, _i, out):
        out.retain_grad()
        stash["a"] = out

    handle = net.conv2.register_forward_hook(keep)
    try:
        out = net(torch.from_numpy(x))
        out.gather(1, torch.from_numpy(targets)[:, None]).sum().backward()
    finally:
        handle.remove()
    a, g = stash["a"].detach(), stash["a"].grad
    w = weights_fn(a, g)
    cam = F.relu((w[:, :, None, None] * a).sum(1))
    up = F.interpolate(cam[:, None], size=x.shape[2:], mode="bilinear", align_corners=False)
    return cam.numpy(), up[:, 0].numpy()


def test_gradcam_equals_the_paper_formula():
    net, x = two_conv_net(), images()
    e = xk.explain(net, x, method="gradcam", target=TARGETS, batch=True)
    cam, up = _cam_by_hand(net, x, TARGETS, lambda a, g: g.mean(dim=(2, 3)))
    assert e.params["layer"] == "conv2"  # the last convolution by default
    rel_close(e.info["cam"], cam)
    for c in range(x.shape[1]):
        rel_close(e.values[:, c], up)


class UnusedBranch(nn.Module):
    """Two convolutions on the input; the score reads the second through a ReLU that is off
    everywhere, so its gradient there is zero (as a ViT's patch tokens after the last block)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.used, self.unused = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        dead = F.relu(self.unused(x) - 100.0).mean(dim=(2, 3))
        return self.fc(self.used(x).mean(dim=(2, 3)) + dead)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_a_cam_of_a_layer_the_score_does_not_read_warns(method):
    # An all-zero map must not pass silently for "no evidence anywhere" (a ViT's last block).
    x = images(1)[0]
    with pytest.warns(RuntimeWarning, match=r"layer: the score does not depend on layer 'unused'"):
        e = xk.explain(UnusedBranch().eval(), x, method=method, layer="unused")
    assert not e.values.any()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        xk.explain(UnusedBranch().eval(), x, method=method, layer="used")


def test_gradcam_plus_plus_equals_the_paper_formula():
    net, x = two_conv_net(), images()
    e = xk.explain(net, x, method="gradcam++", target=TARGETS, batch=True, layer="conv2")

    def weights(a, g):
        denom = 2 * g**2 + a.sum(dim=(2, 3), keepdim=True) * g**3
        alpha = np.where(g.numpy() != 0, (g**2).numpy() / np.where(denom == 0, 1, denom), 0)
        return (torch.from_numpy(alpha) * F.relu(g)).sum(dim=(2, 3))

    cam, _ = _cam_by_hand(net, x, TARGETS, weights)
    rel_close(e.info["cam"], cam, rtol=1e-4)


class Saturating(nn.Module):
    """score = min(3 x0, 1) + 0.1 x1: the elephant's trunk, saturated at x0 = 2."""

    def forward(self, x):
        return (torch.clamp(3 * x[:, :1], max=1.0) + 0.1 * x[:, 1:2]).reshape(-1, 1)


def test_saturation_saliency_misses_what_integrated_gradients_finds():
    x = np.array([2.0, 1.0], dtype=np.float32)
    sal = xk.explain(Saturating(), x, method="saliency", target=0)
    np.testing.assert_allclose(sal.values, [0.0, 0.1], atol=1e-7)
    ig = xk.explain(Saturating(), x, method="integrated_gradients", target=0, steps=300)
    np.testing.assert_allclose(ig.values, [1.0, 0.1], atol=0.01)
    assert ig.info["completeness_gap"] < 0.01
    assert ig.values.sum() == pytest.approx(1.1, abs=0.01)


def test_integrated_gradients_auto_steps_meets_tolerance():
    net, x = two_conv_net(), images()
    e = xk.explain(
        net, x, method="integrated_gradients", target=TARGETS, batch=True, steps="auto",
        tolerance=0.01,
    )  # fmt: skip
    gap, diff = e.info["completeness_gap"], e.info["output_difference"]
    assert np.all(gap <= np.maximum(0.01 * np.abs(diff), 1e-6))
    assert np.all(e.info["steps"] >= 8) and e.params["rule"] == "gausslegendre"


def test_smoothgrad_without_noise_is_the_gradient():
    net, x = two_conv_net(), images()
    _, grads = xk.Model(net).gradients(x, TARGETS)
    kwargs = dict(target=TARGETS, batch=True, noise=0.0, samples=4)
    e = xk.explain(net, x, method="smoothgrad", **kwargs)
    rel_close(e.values, grads)
    sq = xk.explain(net, x, method="smoothgrad", variant="smoothgrad_sq", **kwargs)
    rel_close(sq.values, grads**2)
    var = xk.explain(net, x, method="smoothgrad", variant="vargrad", **kwargs)
    assert np.abs(var.values).max() <= 1e-6 * (grads**2).max()


def test_smoothgrad_is_seeded():
    net, x = two_conv_net(), images(1)[0]
    a = xk.explain(net, x, method="smoothgrad", target=1, seed=3, samples=10)
    b = xk.explain(net, x, method="smoothgrad", target=1, seed=3, samples=10)
    c = xk.explain(net, x, method="smoothgrad", target=1, seed=4, samples=10)
    np.testing.assert_array_equal(a.values, b.values)
    assert not np.array_equal(a.values, c.values)


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("smoothgrad", {"samples": 30}),
        ("smoothgrad", {"samples": 30, "variant": "vargrad"}),
        ("expected_gradients", {"samples": 30}),
    ],
)
def test_an_items_draws_do_not_depend_on_the_rest_of_the_batch(method, params, monkeypatch):
    # One stream across the batch gave an item another map alone, in a batch, or reordered.
    monkeypatch.setattr(xk.attribution.gradients, "CHUNK_BYTES", 3 * 12 * 12 * 4 * 7)  # items
    net, x = two_conv_net(), images(3)  # span chunks of 7 points
    if method == "expected_gradients":
        params = {**params, "baseline": images(4) * 0.5}
    model = xk.Model(net, batch_size=8)  # one batching for all three calls

    def explain(inputs, **kwargs):
        return xk.explain(model, inputs, method=method, target=1, seed=5, **params, **kwargs)

    alone = explain(x[1]).values
    in_batch = explain(x, batch=True).values[1]
    reordered = explain(x[::-1], batch=True).values[1]
    scale = np.abs(alone).max()
    assert np.abs(in_batch - alone).max() <= 1e-6 * scale
    assert np.abs(reordered - alone).max() <= 1e-6 * scale


def test_expected_gradients_on_a_linear_model():
    torch.manual_seed(0)
    lin = nn.Linear(6, 2)
    rng = np.random.default_rng(0)
    background = rng.normal(size=(1, 6)).astype(np.float32)
    x = rng.normal(size=6).astype(np.float32)
    e = xk.explain(lin, x, method="expected_gradients", target=1, baseline=background, samples=50)
    w = lin.weight.detach().numpy()[1]
    np.testing.assert_allclose(e.values, w * (x - background[0]), rtol=1e-5, atol=1e-6)
    many = rng.normal(size=(30, 6)).astype(np.float32)
    e = xk.explain(lin, x, method="expected_gradients", target=1, baseline=many, samples=3000)
    np.testing.assert_allclose(e.values, w * (x - many.mean(0)), atol=0.08)


METHODS = {
    "saliency": {},
    "input_x_gradient": {},
    "smoothgrad": {"samples": 5},
    "integrated_gradients": {"steps": 5},
    "expected_gradients": {"baseline": images(4), "samples": 5},
    "gradcam": {},
    "gradcam++": {},
    "guided_backprop": {},
}


def _state(net):
    return (
        [m.training for m in net.modules()],
        [sum(len(h) for h in (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks))
         for m in net.modules()],
        [p.grad for p in net.parameters()],
        [p.requires_grad for p in net.parameters()],
    )  # fmt: skip


@pytest.mark.parametrize("method", sorted(METHODS))
def test_model_untouched_after_a_run(method):
    net = two_conv_net()
    net.train()
    net.relu1.eval()
    before = _state(net)
    xk.explain(net, images(2), method=method, target=[1, 2], batch=True, **METHODS[method])
    assert _state(net) == before


@pytest.mark.parametrize("method", sorted(METHODS))
def test_model_untouched_after_a_failed_run(method):
    net = two_conv_net()
    net.train()
    net.relu1.eval()
    before = _state(net)
    net.fail = True
    with pytest.raises(RuntimeError, match="forward failed"):
        xk.explain(net, images(2), method=method, target=[1, 2], batch=True, **METHODS[method])
    net.fail = False
    assert _state(net) == before


def test_single_input_gives_unbatched_explanation():
    net, x = two_conv_net(), images(1)[0]
    e = xk.explain(net, x, method="integrated_gradients", steps=8)
    assert e.values.shape == x.shape and isinstance(e.target, int)
    assert np.ndim(e.info["completeness_gap"]) == 0
    assert e.target == int(xk.Model(net).scores(x[None]).argmax())


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"method": "integrated_gradients", "steps": 0}, ValueError, "steps: expected a positive"),
        ({"method": "integrated_gradients", "rule": "simpson"}, ValueError, "rule: expected one"),
        ({"method": "smoothgrad", "samples": 0}, ValueError, "samples: expected a positive"),
        ({"method": "smoothgrad", "noise": -1.0}, ValueError, "noise: expected"),
        ({"method": "gradcam", "layer": "conv3"}, ValueError, r"layer: no layer 'conv3'.*'conv"),
        ({"method": "integrated_gradients", "layer": "conv3"}, ValueError, "layer: no layer"),
        ({"method": "saliency", "steps": 3}, TypeError, "steps: not a parameter of method"),
        ({"method": "salency"}, ValueError, r"method: .*did you mean 'saliency'"),
        ({"method": "integrated_gradients", "baseline": np.zeros(4)}, ValueError, "baseline:"),
        ({"method": "expected_gradients"}, ValueError, "baseline: expected_gradients needs"),
        ({"method": "integrated_gradients", "steps": "auto", "rule": "riemann_trapezoid"},
         ValueError, r"rule: steps=\"auto\" doubles Gauss-Legendre steps"),
    ],
)  # fmt: skip
def test_bad_parameters_are_named(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        xk.explain(two_conv_net(), images(1)[0], target=0, **kwargs)


@pytest.mark.parametrize(
    ("method", "needs"), [("saliency", "gradients"), ("attention_rollout", "attention weights")]
)
def test_a_torch_method_on_a_numpy_callable_says_what_it_needs(method, needs):
    with pytest.raises(TypeError, match=f"model: method '{method}' needs {needs}, so a PyTorch"):
        xk.explain(lambda b: np.ones((len(b), 2)) / 2, np.zeros(3), method=method)


@pytest.mark.parametrize("method", ["saliency", "integrated_gradients", "occlusion", "lime"])
def test_one_input_with_a_batch_axis_suggests_batch_true(method):
    # X[:1] is (1, C, H, W): one item of a batch, not one (C, H, W) input.
    with pytest.raises(
        ValueError, match=r"x: .*got shape \(1, 3, 12, 12\).*pass batch=True"
    ) as err:
        xk.explain(two_conv_net(), images(1), method=method)
    assert "(1, 1, 3, 12, 12)" not in str(err.value)
    e = xk.explain(two_conv_net(), images(1), method=method, batch=True)  # ... which works
    assert e.values.shape == (1, 3, 12, 12)


@pytest.mark.parametrize("method", ["saliency", "gradcam", "guided_backprop", "occlusion"])
def test_target_out_of_range_is_named(method):
    with pytest.raises(ValueError, match=r"target: expected class indices in \[0, 5\)"):
        xk.explain(two_conv_net(), images(1)[0], method=method, target=5)


ONE_PASS = ["saliency", "input_x_gradient", "gradcam", "guided_backprop"]


@pytest.mark.parametrize("method", ONE_PASS)
def test_one_pass_methods_run_the_model_once(method):
    net = two_conv_net()
    calls = []
    net.register_forward_hook(lambda _m, inputs, _o: calls.append(len(inputs[0])))
    x = images(4)
    e = xk.explain(xk.Model(net, batch_size=64), x, method=method, batch=True)
    assert calls == [4]  # the prediction comes from the method's own forward pass
    with torch.no_grad():
        scores = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(e.prediction, scores, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ONE_PASS)
def test_one_pass_methods_explain_the_predicted_class(method):
    net = two_conv_net()
    x = images(4)
    e = xk.explain(xk.Model(net, batch_size=64), x, method=method, batch=True)
    with torch.no_grad():
        scores = net(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(e.target, scores.argmax(1))
    given = xk.explain(net, x, method=method, target=list(scores.argmax(1)), batch=True)
    np.testing.assert_allclose(given.values, e.values, rtol=1e-6, atol=1e-7)


def test_integrated_gradients_reads_its_scores_from_its_own_forward_passes():
    net = two_conv_net()
    calls = []
    net.register_forward_hook(lambda _m, inputs, _o: calls.append(len(inputs[0])))
    x = images(3)
    e = xk.explain(xk.Model(net, batch_size=1000), x, method="integrated_gradients", steps=8,
                   batch=True)  # fmt: skip
    assert calls == [6, 24]  # input and baseline together, then the 3 x 8 path points
    with torch.no_grad():
        scores = net(torch.from_numpy(x)).numpy()
        zero = net(torch.zeros_like(torch.from_numpy(x))).numpy()
    np.testing.assert_array_equal(e.target, scores.argmax(1))
    np.testing.assert_allclose(e.prediction, scores, rtol=1e-5, atol=1e-6)
    rows = np.arange(3)
    expected = scores[rows, e.target] - zero[rows, e.target]
    np.testing.assert_allclose(e.info["output_difference"], expected, rtol=1e-5, atol=1e-6)


def test_token_model_layer_integrated_gradients_equals_captum():
    from captum.attr import LayerIntegratedGradients

    net = TokenNet().eval()
    ids = np.random.default_rng(0).integers(1, 30, size=(2, 7))
    e = xk.explain(
        net, ids, method="integrated_gradients", layer="embed", baseline=0, steps=20,
        rule="riemann_middle", target=[0, 2], batch=True,
    )  # fmt: skip
    want = LayerIntegratedGradients(net, net.embed).attribute(
        torch.from_numpy(ids), baselines=torch.zeros_like(torch.from_numpy(ids)),
        target=[0, 2], n_steps=20, method="riemann_middle",
    )  # fmt: skip
    assert e.values.shape == ids.shape
    rel_close(e.values, want.sum(-1).detach().numpy())
    assert np.all(e.info["completeness_gap"] < 1e-2 * np.abs(e.info["output_difference"]).max())


def test_token_model_layer_input_x_gradient_equals_captum():
    from captum.attr import LayerGradientXActivation

    net = TokenNet().eval()
    ids = np.random.default_rng(1).integers(1, 30, size=7)
    e = xk.explain(net, ids, method="input_x_gradient", layer="embed", target=1)
    want = LayerGradientXActivation(net, net.embed).attribute(torch.from_numpy(ids)[None], target=1)
    rel_close(e.values, want.sum(-1)[0].detach().numpy())
    assert e.kind == "text"


def test_token_model_layer_saliency_gives_one_magnitude_per_token():
    net = TokenNet().eval()
    ids = np.random.default_rng(1).integers(1, 30, size=7)
    s = xk.explain(net, ids, method="saliency", layer="embed", target=1)
    assert s.values.shape == (7,) and np.all(s.values >= 0)


def test_token_ids_have_no_input_gradient():
    net = TokenNet().eval()
    ids = np.random.default_rng(1).integers(1, 30, size=(1, 7))
    with pytest.raises(TypeError, match="x: gradients need floating-point inputs"):
        xk.Model(net).gradients(ids, 1)


def test_saliency_on_token_ids_attributes_to_the_embedding_by_itself():
    net = TokenNet().eval()
    ids = np.random.default_rng(1).integers(1, 30, size=7)
    (name,) = [n for n, m in net.named_modules() if isinstance(m, nn.Embedding)]
    plain = xk.explain(net, ids, method="saliency", target=1)
    given = xk.explain(net, ids, method="saliency", target=1, layer=name)
    np.testing.assert_array_equal(plain.values, given.values)


def test_loss_saliency_warns_when_the_model_is_confident():
    lin = nn.Linear(4, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[60.0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]))
        lin.bias.zero_()
    x = np.array([1.0, 0.5, 0.2, 0.1], dtype=np.float32)
    with pytest.warns(RuntimeWarning, match="gradient nearly vanishes"):
        e = xk.explain(lin, x, method="saliency", target=0, of="loss")
    assert e.values.max() < 1e-6
    score = xk.explain(lin, x, method="saliency", target=0)
    assert score.values[0] == pytest.approx(60.0)


def test_a_baseline_tensor_that_requires_grad_is_taken_as_its_values():
    net, x = two_conv_net(), images(1)[0]
    base = torch.full((3, 12, 12), 0.25, requires_grad=True)
    got = xk.explain(net, x, method="integrated_gradients", target=0, baseline=base)
    want = xk.explain(net, x, method="integrated_gradients", target=0, baseline=0.25)
    np.testing.assert_array_equal(got.values, want.values)


@pytest.mark.parametrize("method", ["saliency", "input_x_gradient", "integrated_gradients"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models_give_float32_maps(method, dtype):
    net = two_conv_net().to(dtype)
    e = xk.explain(net, images(1)[0], method=method, target=0)
    assert e.values.dtype == np.float32 and np.isfinite(e.values).all()


@pytest.mark.parametrize(
    ("method", "params"),
    [("input_x_gradient", {}), ("integrated_gradients", {"steps": "auto"})],
)
def test_a_float64_model_keeps_float64_in_every_step(method, params):
    net = two_conv_net().double()
    x = images(1)[0].astype(np.float64) + 1e-9  # not representable in float32
    e = xk.explain(net, x, method=method, target=0, **params)
    assert e.values.dtype == np.float64
    if method == "input_x_gradient":
        _, grads = xk.Model(net).gradients(x[None], target=0)
        np.testing.assert_array_equal(e.values, x * grads[0])


def test_a_baseline_tensor_is_kept_in_params_as_its_values():
    net, x = two_conv_net(), images(1)[0]
    base = torch.full((3, 12, 12), 0.25)
    e = xk.explain(net, x, method="integrated_gradients", target=0, baseline=base, steps=8)
    assert isinstance(e.params["baseline"], np.ndarray)
    np.testing.assert_array_equal(e.params["baseline"], base.numpy())


def test_integrated_gradients_takes_a_baseline_per_item_without_a_warning():
    net, x = two_conv_net(), images(2)
    bases = np.stack([np.zeros((3, 12, 12)), np.full((3, 12, 12), 0.5)]).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        both = xk.explain(net, x, method="integrated_gradients", target=0, baseline=bases,
                          batch=True, steps=8)  # fmt: skip
    second = xk.explain(net, x[1], method="integrated_gradients", target=0, baseline=0.5, steps=8)
    np.testing.assert_allclose(both.values[1], second.values, rtol=1e-5, atol=1e-7)
