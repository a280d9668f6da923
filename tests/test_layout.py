"""Channels-last scoring: a copy of the model in the faster layout (BatchNorms folded into
their convolutions), never the user's model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import xaikit as xk
from _models import AliasedUpdateCNN, ConvHead, InputEditingCNN, batch_norm_cnn
from _models import conv_bn_pool_net as conv_net
from xaikit import layout


@pytest.fixture
def images():
    return np.random.default_rng(0).random((40, 3, 16, 16), dtype=np.float32)


def forced(net: nn.Module, images: np.ndarray, how: str) -> xk.Model:
    """A Model whose score calls on ``images`` use the layout ``how`` (no timing involved)."""
    model = xk.Model(net, batch_size=16)
    layout.choose(net, xk.batching.call_key(images, "scores", model.device), how)
    return model


def test_channels_last_scores_equal_the_default_layout(images):
    net = conv_net()
    plain = xk.Model(net, batch_size=16).scores(images)
    fast = forced(net, images, "channels_last").scores(images)
    np.testing.assert_allclose(fast, plain, rtol=layout.RTOL, atol=layout.ATOL)


def test_the_users_model_keeps_its_layout(images):
    net = conv_net()
    forced(net, images, "channels_last").scores(images)
    assert all(p.is_contiguous() for p in net.parameters())
    assert not any(
        p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
        for p in net.parameters()
    )


@pytest.mark.parametrize("through_data", [False, True])
def test_changed_weights_reach_the_copy(images, through_data):
    net = conv_net()
    model = forced(net, images, "channels_last")
    before = model.scores(images)
    if through_data:  # no version counter moves: the sampled values tell
        net[-1].bias.data.add_(1.0)
    else:
        with torch.no_grad():
            net[-1].bias.add_(1.0)  # in place, as an optimizer step does
    after = model.scores(images)
    np.testing.assert_allclose(after, before + 1.0, rtol=1e-5, atol=1e-5)


class ScaledNet(nn.Module):
    """conv_bn_pool_net with its scores times ``scale``, a plain attribute the forward reads."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.scale = conv_net(), 1.0

    def forward(self, x):
        return self.body(x) * self.scale


@pytest.mark.parametrize("change", ["swap_activation", "plain_attribute"])
def test_a_changed_structure_or_setting_reaches_the_copy(images, change):
    # Neither change moves a parameter or buffer; the copy used to keep scoring the old model.
    net = ScaledNet().eval()
    model = forced(net, images, "channels_last")
    model.scores(images)  # the copy is made
    if change == "swap_activation":
        net.body[5] = nn.Tanh()
    else:
        net.scale = 3.0
    with torch.no_grad():
        expected = net(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(model.scores(images), expected, rtol=1e-4, atol=1e-5)


def test_a_layer_recording_sees_the_users_module(images):
    net = conv_net()
    model = forced(net, images, "channels_last")
    with model.layer("4") as recording:
        model.scores(images)
    assert recording.activations.shape == (40, 8, 3, 3)


def test_the_search_keeps_a_layout_whose_scores_match(images):
    net = conv_net()
    model = xk.Model(net)
    many = np.concatenate([images] * 8)
    scores = model.scores(many)
    (chosen,) = model.chosen_layouts.values()
    assert chosen in ("channels_last", "contiguous")
    np.testing.assert_allclose(
        scores, xk.Model(conv_net(), batch_size=64).scores(many), rtol=1e-4, atol=1e-5
    )


def test_a_model_without_convolutions_is_not_copied():
    net = nn.Sequential(nn.Flatten(), nn.Linear(48, 2))
    x = np.zeros((2, 3, 4, 4), np.float32)
    assert not layout.may_use_channels_last(net, x, {})


@pytest.mark.parametrize(
    ("how", "folded"),
    [
        ("plain", ["bn1", "bn2"]),
        ("two_readers", ["bn2"]),  # conv1's output also feeds the skip connection
        ("shared", ["bn2"]),  # conv1 runs twice
        ("reads_weight", ["bn2"]),  # the forward reads bn1.weight itself
        ("relu_input_read", ["bn1", "bn2"]),
        ("branches", []),  # no fx trace: nothing is folded
    ],
)
def test_batch_norms_fold_only_into_a_convolution_that_feeds_them_alone(how, folded):
    twin = batch_norm_cnn(how).eval()
    assert layout.fold_batch_norms(twin) == folded
    assert all(isinstance(twin.get_submodule(path), nn.Identity) for path in folded)


@pytest.mark.parametrize(
    ("how", "changed"),
    [
        ("plain", ["relu"]),  # its input, bn2(conv2(...)), is a new tensor read only by it
        ("relu_input_read", []),  # the forward reads the ReLU's input again after it
        ("branches", []),
    ],
)
def test_relus_run_in_place_only_on_a_fresh_input_nothing_else_reads(how, changed):
    twin = batch_norm_cnn(how).eval()
    layout.fold_batch_norms(twin)
    assert layout.relus_in_place(twin) == changed
    assert [p for p, m in twin.named_modules() if getattr(m, "inplace", False)] == changed


HOWS = ["plain", "two_readers", "shared", "reads_weight", "relu_input_read", "branches"]


@pytest.mark.parametrize("how", HOWS)
def test_the_copy_scores_like_the_model(how):
    x = np.random.default_rng(0).random((20, 3, 8, 8), dtype=np.float32)
    plain = xk.Model(batch_norm_cnn(how), batch_size=16).scores(x)
    fast = forced(batch_norm_cnn(how), x, "channels_last").scores(x)
    np.testing.assert_allclose(fast, plain, rtol=layout.RTOL, atol=layout.ATOL)


def test_folding_leaves_the_users_model_as_it_was():
    net = batch_norm_cnn()  # in training mode
    before = {name: t.clone() for name, t in net.state_dict().items()}
    x = np.random.default_rng(0).random((20, 3, 8, 8), dtype=np.float32)
    forced(net, x, "channels_last").scores(x)
    after = net.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[name], before[name]) for name in before)
    assert all(m.training for m in net.modules())
    assert isinstance(net.bn1, nn.BatchNorm2d) and isinstance(net.bn2, nn.BatchNorm2d)


def test_a_copy_whose_forward_fails_is_not_kept():
    # bn1.num_features is a plain int: the trace does not see it read, the fold takes bn1
    # and the copy's forward then fails; the search keeps the user's module.
    net = batch_norm_cnn("reads_attribute").eval()
    x = np.random.default_rng(0).random((64, 3, 8, 8), dtype=np.float32)
    scores = xk.Model(net).scores(x)
    assert list(xk.Model(net).chosen_layouts.values()) == ["contiguous"]
    np.testing.assert_allclose(scores, xk.Model(net, batch_size=64).scores(x), rtol=1e-5)


@pytest.mark.parametrize("channels", [1, 3])  # one channel: the change of layout copies nothing
def test_a_forward_that_edits_its_input_leaves_the_callers_array(channels):
    x = np.random.default_rng(0).random((20, channels, 8, 8), dtype=np.float32)
    before = x.copy()
    forced(InputEditingCNN(channels).eval(), x, "channels_last").scores(x)
    np.testing.assert_array_equal(x, before)


def forced_gradients(net: nn.Module, images: np.ndarray, how: str) -> xk.Model:
    """A Model whose gradient calls on ``images`` feed the layout ``how`` (no timing)."""
    model = xk.Model(net, batch_size=16)
    for points in (images, torch.from_numpy(images)):  # IG's points are tensors
        layout.choose(net, xk.batching.call_key(points, "gradients", model.device), how)
    return model


@pytest.mark.parametrize("method", ["saliency", "integrated_gradients", "lrp"])
def test_channels_last_gradients_equal_the_default_layout(images, method):
    net = conv_net().eval()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    plain = xk.explain(xk.Model(net, batch_size=16), images, method=method, batch=True)
    fast = xk.explain(forced_gradients(net, images, "channels_last"), images, method=method,
                      batch=True)  # fmt: skip
    np.testing.assert_allclose(fast.prediction, plain.prediction, rtol=1e-5, atol=1e-6)
    scale = np.abs(plain.values).max()
    np.testing.assert_allclose(fast.values, plain.values, rtol=1e-4, atol=1e-5 * scale)
    assert fast.values.flags.c_contiguous
    for name, value in net.state_dict().items():  # the user's module: same weights, layout
        assert torch.equal(value, state[name]) and value.is_contiguous()


class _FlattensItsInput(nn.Module):
    """A conv net whose forward views its input: a channels-last input cannot be viewed."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 14 * 14, 2)

    def forward(self, x):
        flat = x.view(len(x), -1)
        return self.fc(torch.relu(self.conv(flat.view(x.shape))).flatten(1))


def test_a_gradient_layout_whose_forward_fails_is_not_kept(images):
    torch.manual_seed(0)
    net = _FlattensItsInput()
    many = np.concatenate([images] * 4)
    _, grads = xk.Model(net).gradients(many, 0)
    assert list(layout.chosen_layouts(net).values()) == ["contiguous"]
    _, want = xk.Model(net, batch_size=len(many)).gradients(many, 0)
    np.testing.assert_allclose(grads, want, rtol=1e-5, atol=1e-7)


def test_a_small_call_gives_the_same_result_whether_a_search_ran_or_not(images):
    # A small call (one batch, no search) took the layout that a larger call's search chose:
    # the same call gave other last bits after it.
    net = conv_net()
    model = xk.Model(net)
    before = model.scores(images[:4]), model.gradients(images[:4], target=1)[1]
    key = xk.batching.call_key(images, "scores", model.device)
    layout.choose(net, key, "channels_last")  # as a search may choose
    layout.choose(net, xk.batching.call_key(images, "gradients", model.device), "channels_last")
    after = model.scores(images[:4]), model.gradients(images[:4], target=1)[1]
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_relu_after_an_update_another_name_holds_stays_out_of_place():
    # fx reads `skip = h; h += y` as a new tensor h + y; an in-place ReLU there would also
    # overwrite skip, which the forward reads afterwards
    net = AliasedUpdateCNN().eval()
    assert layout.relus_in_place(layout.channels_last_copy(net, in_place=False)) == []
    x = np.random.default_rng(0).normal(size=(20, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    got = forced(net, x, "channels_last").scores(x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


class ScaledCNN(ConvHead):
    """Reads a setting held as a plain attribute: ``scale`` multiplies the logits."""

    def __init__(self, scale) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x):
        scale = self.scale["value"] if isinstance(self.scale, dict) else self.scale
        return self.head(self.conv(x).flatten(1)) * torch.as_tensor(scale).float().sum()


def _set_scale_in_place(net):
    net.scale[:] = 3.0


def _set_dict_scale(net):
    net.scale["value"] = 3.0


@pytest.mark.parametrize(
    ("scale", "change"),
    [
        (np.float32(1.0), lambda net: setattr(net, "scale", np.float32(3.0))),
        (np.ones(2, np.float32), _set_scale_in_place),
        (np.ones(2, np.float32), lambda net: setattr(net, "scale", np.full(2, 3.0))),
        ({"value": 1.0}, _set_dict_scale),
    ],
    ids=["numpy scalar", "array edited in place", "array replaced", "dict entry"],
)
def test_the_copy_is_made_again_when_a_numpy_or_dict_setting_changes(scale, change):
    net = ScaledCNN(scale).eval()
    x = np.random.default_rng(0).random((20, 3, 8, 8), dtype=np.float32)
    model = forced(net, x, "channels_last")
    model.scores(x)
    change(net)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.scores(x), want, rtol=1e-4, atol=1e-5)


class ResidualCNN(nn.Module):
    """A stem and one residual block (``relu(bn(conv(h)) + h)``) on 3x8x8 images, 3 classes.

    ``how``: ``"modules"`` nn.ReLU layers; ``"functional"`` F.relu, torch.relu and .relu();
    ``"skip_first"`` the sum written ``h + bn(conv(h))``; ``"same_padding"`` the block's
    convolutions pad with ``"same"``; ``"sum_of_one"`` ``relu(y + y)``, one convolution read
    twice by the sum.
    """

    def __init__(self, how: str = "modules") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.how = how
        padding = "same" if how == "same_padding" else 1
        self.stem, self.bn0 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv1, self.bn1 = nn.Conv2d(4, 4, 3, padding=padding), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=padding, bias=False), nn.BatchNorm2d(4)
        self.relu0, self.relu1, self.relu2 = nn.ReLU(), nn.ReLU(), nn.ReLU()
        self.head = nn.Linear(4 * 8 * 8, 3)
        with torch.no_grad():
            for bn in (self.bn0, self.bn1, self.bn2):
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        functional = self.how == "functional"
        h = self.bn0(self.stem(x))
        h = torch.relu(h) if functional else self.relu0(h)
        y = self.bn1(self.conv1(h))
        y = nn.functional.relu(y) if functional else self.relu1(y)
        y = self.bn2(self.conv2(y))
        if self.how == "sum_of_one":
            out = self.relu2(y + y)
        elif self.how == "skip_first":
            out = self.relu2(h + y)
        else:
            out = (y + h).relu() if functional else self.relu2(y + h)
        return self.head(out.flatten(1))


def _fused_copy(net: nn.Module, x: np.ndarray) -> nn.Module:
    example = layout.as_channels_last(torch.from_numpy(x[:1]))
    return layout.channels_last_copy(net, example=example)


def _fused(copy: nn.Module) -> int:
    return sum(type(m).__name__ == "_FusedConvolution" for m in copy.modules())


@pytest.mark.parametrize(
    ("how", "fused"),
    [
        ("modules", 3),  # stem + ReLU, conv1 + ReLU, conv2 + sum + ReLU
        ("functional", 3),
        ("skip_first", 3),
        ("same_padding", 1),  # only the stem: oneDNN's call takes explicit padding
        ("sum_of_one", 2),  # y + y: the sum keeps its convolution
    ],
)
def test_convolutions_take_the_relu_after_them_with_equal_scores(how, fused):
    net = ResidualCNN(how).eval()
    x = np.random.default_rng(0).normal(size=(20, 3, 8, 8)).astype(np.float32)
    assert _fused(_fused_copy(net, x)) == fused
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    got = forced(net, x, "channels_last").scores(x)
    np.testing.assert_allclose(got, want, rtol=layout.RTOL, atol=layout.ATOL)
    assert _fused(layout._COPIES[net][(True, True)][1]) == fused  # the score call's copy


def test_a_forward_whose_trace_hides_an_in_place_update_is_not_fused():
    # `skip = h; h += conv1(x); relu(h)`: the trace's h + conv1(x) would leave skip as it was
    net = AliasedUpdateCNN().eval()
    x = np.random.default_rng(0).normal(size=(20, 3, 8, 8)).astype(np.float32)
    copy_ = _fused_copy(net, x)
    assert _fused(copy_) == 0 and not isinstance(copy_, torch.fx.GraphModule)


def test_a_fused_copy_that_scores_otherwise_is_not_kept(monkeypatch):
    real = layout._FusedConvolution.forward
    monkeypatch.setattr(layout._FusedConvolution, "forward", lambda s, x, o=None: real(s, x, o) + 1)
    net = ResidualCNN().eval()
    x = np.random.default_rng(0).normal(size=(20, 3, 8, 8)).astype(np.float32)
    assert _fused(_fused_copy(net, x)) == 0
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    got = forced(net, x, "channels_last").scores(x)
    np.testing.assert_allclose(got, want, rtol=layout.RTOL, atol=layout.ATOL)


@pytest.mark.parametrize("why", ["float64", "oneDNN off"])
def test_no_fusion_where_the_backend_cannot(why):
    net = ResidualCNN().eval()
    x = np.random.default_rng(0).normal(size=(20, 3, 8, 8)).astype(np.float32)
    if why == "float64":
        net, x = net.double(), x.astype(np.float64)
        assert _fused(_fused_copy(net, x)) == 0
    else:
        with torch.backends.mkldnn.flags(enabled=False):
            assert _fused(_fused_copy(net, x)) == 0


class ViewAliasCNN(nn.Module):
    """``skip = h[:, :]; h += conv1(h)``: the update reaches ``skip`` through a view, which the
    trace (``h + conv1(h)``) does not show; ``how="dropout"``: ``skip`` is an eval-mode
    dropout of ``h``, which is ``h`` itself. Bias-free: a blank input scores 0 whatever the
    graph does. 3x8x8 images, 3 classes."""

    def __init__(self, how: str = "view") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.how = how
        self.conv0 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.head = nn.Linear(4 * 8 * 8, 3, bias=False)

    def forward(self, x):
        h = torch.relu(self.conv0(x))
        skip = h[:, :] if self.how == "view" else nn.functional.dropout(h, 0.1, self.training)
        h += self.conv1(h)
        return self.head((torch.relu(h) + skip).flatten(1))


@pytest.mark.parametrize("how", ["view", "dropout"])
def test_an_update_seen_through_a_view_is_not_fused(how):
    net = ViewAliasCNN(how).eval()
    assert layout._hidden_update(torch.fx.symbolic_trace(net))
    assert not layout._hidden_update(torch.fx.symbolic_trace(ResidualCNN().eval()))
    x = np.random.default_rng(0).random((20, 3, 8, 8), dtype=np.float32)
    assert _fused(_fused_copy(net, x)) == 0
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    got = forced(net, x, "channels_last").scores(x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_fusing_leaves_the_global_random_state_alone():
    net = ResidualCNN().eval()
    torch.manual_seed(123)
    _fused_copy(net, np.random.default_rng(0).random((2, 3, 8, 8), dtype=np.float32))
    after = torch.rand(3)
    torch.manual_seed(123)
    np.testing.assert_array_equal(after.numpy(), torch.rand(3).numpy())


def test_a_blank_first_item_does_not_pass_a_wrong_fused_copy(monkeypatch):
    # A perturbation method's first input may be its baseline (zeros): a bias-free network
    # scores 0 there whether or not the graph is right, so noise is checked too.
    monkeypatch.setattr(layout, "_hidden_update", lambda traced: False)
    net = ViewAliasCNN().eval()
    assert _fused(_fused_copy(net, np.zeros((1, 3, 8, 8), np.float32))) == 0


class PartialUpdateCNN(nn.Module):
    """``s = h[:, :4]; s += conv2(x); relu(s)`` and ``h`` read after: the sum is ``h``'s memory,
    so that ReLU must not run in place. 3-channel images, 3 classes."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.head = nn.Linear(12, 3)

    def forward(self, x):
        h = self.conv1(x)
        s = h[:, :4]
        s += self.conv2(x)
        s = self.relu(s)
        return self.head(torch.cat([s.mean((2, 3)), h.mean((2, 3))], 1))


class NoisyCNN(ConvHead):
    """Adds fresh noise to its logits on every call (randomised smoothing at test time)."""

    def forward(self, x):
        return super().forward(torch.relu(x)) + torch.rand(2)


def test_a_relu_after_an_update_through_a_view_stays_out_of_place():
    net = PartialUpdateCNN().eval()
    assert layout.relus_in_place(layout.channels_last_copy(net, in_place=False)) == []
    x = np.random.default_rng(0).normal(size=(20, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    got = forced(net, x, "channels_last").scores(x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_a_forward_that_draws_noise_keeps_its_draws_unfused():
    x = np.random.default_rng(0).normal(size=(20, 3, 8, 8)).astype(np.float32)
    draws = {}
    for how in ("contiguous", "channels_last"):
        net = NoisyCNN().eval()
        torch.manual_seed(5)
        scores = forced(net, x, how).scores(x)
        draws[how] = (scores, torch.rand(1).item())
    assert draws["channels_last"][1] == draws["contiguous"][1]  # the stream after the call
    # each batch drew its own noise (a fused graph would hold one draw as a constant)
    noise = draws["channels_last"][0] - draws["contiguous"][0]
    np.testing.assert_allclose(noise, 0, atol=1e-5)


@pytest.mark.parametrize("how", ["forward replaced on an instance", "global hook"])
def test_the_copy_is_not_used_where_the_users_layers_must_run(how):
    net = batch_norm_cnn().eval()
    x = np.random.default_rng(0).random((20, 3, 8, 8), dtype=np.float32)
    if how == "global hook":
        handle = torch.nn.modules.module.register_module_forward_hook(lambda m, i, o: None)
    else:  # as accelerate's add_hook_to_module does: the folds would skip the doubling
        original = net.bn1.forward
        net.bn1.forward = lambda t: original(t) * 2.0
    try:
        assert not layout.may_use_channels_last(net, x, {})
        with torch.no_grad():
            want = net(torch.from_numpy(x)).numpy()
        got = forced(net, x, "channels_last").scores(x)
    finally:
        if how == "global hook":
            handle.remove()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
