"""RISE: eq. 6 on the masks the model saw, the planted region, determinism, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import xaikit as xk
from _models import explain_counting_rows
from xaikit.attribution import rise as rise_module

REGION = (slice(10, 16), slice(4, 10))


class Planted(nn.Module):
    """Score = mean of a planted square of channel 0; class 1 is its negative."""

    def forward(self, x):
        s = x[:, 0, REGION[0], REGION[1]].mean(dim=(1, 2))
        return torch.stack([s, -s], dim=1)


def planted_numpy(batch: np.ndarray) -> np.ndarray:
    s = batch[:, 0, REGION[0], REGION[1]].mean(axis=(1, 2))
    return np.stack([s, -s], axis=1)


def test_saliency_peaks_on_the_planted_region():
    x = np.ones((3, 28, 28), np.float32)
    e = xk.explain(Planted(), x, method="rise", target=0, samples=2000, seed=1)
    assert e.params["cell"] == (4, 4) and e.values.shape == x.shape
    sal = e.values[0]
    assert np.array_equal(e.values[0], e.values[2])  # channels share the mask
    inside = np.zeros(sal.shape, bool)
    inside[REGION] = True
    row, col = np.unravel_index(sal.argmax(), sal.shape)
    assert inside[row, col]
    # far from the region the mask and the score are independent: E[f | M(u) = 1] = E[f] = p
    far = sal[:, 18:]
    assert abs(far.mean() - 0.5) < 0.02
    assert sal[inside].mean() - sal[~inside].mean() > 5 * far.std()
    assert sal[inside].min() > sal[~inside].mean()


def test_equation_6_on_the_masks_the_model_received():
    """With x = 1 and baseline 0 the masked inputs are the masks themselves."""
    seen = []

    def model(batch):
        seen.append(batch[:, 0].copy())
        return np.stack([np.sin(batch.sum(axis=(1, 2, 3))), batch[:, 0, 0, :3].sum(1)], axis=1)

    x = np.ones((1, 9, 11))
    e = xk.explain(model, x, method="rise", target=0, samples=300, cell=3, p=0.3, seed=0)
    masks = np.concatenate(seen)[-300:]  # after xk.explain's call on x itself
    assert masks.shape == (300, 9, 11) and masks.min() >= 0 and masks.max() <= 1
    scores = model(masks[:, None])[:, 0]
    want = np.tensordot(scores, masks, axes=(0, 0)) / (300 * 0.3)
    assert np.allclose(e.values[0], want, rtol=1e-5, atol=1e-6)
    assert abs(masks.mean() - 0.3) < 0.05  # cells kept with probability p
    assert len(np.unique(masks.round(6))) > 2  # bilinear upsampling: soft masks


def test_same_seed_same_result_different_seed_different():
    x = np.random.default_rng(0).random((1, 28, 28), dtype=np.float32)
    a = xk.explain(Planted(), x, method="rise", target=0, samples=200, seed=3)
    b = xk.explain(Planted(), x, method="rise", target=0, samples=200, seed=3)
    c = xk.explain(Planted(), x, method="rise", target=0, samples=200, seed=4)
    assert np.array_equal(a.values, b.values)
    assert not np.allclose(a.values, c.values)


def test_result_does_not_depend_on_the_chunk_size(monkeypatch):
    x = np.random.default_rng(1).random((1, 20, 20), dtype=np.float32)
    whole = xk.explain(Planted(), x, method="rise", target=0, samples=300, seed=0)
    monkeypatch.setattr(rise_module, "chunk_size", lambda *a, **k: 7)
    chunked = xk.explain(Planted(), x, method="rise", target=0, samples=300, seed=0)
    assert np.allclose(whole.values, chunked.values, rtol=1e-5, atol=1e-7)


RISE_PARAMS = {"samples": 150, "seed": 5, "cell": (3, 5), "baseline": 0.2}


def test_numpy_callable_gives_what_the_module_gives():
    x = np.random.default_rng(2).random((3, 2, 28, 28), dtype=np.float32)
    e = xk.explain(Planted(), x, method="rise", target=[0, 1, 0], batch=True, **RISE_PARAMS)
    e2 = xk.explain(planted_numpy, x, method="rise", target=[0, 1, 0], batch=True, **RISE_PARAMS)
    assert e.values.shape == x.shape
    assert np.allclose(e.values, e2.values, rtol=1e-5, atol=1e-6)


def test_batch_item_equals_a_single_call():
    x = np.random.default_rng(2).random((3, 2, 28, 28), dtype=np.float32)
    e = xk.explain(Planted(), x, method="rise", target=[0, 1, 0], batch=True, **RISE_PARAMS)
    single = xk.explain(Planted(), x[1], method="rise", target=1, **RISE_PARAMS)
    assert np.allclose(single.values, e.values[1], rtol=1e-6, atol=1e-7)


def _two_feature_model(batch):
    s = batch[:, 3:5].sum(axis=1)
    return np.stack([s, -s], axis=1)


def test_rise_on_a_table_row_finds_the_features_the_model_reads():
    e = xk.explain(_two_feature_model, np.ones(12, np.float32), method="rise", target=0,
                   samples=500)  # fmt: skip
    assert e.values.shape == (12,) and e.params["cell"] == (4,)
    assert 3 <= int(np.argmax(e.values)) <= 4


def test_rise_refuses_token_ids():
    with pytest.raises(TypeError, match=r"^x: RISE blends"):  # ids cannot be blended
        xk.explain(_two_feature_model, np.arange(12), method="rise", target=0, samples=10)


@pytest.mark.parametrize(
    ("params", "error", "pattern"),
    [
        ({"samples": 0}, ValueError, "^samples: "),
        ({"samples": -5}, ValueError, "^samples: "),
        ({"samples": 2.5}, TypeError, "^samples: "),
        ({"p": 0.0}, ValueError, "^p: "),
        ({"p": 1.5}, ValueError, "^p: "),
        ({"cell": 0}, ValueError, "^cell: "),
        ({"cell": 30}, ValueError, "^cell: "),
        ({"cell": (2, 2, 2)}, TypeError, "^cell: "),
        ({"baseline": np.zeros((5, 28))}, ValueError, "^baseline: "),
        ({"seed": "abc"}, TypeError, "^seed: "),
    ],
)
def test_bad_parameters_name_the_argument(params, error, pattern):
    with pytest.raises(error, match=pattern):
        xk.explain(planted_numpy, np.ones((1, 28, 28)), method="rise", target=0, **params)


@pytest.mark.parametrize("target", [None, 1])
def test_the_input_rides_in_the_first_batch_of_masks(target):
    # explain runs no forward pass of its own: one item more in RISE's first batch
    e, rows, want, model = explain_counting_rows("rise", features=12, target=target, samples=50)
    assert rows == [50 + 1, 50 + 1]  # each item: its masks and itself, in one batch
    np.testing.assert_allclose(e.prediction, want, rtol=1e-12)
    np.testing.assert_array_equal(e.target, want.argmax(axis=1) if target is None else [1, 1])
    alone = xk.explain(model, e.x[1], method="rise", target=int(e.target[1]), samples=50)
    np.testing.assert_allclose(e.values[1], alone.values, rtol=1e-6)
