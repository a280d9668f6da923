"""KernelSHAP: exact Shapley values by enumeration, linear models, peers, sampling, bad input."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import xaikit as xk
from _models import BagOfEmbeddings, explain_counting_rows
from xaikit.attribution import coalitions as coalitions_module
from xaikit.attribution.coalitions import row_keys
from xaikit.attribution.kernel_shap import product_kernel, product_kernel_shapley, shapley_pairs


def mlp(features: int, outputs: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(features, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, outputs)
    ).eval()


def as_callable(net: nn.Module):
    """The same network as a NumPy callable (float64 in, float64 out)."""

    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net.double()(torch.as_tensor(batch, dtype=torch.float64)).numpy()

    return predict


def shapley_by_enumeration(f, x: np.ndarray, background: np.ndarray, target: int) -> np.ndarray:
    """Shapley values by the formula: sum over S of |S|!(M-|S|-1)!/M! (v(S + i) - v(S)).

    v(S) = mean over background rows r of f(x on S, r elsewhere).
    """
    m = len(x)
    codes = np.arange(2**m)
    z = ((codes[:, None] >> np.arange(m)) & 1).astype(bool)
    rows = np.where(z[:, None, :], x, background[None])  # (2^m, R, m)
    v = f(rows.reshape(-1, m))[:, target].reshape(2**m, -1).mean(axis=1)
    phi = np.zeros(m)
    for i in range(m):
        without = codes[~z[:, i]]
        size = z[without].sum(axis=1)
        weight = np.array([math.factorial(s) * math.factorial(m - s - 1) for s in size])
        phi[i] = (weight / math.factorial(m) * (v[without | (1 << i)] - v[without])).sum()
    return phi


def relative_error(got, want) -> float:
    return float(np.linalg.norm(np.asarray(got) - want) / np.linalg.norm(want))


def products(batch: np.ndarray) -> np.ndarray:
    """A nonlinear model with interactions of order 2 and 3 (a NumPy callable)."""
    a = batch[:, 0] * batch[:, 1] + np.sin(batch[:, 2]) * batch[:, 3] * batch[:, 4]
    b = batch[:, 5] ** 2 - batch[:, 6] * batch[:, 7] * batch[:, 8] + np.tanh(batch[:, 1])
    return np.stack([a + b, a - b], axis=1)


# ---------------------------------------------------------------------- exact answers


def test_enumeration_gives_exact_shapley_values_of_a_nonlinear_network():
    net, rng = mlp(8), np.random.default_rng(0)
    x, base = rng.normal(size=8).astype(np.float32), rng.normal(size=8).astype(np.float32)
    want = shapley_by_enumeration(as_callable(mlp(8)), x, base[None].astype(np.float64), 1)
    e = xk.explain(net, x, method="kernel_shap", target=1, baseline=base, samples=2**8)
    assert e.info["exact"] and e.info["samples"] == 2**8
    assert relative_error(e.component_values, want) < 1e-5
    assert np.allclose(e.values, e.component_values)  # one component per feature
    assert abs(e.info["efficiency_gap"]) < 1e-9
    assert e.component_values.sum() == pytest.approx(e.info["score"] - e.info["expected_value"])


def _products_case():
    x = np.random.default_rng(1).normal(size=9)
    want = shapley_by_enumeration(products, x, np.full((1, 9), 0.5), 0)
    return xk.Model(products, output="scores"), x, want


def test_exact_on_products_with_a_baseline_value():
    model, x, want = _products_case()
    exact = xk.explain(model, x, method="kernel_shap", target=0, baseline=0.5, samples=2**9)
    assert relative_error(exact.component_values, want) < 1e-9


def test_close_on_products_with_fewer_samples_than_coalitions():
    model, x, want = _products_case()
    fewer = xk.explain(model, x, method="kernel_shap", target=0, baseline=0.5, samples=200, seed=0)
    assert fewer.info["samples"] <= 200 and not fewer.info["exact"]
    assert relative_error(fewer.component_values, want) < 0.05
    assert abs(fewer.info["efficiency_gap"]) < 1e-9


@pytest.mark.parametrize("samples", ["auto", 40])
def test_linear_model_with_background_gives_w_times_x_minus_mean(samples):
    rng = np.random.default_rng(2)
    background = rng.normal(size=(20, 6)).astype(np.float32)
    x = rng.normal(size=6).astype(np.float32)
    torch.manual_seed(0)
    linear = nn.Linear(6, 2).eval()
    w = linear.weight.detach().numpy()[1].astype(np.float64)
    want = w * (x - background.mean(axis=0))
    e = xk.explain(linear, x, method="kernel_shap", target=1, baseline=background, samples=samples)
    np.testing.assert_allclose(e.component_values, want, rtol=1e-4, atol=1e-6)
    expected = linear(torch.from_numpy(background)).detach().numpy()[:, 1].mean()
    assert e.info["expected_value"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("samples", [40, 100, 200])
def test_games_of_one_or_two_components_are_exact_when_sampled(samples):
    # the surrogate's interactions weigh by main effects: all but two near zero must still fit
    x = np.random.default_rng(0).normal(size=8)
    games = {
        (lambda b: np.tanh(b[:, 2:3])): np.eye(8)[2] * np.tanh(x[2]),
        (lambda b: (b[:, 1] * b[:, 2])[:, None]): (np.eye(8)[1] + np.eye(8)[2]) * x[1] * x[2] / 2,
    }
    for game, want in games.items():
        model = xk.Model(game, output="scores")
        e = xk.explain(model, x, method="kernel_shap", samples=samples, baseline=0.0)
        assert np.allclose(e.component_values, want, atol=1e-12)


def test_linear_regression_callable_with_background():
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(3)
    X = rng.normal(size=(100, 5))
    reg = LinearRegression().fit(X, X @ np.array([1.0, -2.0, 0.5, 0.0, 3.0]) + 0.1)
    model = xk.Model(lambda batch: reg.predict(batch)[:, None], output="scores")
    background, x = X[:10], X[50]
    e = xk.explain(model, x, method="kernel_shap", target=0, baseline=background, samples=20)
    want = reg.coef_ * (x - background.mean(axis=0))
    np.testing.assert_allclose(e.component_values, want, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------- peers


def test_equals_shap_kernel_explainer_with_full_enumeration_on_the_same_background():
    shap = pytest.importorskip("shap")
    net, rng = mlp(7, seed=4), np.random.default_rng(4)
    f = as_callable(net)
    background, x = rng.normal(size=(5, 7)), rng.normal(size=7)
    explainer = shap.KernelExplainer(lambda batch: f(batch)[:, 2], background)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = explainer.shap_values(x[None], nsamples=2**7, l1_reg=False, silent=True)[0]
    e = xk.explain(f, x, method="kernel_shap", target=2, baseline=background, samples=2**7)
    np.testing.assert_allclose(e.component_values, want, rtol=1e-6, atol=1e-9)
    assert e.info["expected_value"] == pytest.approx(explainer.expected_value)


def test_close_to_captum_kernel_shap_with_many_samples():
    from captum.attr import KernelShap

    net, rng = mlp(4, seed=5), np.random.default_rng(5)
    x, base = rng.normal(size=4).astype(np.float32), rng.normal(size=4).astype(np.float32)
    torch.manual_seed(0)
    want = (
        KernelShap(net)
        .attribute(
            torch.from_numpy(x[None]),
            baselines=torch.from_numpy(base[None]),
            target=0,
            n_samples=3000,
            perturbations_per_eval=500,
        )[0]
        .numpy()
    )
    e = xk.explain(net, x, method="kernel_shap", target=0, baseline=base)
    assert e.info["exact"]  # 2^4 <= the default budget
    assert relative_error(want, e.component_values) < 0.05  # Captum samples with replacement


# ---------------------------------------------------------------------- inputs and models


def _mlp_batch():
    net, rng = mlp(10, seed=6), np.random.default_rng(6)
    return net, rng.normal(size=(3, 10)).astype(np.float32), [0, 2, 1]


def test_numpy_callable_gives_what_the_module_gives():
    net, x, targets = _mlp_batch()

    def callable_net(batch):
        with torch.no_grad():
            return net(torch.as_tensor(batch)).numpy()

    a = xk.explain(net, x, method="kernel_shap", target=targets, batch=True, samples=300, seed=1)
    b = xk.explain(
        xk.Model(callable_net, output="logits"),
        x,
        method="kernel_shap",
        target=targets,
        batch=True,
        samples=300,
        seed=1,
    )
    np.testing.assert_allclose(a.component_values, b.component_values, rtol=1e-5, atol=1e-7)


def test_batch_targets_match_single_calls():
    net, x, targets = _mlp_batch()
    a = xk.explain(net, x, method="kernel_shap", target=targets, batch=True, samples=300, seed=1)
    for i, t in enumerate(targets):
        one = xk.explain(net, x[i], method="kernel_shap", target=t, samples=300, seed=1)
        np.testing.assert_allclose(a.component_values[i], one.component_values, atol=1e-9)


def test_the_seed_determines_the_result():
    net, x = mlp(12, seed=7), np.random.default_rng(7).normal(size=12).astype(np.float32)
    run = lambda seed: xk.explain(net, x, method="kernel_shap", samples=100, seed=seed)  # noqa: E731
    np.testing.assert_array_equal(run(3).values, run(3).values)
    assert not np.allclose(run(3).values, run(4).values)


def test_image_grid_components_share_one_value_over_channels():
    torch.manual_seed(8)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 14 * 14, 5))
    x = np.random.default_rng(8).random((3, 16, 16), dtype=np.float32)
    e = xk.explain(net.eval(), x, method="kernel_shap", components="grid", samples=300, seed=0)
    m = int(e.components.max()) + 1
    assert e.components.shape == (16, 16) and e.component_values.shape == (m,)
    np.testing.assert_allclose(e.values[1], e.component_values[e.components])  # channels share
    assert abs(e.info["efficiency_gap"]) < 1e-6


def test_tokens_are_replaced_by_a_pad_id():
    torch.manual_seed(9)
    net, ids = BagOfEmbeddings(30).eval(), np.array([3, 8, 1, 20, 7], dtype=np.int64)
    e = xk.explain(net, ids, method="kernel_shap", target=1, baseline=0)
    # a bag of embeddings is additive in the tokens: phi_i = head(e[id_i] - e[pad])
    with torch.no_grad():
        per_token = net.head.weight[1] @ (net.embed.weight[ids] - net.embed.weight[0]).T
    np.testing.assert_allclose(e.component_values, per_token.numpy(), rtol=1e-4, atol=1e-6)
    assert e.kind == "text"


def test_map_with_empty_ids_is_an_error():
    x = np.random.default_rng(10).normal(size=6)
    with pytest.raises(ValueError, match="components: ids must run from 0 to M-1"):
        xk.explain(products_6, x, method="kernel_shap", components=[1, 1, 3, 3, 5, 9])
    e = xk.explain(products_6, x, method="kernel_shap", components=[0, 0, 1, 1, 2, 3])
    assert e.component_values.shape == (4,)


def products_6(batch):
    return np.stack([batch[:, 0] * batch[:, 2] + batch[:, 4] - batch[:, 5]], axis=1)


def test_per_item_maps_with_different_numbers_of_components_are_padded():
    x = np.random.default_rng(11).normal(size=(2, 6))
    maps = np.array([[0, 0, 1, 1, 2, 2], [0, 1, 2, 3, 4, 5]])
    e = xk.explain(products_6, x, method="kernel_shap", components=maps, batch=True)
    assert e.component_values.shape == (2, 6)
    np.testing.assert_array_equal(e.component_values[0, 3:], 0.0)
    for i in range(2):
        one = xk.explain(products_6, x[i], method="kernel_shap", components=maps[i])
        np.testing.assert_allclose(e.values[i], one.values)
        total = one.info["score"] - one.info["expected_value"]
        assert e.component_values[i].sum() == pytest.approx(total)


def _seven_player_game(seed):
    coef = np.random.default_rng(seed).normal(size=4)

    def game(batch):  # feature 6 is never used: a null player
        a = coef[0] * batch[:, 0] * batch[:, 1] + coef[1] * np.sin(batch[:, 2] * batch[:, 3])
        return (a + coef[2] * batch[:, 4] ** 3 + coef[3] * batch[:, 5])[:, None]

    return xk.Model(game, output="scores"), np.random.default_rng(seed + 1).normal(size=7)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), samples=st.integers(2, 140))
def test_efficiency_holds_for_any_budget(seed, samples):
    model, x = _seven_player_game(seed)
    e = xk.explain(model, x, method="kernel_shap", samples=samples, seed=seed)
    assert abs(e.info["efficiency_gap"]) < 1e-9
    assert e.info["samples"] <= max(samples, 2)


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_a_null_player_gets_zero_when_exact(seed):
    model, x = _seven_player_game(seed)
    e = xk.explain(model, x, method="kernel_shap", samples=2**7, seed=seed)
    assert abs(e.component_values[6]) < 1e-12


# ---------------------------------------------------------------------- sampling


def test_pairs_are_distinct_complements_within_the_budget():
    reps, weights = shapley_pairs(12, 300, np.random.default_rng(0))
    coalitions = np.concatenate([reps, ~reps])
    assert 2 * len(reps) + 2 <= 300
    assert len(np.unique(coalitions, axis=0)) == len(coalitions)
    assert not coalitions.all(axis=1).any() and coalitions.any(axis=1).all()
    assert weights.sum() == pytest.approx(1.0) and (weights > 0).all()
    sizes = np.minimum(reps.sum(axis=1), 12 - reps.sum(axis=1))
    assert (np.bincount(sizes)[1] == 12) and set(sizes) == set(range(1, 7))  # size 1 enumerated


def _product_kernel_case():
    m, rng = 7, np.random.default_rng(0)
    c = rng.uniform(0, 0.9, m)
    s, t = rng.choice([-1.0, 1.0], size=(2, m))
    return m, c, s, t


def test_product_kernel_is_its_weighted_odd_parities():
    m, c, s, t = _product_kernel_case()
    odd = [d for d in range(3, m + 1, 2)]  # degree >= 3, odd: the linear part is left out
    want = sum(np.prod(c[list(T)] * s[list(T)] * t[list(T)]) for d in odd for T in _subsets(m, d))
    assert product_kernel(s[None], t[None], c)[0, 0] * np.prod(1 + c) == pytest.approx(want)


def test_product_kernel_shapley_values_are_exact():
    m, c, s, _ = _product_kernel_case()
    # Shapley values of the game z -> kernel(s, 2z - 1), by the formula over all coalitions
    codes = np.arange(2**m)
    z = ((codes[:, None] >> np.arange(m)) & 1).astype(bool)
    v = product_kernel(s[None], np.where(z, 1.0, -1.0), c)[0]
    size = z.sum(axis=1)
    phi = np.zeros(m)
    for i in range(m):
        without = codes[~z[:, i]]
        weight = [math.factorial(k) * math.factorial(m - k - 1) for k in size[without]]
        phi[i] = (np.array(weight) / math.factorial(m) * (v[without | 1 << i] - v[without])).sum()
    assert np.allclose(product_kernel_shapley(s[None], c)[0], phi, atol=1e-14)


def _subsets(m, d):
    import itertools

    return list(itertools.combinations(range(m), d))


# ---------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("samples", "error"), [(0, ValueError), (1, ValueError), (2.5, TypeError), ("many", ValueError)]
)
def test_bad_samples(samples, error):
    with pytest.raises(error, match="samples"):
        xk.explain(products, np.zeros(9), method="kernel_shap", samples=samples)


@pytest.mark.parametrize(
    ("params", "error", "name"),
    [
        ({"components": np.zeros(8, int)}, ValueError, "components"),
        ({"baseline": np.zeros((5, 8))}, ValueError, "baseline"),
        ({"seed": "a"}, TypeError, "seed"),
    ],
)
def test_bad_parameter_is_named(params, error, name):
    with pytest.raises(error, match=name):
        xk.explain(products, np.zeros(9), method="kernel_shap", **params)


@pytest.mark.parametrize("m", [5, 49, 64, 65, 200])  # one integer key up to 64 bits, bytes beyond
def test_row_keys_find_the_distinct_rows_that_unique_by_rows_finds(m):
    rng = np.random.default_rng(m)
    z = rng.random((500, m)) < 0.5
    z[250:] = z[rng.integers(0, 250, 250)]  # repeats
    packed = np.packbits(z, axis=1)
    _, first_rows, inverse_rows = np.unique(packed, axis=0, return_index=True, return_inverse=True)
    _, first_keys, inverse_keys = np.unique(
        row_keys(packed), return_index=True, return_inverse=True
    )
    np.testing.assert_array_equal(np.sort(first_keys), np.sort(first_rows))
    # each row maps to its distinct row's first occurrence, whatever order unique lists them in
    np.testing.assert_array_equal(
        first_keys[inverse_keys.reshape(-1)], first_rows[inverse_rows.reshape(-1)]
    )


@pytest.mark.parametrize("method", ["kernel_shap", "lime"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_maps_come_in_the_inputs_precision_as_every_method_s(method, dtype):
    # float64 maps came back for float32 inputs (docs/models.md: float32 unless float64)
    weights = np.array([1.0, -2.0, 0.5])
    x = np.array([1.0, 2.0, 3.0], dtype=dtype)
    e = xk.explain(lambda b: np.c_[b @ weights, -(b @ weights)], x, method=method,
                   baseline=0.0, samples=64)  # fmt: skip
    assert e.values.dtype == dtype


@pytest.mark.parametrize("method", ["lime", "kernel_shap"])
@pytest.mark.parametrize("target", [None, 2])
def test_the_input_scores_come_from_the_methods_own_coalitions(method, target):
    # explain runs no forward pass of its own: the all-ones coalition is the input
    e, rows, want, _ = explain_counting_rows(method, features=6, target=target, samples=40)
    assert sum(rows) == e.info["evaluations" if method == "lime" else "samples"].sum()
    np.testing.assert_allclose(e.prediction, want, rtol=1e-12)
    np.testing.assert_array_equal(e.target, want.argmax(axis=1) if target is None else [2, 2])


def test_tabular_lime_explains_the_predicted_class_by_default():
    weights = np.random.default_rng(0).normal(size=(6, 3))
    x = np.random.default_rng(1).normal(size=(3, 6))
    training = np.random.default_rng(2).normal(size=(50, 6))
    e = xk.explain(
        xk.Model(lambda b: b @ weights, output="scores"), x, method="lime", batch=True,
        sampling="training", baseline=training, samples=50,
    )  # fmt: skip
    np.testing.assert_array_equal(e.target, (x @ weights).argmax(axis=1))
    np.testing.assert_allclose(e.prediction, x @ weights, rtol=1e-12)


@pytest.mark.parametrize("samples", [40, 2**6])  # sampled, and every coalition (exact)
def test_one_coalition_per_chunk_still_reads_the_input_first(samples, monkeypatch):
    # Many background rows made a chunk hold one coalition: the empty one ran alone, so the
    # target could not be read (RuntimeError) and exact KernelSHAP lost v(1) (IndexError).
    weights = np.random.default_rng(0).normal(size=(6, 3))
    model = xk.Model(lambda b: np.tanh(b) @ weights, output="scores")
    x = np.random.default_rng(1).normal(size=6)
    want = xk.explain(model, x, method="kernel_shap", samples=samples)
    monkeypatch.setattr(coalitions_module, "chunk_size", lambda *a, **k: 1)
    got = xk.explain(model, x, method="kernel_shap", samples=samples)
    assert got.target == want.target == int((np.tanh(x) @ weights).argmax())
    np.testing.assert_allclose(got.values, want.values, rtol=1e-9, atol=1e-12)
