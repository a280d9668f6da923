"""The Model adapter: batching, gradients, layers, bad input, and no trace on the user's model."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import xaikit as xk
from _models import StatefulCNN, stateful_cnn


def inputs(n: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, 8, 8), dtype=np.float32)


def snapshot(net: nn.Module) -> dict:
    """Everything about a module that xaikit promises not to change."""
    return {
        "training": {k: m.training for k, m in net.named_modules()},
        "state": {k: v.detach().clone() for k, v in net.state_dict().items()},
        "requires_grad": {k: p.requires_grad for k, p in net.named_parameters()},
        "grad": {
            k: (None if p.grad is None else (id(p.grad), p.grad.clone()))
            for k, p in net.named_parameters()
        },
        "hooks": {
            k: (
                len(m._forward_hooks),
                len(m._forward_pre_hooks),
                len(m._backward_hooks),
                len(m._backward_pre_hooks),
            )
            for k, m in net.named_modules()
        },
    }


def assert_same_state(before: dict, after: dict) -> None:
    assert before["training"] == after["training"]
    assert before["requires_grad"] == after["requires_grad"]
    assert before["hooks"] == after["hooks"]
    for key, value in before["state"].items():
        assert torch.equal(value, after["state"][key]), key
    for key, value in before["grad"].items():
        other = after["grad"][key]
        if value is None:
            assert other is None, key
        else:
            assert other[0] == value[0] and torch.equal(other[1], value[1]), key


def user_state(net: StatefulCNN) -> None:
    """Mixed training flags, one frozen parameter, one existing .grad."""
    net.train()
    net.drop.eval()
    net.conv.bias.requires_grad_(False)
    net.head.weight.grad = torch.full_like(net.head.weight, 0.25)


CALLS = {
    "scores": lambda m, x: m.scores(x),
    "gradients": lambda m, x: m.gradients(x, target=1),
    "gradients_pred": lambda m, x: m.gradients(x),
    "loss_gradients": lambda m, x: m.gradients(x, target=2, of="loss"),
    "layer": lambda m, x: _with_layer(m, x),
}


def _with_layer(m: xk.Model, x):
    with m.layer("bn", gradients=True) as rec:
        m.gradients(x, target=0)
    return rec


@pytest.mark.parametrize("call", sorted(CALLS))
def test_state_preserved_on_success(call):
    net = stateful_cnn()
    user_state(net)
    before = snapshot(net)
    CALLS[call](xk.Model(net, batch_size=3), inputs())
    assert_same_state(before, snapshot(net))


@pytest.mark.parametrize("call", sorted(CALLS))
def test_state_preserved_when_forward_raises(call):
    net = stateful_cnn()
    user_state(net)
    m = xk.Model(net, batch_size=4)
    m.scores(inputs(2))  # a first good call, so the failure happens mid-way through batches
    net.fail_after_bn = True
    before = snapshot(net)
    with pytest.raises(RuntimeError, match="boom inside forward"):
        CALLS[call](m, inputs())
    assert_same_state(before, snapshot(net))


def test_global_state_restored():
    net = stateful_cnn()
    m = xk.Model(net)
    grad_mode = torch.is_grad_enabled()
    m.gradients(inputs(), target=0)
    assert torch.is_grad_enabled() == grad_mode
    assert not torch.is_inference_mode_enabled()


def test_batchnorm_statistics_not_updated_in_train_mode():
    net = stateful_cnn()
    net.train()
    mean = net.bn.running_mean.clone()
    tracked = net.bn.num_batches_tracked.clone()
    xk.Model(net).scores(inputs(50) * 10)
    assert torch.equal(net.bn.running_mean, mean)
    assert torch.equal(net.bn.num_batches_tracked, tracked)


def test_scores_are_the_eval_mode_forward_as_float32():
    net = stateful_cnn()
    net.train()
    x = inputs(20)
    got = xk.Model(net).scores(x)
    net.eval()
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32


def test_gradients_equal_autograd():
    net = stateful_cnn().eval()
    x = inputs(12)
    targets = np.arange(12) % 4
    scores, grads = xk.Model(net, batch_size=5).gradients(x, targets)
    xt = torch.from_numpy(x).requires_grad_(True)
    out = net(xt)
    out.gather(1, torch.from_numpy(targets)[:, None]).sum().backward()
    np.testing.assert_allclose(grads, xt.grad.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(scores, out.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_gradients_default_target_is_prediction():
    net = stateful_cnn().eval()
    x = inputs(9)
    m = xk.Model(net)
    predicted = m.predict(x)
    _, got = m.gradients(x)
    _, want = m.gradients(x, predicted)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("of", ["probability", "log_probability", "loss"])
def test_gradients_of_each_output_equal_autograd(of):
    net = stateful_cnn().eval()
    x = inputs(6)
    target = np.array([0, 1, 2, 3, 0, 1])
    _, got = xk.Model(net).gradients(x, target, of=of)
    xt = torch.from_numpy(x).requires_grad_(True)
    logits = net(xt)
    t = torch.from_numpy(target)
    if of == "loss":
        value = F.cross_entropy(logits, t, reduction="sum")
    else:
        log_p = F.log_softmax(logits, 1).gather(1, t[:, None])
        value = (log_p.exp() if of == "probability" else log_p).sum()
    value.backward()
    np.testing.assert_allclose(got, xt.grad.numpy(), rtol=1e-4, atol=1e-7)


def test_gradients_of_a_frozen_model():
    net = stateful_cnn().eval()
    for p in net.parameters():
        p.requires_grad_(False)
    _, grads = xk.Model(net).gradients(inputs(3), target=1)
    assert np.abs(grads).sum() > 0
    assert not any(p.requires_grad for p in net.parameters())


def test_tensor_inputs_are_left_alone():
    net = stateful_cnn().eval()
    xt = torch.from_numpy(inputs(5))
    copy = xt.clone()
    xk.Model(net).gradients(xt, target=0, as_numpy=False)
    assert not xt.requires_grad and xt.grad is None and torch.equal(xt, copy)


def test_tensors_come_back_only_when_asked():
    net = stateful_cnn().eval()
    xt = torch.from_numpy(inputs(5))
    m = xk.Model(net)
    scores, grads = m.gradients(xt, target=0, as_numpy=False)
    assert isinstance(scores, torch.Tensor) and isinstance(grads, torch.Tensor)
    assert isinstance(m.scores(xt), np.ndarray)


def test_float64_numpy_input_is_cast_to_the_model_dtype():
    net = stateful_cnn().eval()
    xt = torch.from_numpy(inputs(5))
    m = xk.Model(net)
    np.testing.assert_allclose(m.scores(xt.double().numpy()), m.scores(xt), rtol=1e-6)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 40), batch=st.integers(1, 17))
def test_results_do_not_depend_on_batch_size(n, batch):
    net = stateful_cnn().eval()
    x = inputs(n, seed=n)
    ref = xk.Model(net, batch_size=64)
    got = xk.Model(net, batch_size=batch)
    np.testing.assert_allclose(got.scores(x), ref.scores(x), rtol=1e-5, atol=1e-6)
    targets = np.arange(n) % 4
    np.testing.assert_allclose(
        got.gradients(x, targets)[1], ref.gradients(x, targets)[1], rtol=1e-5, atol=1e-7
    )


class BatchSizeSpy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 3)
        self.sizes: list[int] = []

    def forward(self, x):
        self.sizes.append(len(x))
        return self.lin(x)


def test_auto_batch_size_is_searched_once_per_module():
    spy = BatchSizeSpy()
    m = xk.Model(spy)
    x = np.random.default_rng(0).random((6000, 8), dtype=np.float32)
    first = m.scores(x)
    key = ("scores", (8,), "float32", "cpu")
    chosen = m.chosen_batch_sizes[key]
    assert len(set(spy.sizes)) > 2  # several sizes were timed
    spy.sizes.clear()
    second = xk.Model(spy).scores(x)  # a new wrapper of the same module: no new search
    count = -(-len(x) // chosen)  # as few batches as the chosen size allows, of even sizes
    assert len(spy.sizes) == count and sum(spy.sizes) == len(x)
    assert max(spy.sizes) <= chosen and max(spy.sizes) - min(spy.sizes) <= 1
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize(
    ("n", "size", "sizes"),
    [
        (100, 32, [25] * 4),
        (97, 8, [8] * 6 + [7] * 7),  # was 12 x 8 and a last batch of one item
        (33, 32, [17, 16]),
        (32, 32, [32]),
    ],
)
def test_batches_are_even_not_a_small_remainder(n, size, sizes):
    spy = BatchSizeSpy()
    xk.Model(spy, batch_size=size).scores(np.zeros((n, 8), dtype=np.float32))
    assert spy.sizes == sizes


def test_auto_results_do_not_depend_on_timing():
    """The search runs on copies of one item, so repeated calls batch (and compute) alike."""
    net = stateful_cnn().eval()
    x = inputs(300, seed=5)
    a = xk.Model(net).gradients(x, 1)[1]
    b = xk.Model(net).gradients(x, 1)[1]
    c = xk.Model(net).scores(x)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(c, xk.Model(net).scores(x))


def test_auto_search_gradients_follow_the_real_rows():
    net = stateful_cnn().eval()
    x = inputs(37, seed=2)
    targets = np.arange(37) % 4
    got = xk.Model(net).gradients(x, targets)[1]
    want = xk.Model(net, batch_size=37).gradients(x, targets)[1]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_predict_proba_model_gives_its_probabilities():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 5))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    clf = LogisticRegression().fit(X, y)
    m = xk.Model(clf, batch_size=32)
    assert m.output == "probabilities" and not m.is_torch
    np.testing.assert_allclose(m.scores(X), clf.predict_proba(X))
    np.testing.assert_allclose(m.probabilities(torch.from_numpy(X)), clf.predict_proba(X))


def _plain(batch):
    return np.stack([batch.sum(1), -batch.sum(1)], axis=1)


def test_numpy_callable_gives_its_scores():
    X = np.random.default_rng(0).normal(size=(200, 5))
    fm = xk.Model(_plain, output="scores")
    np.testing.assert_allclose(fm.scores(X)[:, 0], X.sum(1))


@pytest.mark.parametrize(
    ("use", "pattern"),
    [
        (lambda m, X: m.gradients(X, 0), "model: gradients need a PyTorch model"),
        (lambda m, X: m.layer("anything").__enter__(), "model"),
    ],
    ids=["gradients", "layer"],
)
def test_numpy_callable_refuses_what_needs_pytorch(use, pattern):
    X = np.random.default_rng(0).normal(size=(200, 5))
    with pytest.raises(TypeError, match=pattern):
        use(xk.Model(_plain, output="scores"), X)


def test_probabilities_softmax_logits():
    net = stateful_cnn().eval()
    m = xk.Model(net)
    p = m.probabilities(inputs(4))
    np.testing.assert_allclose(p.sum(1), 1, rtol=1e-6)
    want = torch.softmax(torch.from_numpy(m.scores(inputs(4))), 1)
    np.testing.assert_allclose(p, want, rtol=1e-6)


def test_token_model_with_embedding_gets_integer_ids():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Embedding(20, 4), nn.Flatten(), nn.Linear(4 * 6, 2))
    ids = np.random.default_rng(0).integers(0, 20, size=(7, 6))
    got = xk.Model(net).scores(ids)
    with torch.no_grad():
        want = net(torch.from_numpy(ids)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6)
    with pytest.raises(TypeError, match="x: gradients need floating-point inputs"):
        xk.Model(net).gradients(ids, 0)


def test_layer_records_what_passes_through_it_then_removes_its_hook():
    net = stateful_cnn().eval()
    x = inputs(7)
    m = xk.Model(net, batch_size=3)
    with m.layer("conv", gradients=True) as rec:
        m.gradients(x, target=2)
    xt = torch.from_numpy(x)
    act = net.conv(xt)
    act.retain_grad()
    net.head(torch.relu(net.bn(act)).flatten(1))[:, 2].sum().backward()
    np.testing.assert_allclose(rec.activations, act.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rec.gradients, act.grad.numpy(), rtol=1e-5, atol=1e-7)
    assert len(rec.activation_batches) == 3
    assert len(net.conv._forward_hooks) == 0


def test_layer_transform_is_applied_to_the_activations():
    net = stateful_cnn().eval()
    m = xk.Model(net)
    with m.layer("bn", transform=lambda a: a.mean(dim=(2, 3))) as rec:
        m.scores(inputs(5))
    assert rec.activations.shape == (5, 4)


def test_layer_hook_is_removed_on_error():
    net = stateful_cnn().eval()
    m = xk.Model(net)
    with pytest.raises(KeyError), m.layer("conv"):
        raise KeyError("user code failed inside the block")
    assert len(net.conv._forward_hooks) == 0


def test_unknown_layer_is_refused_with_a_suggestion():
    m = xk.Model(stateful_cnn())
    with pytest.raises(ValueError, match=r"name: no layer 'con' .*'conv'"):
        m.find_layer("con")


def test_layer_names_lists_the_named_modules():
    assert xk.Model(stateful_cnn()).layer_names() == ["conv", "bn", "drop", "head"]


# ---------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("bad", "error", "pattern"),
    [
        (np.zeros((3, 2, 8, 8), np.float32), ValueError, r"x: expected 1 channel"),
        (np.zeros((3, 8, 8), np.float32), ValueError, r"x: expected a batch of 3-D items"),
        (np.full((2, 1, 8, 8), np.nan, np.float32), ValueError, r"x: expected finite values"),
        (torch.full((2, 1, 8, 8), float("inf")), ValueError, r"x: expected finite values"),
        (np.array([["a"]]), TypeError, r"x: expected real numbers"),
        (np.zeros((2, 1, 8, 8), bool), TypeError, r"x: expected real numbers"),
        (torch.zeros((2, 1, 8, 8), dtype=torch.complex64), TypeError, r"x: expected real"),
        ("image.png", TypeError, r"x: expected an array or tensor"),
        (None, TypeError, r"x: expected an array or tensor"),
        (np.zeros((0, 1, 8, 8), np.float32), ValueError, r"x: expected at least one item"),
        (np.float32(1.0), ValueError, r"x: expected a batch"),
    ],
)
def test_bad_inputs_name_the_argument(bad, error, pattern):
    m = xk.Model(stateful_cnn())
    with pytest.raises(error, match=pattern):
        m.scores(bad)


def test_declared_input_shape_is_checked_up_front():
    m = xk.Model(stateful_cnn(), input_shape=(1, 8, 8))
    with pytest.raises(ValueError, match=r"x: expected items of shape \(1, 8, 8\).*\(2, 1, 9, 9\)"):
        m.scores(np.zeros((2, 1, 9, 9), np.float32))


def test_linear_model_feature_count_is_named():
    m = xk.Model(nn.Linear(5, 2))
    with pytest.raises(ValueError, match="x: expected 5 features per item"):
        m.scores(np.zeros((3, 4), np.float32))


class Returns(nn.Module):
    def __init__(self, make) -> None:
        super().__init__()
        self.make = make
        self.lin = nn.Linear(3, 2)

    def forward(self, x):
        return self.make(self.lin(x))


@pytest.mark.parametrize(
    ("make", "pattern"),
    [
        (lambda out: ("scores", out), r"model: expected its output to be scores .* tuple"),
        (lambda out: {"scores": out}, r"model: expected its output to be scores .* dict"),
        (lambda out: out[:1], r"model: expected scores of shape .*got shape \(1, 2\)"),
        (lambda out: out[:, :, None], r"model: expected scores .*got shape \(4, 2, 1\)"),
        (lambda out: out * float("nan"), r"model output: expected finite values"),
    ],
)
def test_model_with_wrong_output_is_named(make, pattern):
    m = xk.Model(Returns(make))
    with pytest.raises(ValueError, match=pattern):
        m.scores(np.zeros((4, 3), np.float32))


def test_callable_with_wrong_output_is_named():
    with pytest.raises(ValueError, match="model: expected scores of shape"):
        xk.Model(lambda b: b.sum(1)[:2]).scores(np.ones((3, 2)))
    with pytest.raises(ValueError, match="model: expected numeric scores"):
        xk.Model(lambda b: np.array([["a", "b"]] * len(b))).scores(np.ones((3, 2)))
    with pytest.raises(ValueError, match="model: expected numeric scores"):
        xk.Model(lambda b: None).scores(np.ones((3, 2)))


def test_model_whose_output_does_not_depend_on_input():
    class Detached(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, x):
            return self.lin(x.detach())

    with pytest.raises(ValueError, match="model: its output does not depend on the input"):
        xk.Model(Detached()).gradients(np.ones((2, 3), np.float32), 0)


@pytest.mark.parametrize(
    ("target", "error", "pattern"),
    [
        (4, ValueError, r"target: expected class indices in \[0, 4\).*got 4"),
        (-1, ValueError, r"target: expected .*class indices.*got -1"),
        ([0, 1], ValueError, r"target: expected one class index per item \(3\)"),
        (1.5, TypeError, r"target: expected a class index"),
        ([0.0, 1.0, 2.0], TypeError, r"target: expected integer class indices"),
        (True, TypeError, r"target: expected a class index"),
        ("cat", TypeError, r"target: expected a class index"),
    ],
)
def test_bad_targets_are_named(target, error, pattern):
    m = xk.Model(stateful_cnn())
    with pytest.raises(error, match=pattern):
        m.gradients(inputs(3), target)


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"batch_size": 0}, ValueError, "batch_size: expected a positive int"),
        ({"batch_size": "big"}, TypeError, "batch_size: expected a positive int"),
        ({"output": "probs"}, ValueError, "output: expected one of"),
    ],
)
def test_bad_options_are_named(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        xk.Model(stateful_cnn(), **kwargs)


def test_bad_model_objects_are_named(tmp_path):
    with pytest.raises(TypeError, match=r"model: expected an nn\.Module"):
        xk.Model(42)
    with pytest.raises(FileNotFoundError, match="model: no file"):
        xk.Model(tmp_path / "missing.pt")
    junk = tmp_path / "notes.pt"
    junk.write_text("this is not a model")
    with pytest.raises(ValueError, match=r"model: .*notes\.pt' is not a TorchScript file"):
        xk.Model(junk)
    state_dict = tmp_path / "weights.pt"
    torch.save(stateful_cnn().state_dict(), state_dict)
    with pytest.raises(ValueError, match="is not a TorchScript file"):
        xk.Model(str(state_dict))
    with pytest.raises(ValueError, match="device: the model's tensors are on cpu"):
        xk.Model(stateful_cnn(), device="meta")


def test_torchscript_file(tmp_path):
    net = stateful_cnn().eval()
    path = tmp_path / "net.pt"
    torch.jit.script(net).save(str(path))
    m = xk.Model(path)
    x = inputs(5)
    np.testing.assert_allclose(m.scores(x), xk.Model(net).scores(x), rtol=1e-5, atol=1e-6)
    _, grads = m.gradients(x, 1)
    np.testing.assert_allclose(grads, xk.Model(net).gradients(x, 1)[1], rtol=1e-4, atol=1e-6)
    scripted = torch.jit.load(str(path))
    scripted.train()
    xk.Model(scripted).scores(x)
    assert scripted.training and scripted.bn.training  # flags restored on script modules too


def test_as_model_passes_models_through():
    m = xk.Model(stateful_cnn())
    assert xk.as_model(m) is m
    assert isinstance(xk.as_model(stateful_cnn()), xk.Model)
    with pytest.raises(TypeError, match=r"model: already an xaikit\.Model"):
        xk.as_model(m, batch_size=3)


def test_layer_recording_ignores_the_batch_size_search():
    net = stateful_cnn().eval()  # a fresh module: its first large call runs the search
    m = xk.Model(net)
    with m.layer("conv", gradients=True) as rec:
        m.gradients(inputs(100), target=1)
    assert rec.activations.shape[0] == 100 and rec.gradients.shape[0] == 100


# ------------------------------------------------- a layer followed by an in-place op


def _bn_then_relu(inplace: bool) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=inplace),
        nn.Flatten(), nn.Linear(4 * 8 * 8, 3),
    )  # fmt: skip
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.5, 0.5)
    return net.eval()


def test_a_recorded_layer_keeps_its_output_when_an_in_place_op_follows():
    # The recording held the output itself, which ReLU(inplace=True) overwrote: a BatchNorm
    # "recorded" with no negative value (torchvision's ResNets put such a ReLU after bn1).
    x = np.random.default_rng(0).normal(size=(6, 1, 8, 8)).astype(np.float32)
    recorded = {}
    for inplace in (True, False):
        m = xk.Model(_bn_then_relu(inplace))
        with m.layer("1", gradients=True) as rec:
            m.gradients(x, np.zeros(6, dtype=int))
        recorded[inplace] = rec.activations, rec.gradients
        recorded[inplace, "acts"] = xk.activations(m, x, layers=["1"])["1"]
        recorded[inplace, "layer"] = m.layer_gradients(x, np.zeros(6, dtype=int), layer="1")
    assert recorded[False][0].min() < 0
    for key in (True, (True, "acts"), (True, "layer")):
        other = (False, *key[1:]) if isinstance(key, tuple) else False
        for got, want in zip(recorded[key], recorded[other], strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_a_float64_layer_is_recorded_in_float64():
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).double().eval()
    m = xk.Model(net)
    x = np.random.default_rng(0).random((20, 4))
    with m.layer("0", gradients=True) as rec:
        m.gradients(x, target=1)
    assert rec.activations.dtype == rec.gradients.dtype == np.float64
    with torch.no_grad():
        np.testing.assert_array_equal(rec.activations, net[0](torch.from_numpy(x)).numpy())


class _SharedReLUBlock(nn.Module):
    """One ReLU module used twice per forward, as torchvision's BasicBlock does."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.conv2 = nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1)
        self.relu = nn.ReLU()
        self.head = nn.Linear(2 * 8 * 8, 3)

    def forward(self, x):
        h = self.relu(self.conv1(x))
        return self.head(self.relu(self.conv2(h) + h).flatten(1))


def test_a_layer_that_runs_twice_per_forward_is_refused():
    # Its last call used to win silently (Grad-CAM of the second activation only), and a
    # recording held two maps per item
    net = _SharedReLUBlock().eval()
    x = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)
    with pytest.raises(ValueError, match=r"^layer: 'relu' runs more than once in one forward"):
        xk.explain(net, x[0], method="gradcam", layer="relu", target=0)
    m = xk.Model(net)
    with pytest.raises(ValueError, match=r"^name: 'relu' runs more than once"), m.layer("relu"):
        m.scores(x)
    assert not net.relu._forward_hooks and not net._forward_pre_hooks
    with m.layer("conv2") as rec:  # a layer that runs once is recorded as before
        m.scores(x)
    assert rec.activations.shape == (4, 2, 8, 8)


class _SequenceFirst(nn.Module):
    """A layer whose output puts the sequence first, as nn.MultiheadAttention by default."""

    def forward(self, x):
        return x.flatten(2).permute(2, 0, 1)  # (H * W, N, C)


def test_a_layer_without_one_row_per_item_is_refused_by_name():
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), _SequenceFirst(), nn.Flatten(0, 1))
    net = nn.Sequential(net, nn.Unflatten(0, (64, -1)), _Last()).eval()
    x = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
    with pytest.raises(ValueError, match=r"^layer: '0.1' gives an output of shape \(64, 3, 2\)"):
        xk.explain(net, x, method="gradcam", layer="0.1", target=0, batch=True)


class _Last(nn.Module):
    """(H * W, N, C) back to (N, K) scores: the mean over positions."""

    def forward(self, x):
        return x.mean(0)


@pytest.mark.parametrize("kind", ["ridge", "svc_in_a_pipeline"])
def test_a_classifier_without_predict_proba_is_scored_by_its_decision_function(kind):
    # Its predict gives class labels, which were explained as if they were scores
    from sklearn.linear_model import RidgeClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 4))
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5)
    clf = RidgeClassifier() if kind == "ridge" else make_pipeline(StandardScaler(), SVC())
    clf.fit(X, y)
    m = xk.Model(clf)
    np.testing.assert_allclose(m.scores(X[:5]), clf.decision_function(X[:5]), rtol=1e-6)
    assert m.output == "scores"
    # a binary one: its margin m as two class scores (-m, m), argmax its prediction
    binary = RidgeClassifier() if kind == "ridge" else make_pipeline(StandardScaler(), SVC())
    binary.fit(X, y > 0)
    margin = binary.decision_function(X[:5])
    np.testing.assert_allclose(xk.Model(binary).scores(X[:5]), np.c_[-margin, margin], rtol=1e-6)
    np.testing.assert_array_equal(xk.Model(binary).predict(X[:20]), binary.predict(X[:20]))


def test_probabilities_outside_zero_to_one_are_refused():
    net = nn.Sequential(nn.Linear(4, 3)).eval()
    torch.nn.init.constant_(net[0].bias, 5.0)
    x = np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError, match=r"^model: output='probabilities', but it returned"):
        xk.Model(net, output="probabilities").scores(x)
    softmaxed = nn.Sequential(net, nn.Softmax(dim=1)).eval()
    assert xk.Model(softmaxed, output="probabilities").scores(x).shape == (2, 3)


def test_a_callables_raw_scores_taken_as_probabilities_warn_once():
    m = xk.Model(lambda b: np.c_[b.sum(axis=1), -b.sum(axis=1)])
    x = np.full((2, 3), 2.0)
    with pytest.warns(UserWarning, match=r"^model: its outputs range from -6 to 6, outside"):
        m.scores(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m.scores(x)  # once per Model
    assert m.output == "probabilities"  # what the outputs are taken to be never changes


@pytest.mark.parametrize(
    ("shape", "error", "match"),
    [("a", TypeError, r"^input_shape: expected one item's shape as whole numbers"),
     ((1, 2.5), TypeError, r"^input_shape: expected one item's shape"),
     ((-3,), ValueError, r"^input_shape: expected sizes >= 1")],
)  # fmt: skip
def test_a_bad_input_shape_is_named(shape, error, match):
    with pytest.raises(error, match=match):
        xk.Model(nn.Linear(3, 2), input_shape=shape)


def test_batch_must_be_true_or_false():
    with pytest.raises(TypeError, match=r"^batch: expected True or False, got str 'yes'"):
        xk.explain(nn.Linear(3, 2), np.zeros((2, 3), np.float32), batch="yes")
