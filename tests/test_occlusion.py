"""Occlusion: equal to Captum's ``Occlusion``, exact on linear models, clear errors, no trace."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import Occlusion
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import xaikit as xk
from xaikit.baselines import make_baseline


def rel_close(got, want, rtol=1e-5):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= rtol * scale, np.abs(got - want).max() / scale


def conv_net(channels: int, side: tuple[int, int], seed: int = 0) -> nn.Module:
    """A SmallCNN-like random network (untrained: only the numbers matter)."""
    torch.manual_seed(seed)
    h, w = side[0] // 2, side[1] // 2
    return nn.Sequential(
        nn.Conv2d(channels, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(8 * h * w, 10),
    ).eval()


def tabular_net(features: int = 7, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(features, 6), nn.Tanh(), nn.Linear(6, 3)).eval()


def captum(net, x, window, stride, target, baseline=0.0):
    """Captum's Occlusion on a batch ``x``; ``window`` and ``stride`` full rank."""
    out = Occlusion(net).attribute(
        torch.as_tensor(x, dtype=torch.float32),
        sliding_window_shapes=window,
        strides=stride,
        baselines=baseline,
        target=target,
        perturbations_per_eval=16,
    )
    return out.detach().numpy()


def test_digit_with_default_window_equals_captum():
    net = conv_net(1, (28, 28))
    x = np.random.default_rng(0).random((1, 28, 28), dtype=np.float32)
    e = xk.explain(net, x, method="occlusion", target=3)
    assert e.params["window"] == (4, 4) and e.params["stride"] == (2, 2)
    assert e.info["n_windows"] == 13 * 13
    rel_close(e.values, captum(net, x[None], (1, 4, 4), (1, 2, 2), 3)[0])


@pytest.mark.parametrize(
    ("window", "stride", "captum_window", "captum_stride"),
    [
        ((4, 5), (3, 2), (3, 4, 5), (1, 3, 2)),  # 17 and 23 are not tiled: last windows cut
        ((3, 7), (3, 7), (3, 3, 7), (1, 3, 7)),
        (6, 4, (3, 6, 6), (1, 4, 4)),
        ((2, 4, 5), (1, 3, 2), (2, 4, 5), (1, 3, 2)),  # full rank: slides over channels too
        ((3, 17, 1), 1, (3, 17, 1), 1),
    ],
)
def test_windows_that_do_not_tile_equal_captum(window, stride, captum_window, captum_stride):
    net = conv_net(3, (17, 23))
    x = np.random.default_rng(1).random((3, 17, 23), dtype=np.float32)
    e = xk.explain(net, x, method="occlusion", target=1, window=window, stride=stride, baseline=0.3)
    want = captum(net, x[None], captum_window, captum_stride, 1, baseline=0.3)[0]
    rel_close(e.values, want)


@pytest.mark.parametrize("window", [1, 2, 3])
def test_tabular_equals_captum(window):
    net = tabular_net()
    x = np.random.default_rng(2).normal(size=7).astype(np.float32)
    e = xk.explain(net, x, method="occlusion", target=2, window=window)
    want = captum(net, x[None], (window,), max(1, window // 2), 2)[0]
    rel_close(e.values, want)


def _batch_case():
    net = conv_net(3, (12, 14))
    x = np.random.default_rng(3).random((4, 3, 12, 14), dtype=np.float32)
    targets = [0, 7, 2, 2]
    e = xk.explain(net, x, method="occlusion", target=targets, window=(3, 4), stride=2, batch=True)
    return net, x, targets, e


def test_batch_with_different_targets_equals_captum():
    net, x, targets, e = _batch_case()
    want = captum(net, x, (3, 3, 4), (1, 2, 2), targets)
    rel_close(e.values, want)


def test_numpy_callable_gives_what_the_module_gives():
    net, x, targets, e = _batch_case()

    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(torch.from_numpy(batch)).numpy()

    e2 = xk.explain(
        predict, x, method="occlusion", target=targets, window=(3, 4), stride=2, batch=True
    )
    rel_close(e2.values, e.values, rtol=1e-5)


def test_batch_item_equals_a_single_call():
    net, x, _, e = _batch_case()
    single = xk.explain(net, x[1], method="occlusion", target=7, window=(3, 4), stride=2)
    rel_close(single.values, e.values[1], rtol=1e-5)


@settings(max_examples=20, deadline=None)
@given(
    h=st.integers(2, 9),
    w=st.integers(2, 9),
    data=st.data(),
)
def test_random_shapes_equal_captum(h, w, data):
    wh, ww = data.draw(st.integers(1, h)), data.draw(st.integers(1, w))
    sh, sw = data.draw(st.integers(1, wh)), data.draw(st.integers(1, ww))
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(2 * h * w, 8), nn.Tanh(), nn.Linear(8, 3)).eval()
    x = np.random.default_rng(h * 10 + w).random((2, h, w), dtype=np.float32)
    e = xk.explain(net, x, method="occlusion", target=1, window=(wh, ww), stride=(sh, sw))
    rel_close(e.values, captum(net, x[None], (2, wh, ww), (1, sh, sw), 1)[0])


def test_linear_model_gets_weight_times_difference_to_the_baseline():
    weights = np.array([[1.0, -2.0, 0.5, 3.0], [0.0, 1.0, 0.0, 0.0]])

    def linear(batch):
        return batch @ weights.T

    x = np.array([0.5, 1.5, -1.0, 2.0])
    e = xk.explain(linear, x, method="occlusion", target=0, baseline=0.25)
    assert np.allclose(e.values, weights[0] * (x - 0.25))


def test_stride_larger_than_the_window_is_refused():
    # Captum would leave the elements between windows at 0 (issue 16, item 6): no silent gaps.
    x = np.random.default_rng(0).random((1, 28, 28), dtype=np.float32)
    net = conv_net(1, (28, 28))
    with pytest.raises(ValueError, match=r"^stride: \(30, 30\) is larger than window \(4, 4\)"):
        xk.explain(net, x, method="occlusion", window=4, stride=30)
    with pytest.raises(ValueError, match=r"^stride: "):
        xk.explain(net, x, method="occlusion", window=(4, 4), stride=(2, 5))


@pytest.mark.parametrize(
    ("length", "window", "stride"), [(7, 2, 2), (10, 8, 5), (28, 4, 4), (9, 9, 9)]
)
def test_every_element_is_covered(length, window, stride):
    def total(batch):
        return batch.reshape(len(batch), -1).sum(axis=1, keepdims=True) * [[1.0, -1.0]]

    x = np.arange(1, length + 1, dtype=np.float64)
    e = xk.explain(total, x, method="occlusion", target=0, window=window, stride=stride)
    assert np.all(e.values > 0)


@pytest.mark.parametrize("name", ["mean", "blur"])
def test_named_baselines_equal_captum_with_the_same_array(name):
    net = conv_net(3, (12, 12))
    x = np.random.default_rng(4).random((3, 12, 12), dtype=np.float32)
    e = xk.explain(net, x, method="occlusion", target=4, window=(3, 3), stride=2, baseline=name)
    base = torch.from_numpy(make_baseline(x, name).values)[None]
    rel_close(e.values, captum(net, x[None], (3, 3, 3), (1, 2, 2), 4, baseline=base)[0])


def test_background_rows_average_the_per_row_occlusions():
    net = tabular_net()
    rng = np.random.default_rng(5)
    x, rows = rng.normal(size=7).astype(np.float32), rng.normal(size=(5, 7)).astype(np.float32)
    e = xk.explain(net, x, method="occlusion", target=0, window=2, baseline=rows)
    per_row = [xk.explain(net, x, method="occlusion", target=0, window=2, baseline=r) for r in rows]
    rel_close(e.values, np.mean([p.values for p in per_row], axis=0), rtol=1e-5)


@pytest.mark.parametrize(
    ("x", "params", "error", "pattern"),
    [
        (np.zeros((1, 8, 8)), {"window": (9, 2)}, ValueError, "^window: .*larger"),
        (np.zeros(5), {"window": 6}, ValueError, "^window: .*larger"),
        (np.zeros((1, 8, 8)), {"window": (2, 2), "stride": 0}, ValueError, "^stride: "),
        (np.zeros((1, 8, 8)), {"window": (2, 2), "stride": (1, -1)}, ValueError, "^stride: "),
        (np.zeros((1, 8, 8)), {"window": (2, 2), "stride": (1, 1, 1)}, ValueError, "^stride: "),
        (np.zeros((1, 8, 8)), {"window": (2, 2, 2, 2)}, ValueError, "^window: expected 2"),
        (np.zeros((1, 8, 8)), {"window": (2, 0)}, ValueError, "^window: "),
        (np.zeros((1, 8, 8)), {"window": (2.5, 2)}, TypeError, "^window: "),
        (np.zeros((1, 8, 8)), {"window": "big"}, TypeError, "^window: "),
        (np.zeros(5), {"baseline": np.zeros((3, 6))}, ValueError, "^baseline: "),
        (np.zeros(5), {"samples": 10}, TypeError, "^samples: not a parameter"),
    ],
)
def test_bad_parameters_name_the_argument(x, params, error, pattern):
    def model(batch):
        return np.ones((len(batch), 2))

    with pytest.raises(error, match=pattern):
        xk.explain(model, x.astype(np.float32), method="occlusion", target=0, **params)


def test_the_users_model_is_left_as_it_was():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Flatten(), nn.Linear(144, 3)
    )
    net.train()
    net[2].eval()  # a mixed state must come back exactly
    flags = [m.training for m in net.modules()]
    state = {k: v.clone() for k, v in net.state_dict().items()}
    x = np.random.default_rng(6).random((1, 8, 8), dtype=np.float32)
    e1 = xk.explain(net, x, method="occlusion", target=1, window=(2, 2))
    e2 = xk.explain(net, x, method="occlusion", target=1, window=(2, 2))
    assert np.array_equal(e1.values, e2.values)  # eval mode inside: dropout off, BN frozen
    assert [m.training for m in net.modules()] == flags
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert all(not m._forward_hooks for m in net.modules())


def test_token_ids_with_a_numpy_callable():
    def count_sevens(batch):
        n = (np.asarray(batch) == 7).sum(axis=1).astype(np.float64)
        return np.stack([n, -n], axis=1)

    e = xk.explain(count_sevens, np.array([3, 7, 1, 7, 2]), method="occlusion", target=0)
    assert e.kind == "text" and e.params["window"] == (1,)
    assert e.values.tolist() == [0, 1, 0, 1, 0]


def test_a_baseline_of_the_batchs_shape_warns_that_it_is_background_rows():
    # Captum takes (N, ...) baselines one per item; here they are rows every item shares
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    x = np.random.default_rng(0).random((2, 1, 6, 6), dtype=np.float32)
    with pytest.warns(UserWarning, match=r"^baseline: an array of the batch's shape"):
        xk.explain(net.eval(), x, method="occlusion", baseline=np.zeros_like(x), batch=True)
