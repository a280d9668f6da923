"""LIME: linear models recovered, the ridge against scikit-learn, lime itself, inputs, bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import xaikit as xk
from _models import BagOfEmbeddings
from xaikit.attribution.coalitions import component_mean, weighted_ridge
from xaikit.attribution.lime import lime_coalitions
from xaikit.components import make_components


def mean_of_components_model(grid: np.ndarray, weights: np.ndarray, channels: int = 3):
    """score_t = sum_k weights[t, k] * mean(x over component k, all channels): an nn.Linear."""
    flat = np.broadcast_to(grid, (channels, *grid.shape)).reshape(-1)
    counts = np.bincount(flat)
    layer = nn.Linear(flat.size, weights.shape[0], bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(weights[:, flat] / counts[flat]).float())
    return nn.Sequential(nn.Flatten(), layer).eval()


def component_means(x: np.ndarray, grid: np.ndarray) -> np.ndarray:
    return np.array([x[:, grid == k].mean() for k in range(grid.max() + 1)])


@pytest.fixture(scope="module")
def linear_image():
    rng = np.random.default_rng(0)
    x = rng.random((3, 16, 16), dtype=np.float32)
    grid = make_components(x, "grid", cell=4)  # 16 components
    weights = rng.normal(size=(3, 16))
    return mean_of_components_model(grid, weights), x, grid, weights


# ---------------------------------------------------------------------- known answers


def test_recovers_a_linear_models_per_component_contributions(linear_image):
    net, x, grid, weights = linear_image
    e = xk.explain(
        net, x, method="lime", target=2, components=grid, baseline=0.0, samples=2000, seed=0
    )
    contributions = weights[2] * component_means(x, grid)
    assert np.corrcoef(e.component_values, contributions)[0, 1] > 0.999
    np.testing.assert_allclose(e.component_values, contributions, rtol=0.05, atol=0.01)
    assert e.info["r2"] > 0.999 and np.isfinite(e.info["intercept"])
    assert e.info["intercept"] == pytest.approx(0.0, abs=0.02)  # everything removed: score 0
    assert e.info["explained_output"] == "logits"
    np.testing.assert_allclose(e.values[0], e.component_values[grid])  # painted, channels share


def test_component_mean_baseline_hides_nothing_from_a_model_of_component_means(linear_image):
    net, x, grid, _ = linear_image
    filled = component_mean(x, grid)
    np.testing.assert_allclose(component_means(filled, grid), component_means(x, grid), rtol=1e-6)
    assert np.allclose(filled[:, grid == 5], x[:, grid == 5].mean(axis=1, keepdims=True))
    e = xk.explain(net, x, method="lime", target=0, components=grid, samples=300, seed=0)
    assert np.abs(e.component_values).max() < 1e-4  # lime's hide_color=None by default


def test_tabular_rows_with_background_give_w_times_x_minus_mean():
    rng = np.random.default_rng(1)
    background = rng.normal(size=(30, 6)).astype(np.float32)
    x = rng.normal(size=6).astype(np.float32)
    torch.manual_seed(0)
    linear = nn.Linear(6, 2).eval()
    e = xk.explain(linear, x, method="lime", target=0, baseline=background, samples=1000, seed=0)
    w = linear.weight.detach().numpy()[0]
    want = w * (x - background.mean(axis=0))
    assert np.corrcoef(e.component_values, want)[0, 1] > 0.999
    assert e.info["r2"] > 0.999
    assert e.kind == "tabular" and e.info["evaluations"] <= 64  # 2^6 distinct coalitions


def test_tokens_removed_by_a_pad_id():
    torch.manual_seed(2)
    net = BagOfEmbeddings(40).eval()
    ids = np.array([4, 9, 2, 33, 17, 8, 5, 1], dtype=np.int64)
    e = xk.explain(net, ids, method="lime", target=1, baseline=0, samples=800, seed=0)
    with torch.no_grad():
        per_token = (net.head.weight[1] @ (net.embed.weight[ids] - net.embed.weight[0]).T).numpy()
    assert np.corrcoef(e.component_values, per_token)[0, 1] > 0.999
    assert e.kind == "text"


# ---------------------------------------------------------------------- the pieces


def test_weighted_ridge_equals_scikit_learn():
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(3)
    z = rng.random((200, 7)) < 0.5
    y, weights = rng.normal(size=200), rng.random(200)
    coef, intercept, r2 = weighted_ridge(z, y, weights, alpha=1.0)
    ridge = Ridge(alpha=1.0).fit(z.astype(float), y, sample_weight=weights)
    np.testing.assert_allclose(coef, ridge.coef_, rtol=1e-10, atol=1e-12)
    assert intercept == pytest.approx(ridge.intercept_)
    assert r2 == pytest.approx(ridge.score(z.astype(float), y, sample_weight=weights))


def test_the_first_coalition_keeps_every_component():
    z = lime_coalitions(5, 2000, np.random.default_rng(0))
    assert z.shape == (2000, 5) and z[0].all()


def test_coalitions_draw_the_kept_count_uniformly_from_the_seed():
    z = lime_coalitions(5, 2000, np.random.default_rng(0))
    counts = np.bincount(z[1:].sum(axis=1), minlength=6)
    assert counts[5] == 0 and (np.abs(counts[:5] / 1999 - 0.2) < 0.04).all()
    np.testing.assert_array_equal(z, lime_coalitions(5, 2000, np.random.default_rng(0)))


def test_close_to_lime_image_explainer_on_the_same_segmentation(linear_image):
    lime_image = pytest.importorskip("lime.lime_image")
    net, x, grid, _ = linear_image

    def classifier(images):  # lime passes (n, H, W, C)
        with torch.no_grad():
            return net(torch.from_numpy(np.moveaxis(images, -1, 1).astype(np.float32))).numpy()

    explanation = lime_image.LimeImageExplainer(random_state=0).explain_instance(
        np.moveaxis(x, 0, -1).astype(np.float64),
        classifier,
        labels=(1,),
        top_labels=None,
        hide_color=0,
        num_samples=2000,
        segmentation_fn=lambda image: grid,
    )
    theirs = np.zeros(16)
    for k, value in explanation.local_exp[1]:
        theirs[k] = value
    ours = xk.explain(net, x, method="lime", target=1, components=grid, baseline=0.0, samples=2000)
    assert np.corrcoef(ours.component_values, theirs)[0, 1] > 0.999
    np.testing.assert_allclose(ours.component_values, theirs, rtol=0.05, atol=0.01)


# ---------------------------------------------------------------------- inputs and models


LIME_BATCH = {"method": "lime", "target": [2, 0], "batch": True, "samples": 200, "seed": 4,
              "baseline": 0.0}  # fmt: skip


def test_numpy_callable_gives_what_the_module_gives(linear_image):
    net, x, grid, _ = linear_image
    xs = np.stack([x, x[:, ::-1].copy()])

    def callable_net(batch):
        with torch.no_grad():
            return net(torch.from_numpy(batch)).numpy()

    a = xk.explain(net, xs, components=grid, **LIME_BATCH)
    b = xk.explain(xk.Model(callable_net, output="logits"), xs, components=grid, **LIME_BATCH)
    np.testing.assert_allclose(a.component_values, b.component_values, rtol=1e-5, atol=1e-7)
    assert a.info["r2"].shape == (2,) and a.components.shape == (2, 16, 16)


def test_batch_targets_match_single_calls(linear_image):
    net, x, grid, _ = linear_image
    xs = np.stack([x, x[:, ::-1].copy()])
    a = xk.explain(net, xs, components=grid, **LIME_BATCH)
    for i, t in enumerate([2, 0]):
        one = xk.explain(net, xs[i], components=grid, **{**LIME_BATCH, "batch": False, "target": t})
        np.testing.assert_allclose(a.component_values[i], one.component_values, atol=1e-12)


def test_lime_of_a_probability_callable_finds_the_region_it_reads():
    x = np.random.default_rng(5).random((3, 64, 64), dtype=np.float32)

    def brightness(batch):  # probabilities of "bright" from the top-left quarter
        p = 1 / (1 + np.exp(-10 * (batch[:, :, :32, :32].mean(axis=(1, 2, 3)) - 0.5)))
        return np.stack([1 - p, p], axis=1)

    e = xk.explain(brightness, x, method="lime", target=1, samples=300, seed=0)
    assert e.components.shape == (64, 64) and e.component_values.ndim == 1
    assert e.info["explained_output"] == "probabilities"
    top_left = np.unique(e.components[:32, :32])
    rest = np.setdiff1d(np.arange(e.component_values.size), top_left)
    assert np.abs(e.component_values[top_left]).sum() > 10 * np.abs(e.component_values[rest]).max()


def test_the_seed_determines_the_result(linear_image):
    net, x, grid, _ = linear_image
    run = lambda seed: xk.explain(net, x, method="lime", components=grid, samples=100, seed=seed)  # noqa: E731
    np.testing.assert_array_equal(run(1).values, run(1).values)
    assert not np.allclose(run(1).values, run(2).values)


# ---------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("params", "error", "name"),
    [
        ({"samples": 0}, ValueError, "samples"),
        ({"samples": 1.5}, TypeError, "samples"),
        ({"kernel_width": 0}, ValueError, "kernel_width"),
        ({"alpha": -1.0}, ValueError, "alpha"),
        ({"components": np.zeros((15, 16), int)}, ValueError, "components"),
        ({"baseline": np.zeros((4, 3, 16, 15))}, ValueError, "baseline"),
        ({"seed": 1.5}, TypeError, "seed"),
    ],
)
def test_bad_input_names_the_argument(linear_image, params, error, name):
    net, x, _, _ = linear_image
    with pytest.raises(error, match=name):
        xk.explain(net, x, method="lime", **params)


def test_background_of_the_wrong_width_for_tabular_rows():
    with pytest.raises(ValueError, match="baseline"):
        xk.explain(nn.Linear(6, 2), np.zeros(6), method="lime", baseline=np.zeros((10, 5)))


# ---------------------------------------------------------------------- tabular, from training


@pytest.fixture(scope="module")
def table():
    from xaikit.datasets import load_breast_cancer_table

    train, test = load_breast_cancer_table("train"), load_breast_cancer_table("test")
    return train.X, train.y, test.X


def test_training_sampling_recovers_a_linear_model_exactly(table):
    X, _, Xt = table
    w = np.random.default_rng(0).normal(size=X.shape[1])
    x = Xt[3]
    e = xk.explain(
        lambda rows: (rows @ w)[:, None], x, method="lime", target=0, sampling="training",
        baseline=X, discretize=None, alpha=0.0, samples=500, seed=0,
    )  # fmt: skip
    # standardised representation: a coefficient per training std, a contribution per feature
    # of w_i (x_i - mean_i) (the linear model's Shapley values), and a perfect local fit
    np.testing.assert_allclose(e.component_values, w * X.std(axis=0), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(e.info["contributions"], w * (x - X.mean(axis=0)), rtol=1e-6)
    assert e.info["r2"] == pytest.approx(1.0)
    assert e.info["local_prediction"] == pytest.approx(x @ w)


@pytest.mark.parametrize("discretize", ["quartile", None])
def test_training_sampling_agrees_with_lime_tabular_explainer(table, discretize):
    lime_tabular = pytest.importorskip("lime.lime_tabular")
    from sklearn.ensemble import GradientBoostingClassifier

    X, y, Xt = table
    gb = GradientBoostingClassifier(random_state=0, n_estimators=50).fit(X, y)
    x = Xt[3]
    ours = xk.explain(
        gb, x, method="lime", target=1, sampling="training", baseline=X,
        discretize=discretize, samples=5000, seed=0,
    )  # fmt: skip
    explainer = lime_tabular.LimeTabularExplainer(
        X, discretize_continuous=discretize is not None, random_state=0
    )
    result = explainer.explain_instance(
        x, gb.predict_proba, labels=(1,), num_features=X.shape[1], num_samples=5000
    )
    theirs = np.zeros(X.shape[1])
    for j, weight in result.local_exp[1]:
        theirs[j] = weight
    # different random draws of the same distribution: the weights agree up to sampling noise
    assert np.corrcoef(ours.component_values, theirs)[0, 1] > 0.95
    assert np.abs(ours.component_values - theirs).max() < 0.35 * np.abs(theirs).max()
    # x's bins are lime's: the first sample is x itself and the same quartiles cut the data
    for j in np.argsort(-np.abs(theirs))[:3]:
        low, high = ours.info["bin_low"][j], ours.info["bin_high"][j]
        assert (low < x[j] <= high) or (discretize is None and np.isinf(low))


def _categorical_case(table):
    X, _, Xt = table
    X = X[:, :6].copy()
    X[:, 2] = np.round(X[:, 2] / X[:, 2].max() * 3)  # a categorical feature with 4 values
    x = Xt[:4, :6].copy()
    x[:, 2] = np.round(x[:, 2] / Xt[:, 2].max() * 3)
    w = np.array([1.0, -2.0, 5.0, 0.0, 0.5, 0.0])
    model = lambda rows: np.stack([rows @ w, -(rows @ w)], axis=1)  # noqa: E731
    kwargs = {"method": "lime", "sampling": "training", "baseline": X, "seed": 3, "samples": 800}
    return model, x, kwargs


def test_training_sampling_keeps_the_value_of_a_categorical_feature(table):
    model, x, kwargs = _categorical_case(table)
    e = xk.explain(model, x, target=[0, 1, 0, 1], batch=True, categorical=[2], **kwargs)
    assert e.values.shape == x.shape
    assert e.info["bin_low"][0, 2] == e.info["bin_high"][0, 2] == x[0, 2]  # categorical: x's value


def test_training_sampling_of_a_batch_matches_single_calls(table):
    model, x, kwargs = _categorical_case(table)
    e = xk.explain(model, x, target=[0, 1, 0, 1], batch=True, categorical=[2], **kwargs)
    single = xk.explain(model, x[1], target=1, categorical=[2], **kwargs)
    np.testing.assert_allclose(e.values[1], single.values)


def test_training_sampling_draws_the_same_rows_for_every_target(table):
    model, x, kwargs = _categorical_case(table)
    single = xk.explain(model, x[1], target=1, categorical=[2], **kwargs)
    # the same draws for targets 0 and 1 of an antisymmetric model: opposite coefficients
    np.testing.assert_allclose(
        xk.explain(model, x[1], target=0, categorical=[2], **kwargs).values, -single.values,
        atol=1e-10,
    )  # fmt: skip


def test_training_sampling_without_bins_gives_an_unused_feature_nothing(table):
    model, x, kwargs = _categorical_case(table)
    continuous = xk.explain(model, x[1], target=0, discretize=None, alpha=0.0, **kwargs)
    assert abs(continuous.values[3]) < 1e-8 * np.abs(continuous.values).max()  # unused feature


@pytest.mark.parametrize(
    ("params", "error", "name"),
    [
        ({"sampling": "bogus"}, ValueError, "sampling"),
        ({"sampling": "training"}, ValueError, "baseline"),
        ({"sampling": "training", "baseline": np.zeros((10, 5))}, ValueError, "baseline"),
        ({"sampling": "training", "baseline": np.zeros((10, 6)), "discretize": "median"},
         ValueError, "discretize"),
        ({"sampling": "training", "baseline": np.zeros((10, 6)), "categorical": [7]},
         ValueError, "categorical"),
    ],
)  # fmt: skip
def test_bad_tabular_sampling_input(params, error, name):
    with pytest.raises(error, match=name):
        xk.explain(nn.Linear(6, 2), np.zeros(6), method="lime", **params)


def test_training_sampling_refuses_images(linear_image):
    net, x, _, _ = linear_image
    with pytest.raises(ValueError, match="sampling"):
        xk.explain(net, x, method="lime", sampling="training", baseline=np.zeros((3, 5)))


def test_segmentation_options_pass_through_explain():
    rng = np.random.default_rng(0)
    x = rng.random((3, 64, 64)).astype(np.float32)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 64 * 64, 2))
    e = xk.explain(net, x, method="kernel_shap", components={"how": "grid", "cell": (16, 32)},
                   samples=64)  # fmt: skip
    assert e.components.max() + 1 == 8 and e.component_values.shape == (8,)
    few = xk.explain(net, x, method="lime", components={"how": "slic", "n_segments": 6}, samples=50)
    many = xk.explain(
        net, x, method="lime", components={"how": "slic", "n_segments": 60}, samples=50
    )
    assert few.components.max() < many.components.max()
    with pytest.raises(ValueError, match="components: a dict needs 'how'"):
        xk.explain(net, x, method="lime", components={"n_segments": 6})
    with pytest.raises(TypeError, match="n_segment: not an option of components='slic'"):
        xk.explain(net, x, method="lime", components={"how": "slic", "n_segment": 6})


@pytest.mark.parametrize("method", ["lime", "kernel_shap"])
def test_a_single_component_warns(method):
    # A uniform image: Felzenszwalb finds one region, so its value is the whole score change.
    flat = np.full((3, 32, 32), 0.5, dtype=np.float32)

    def model(x):
        s = x.reshape(len(x), -1).mean(axis=1)
        return np.stack([s, 1 - s], axis=1)

    with pytest.warns(UserWarning, match=r"components: the input has a single component"):
        e = xk.explain(model, flat, method=method, components="felzenszwalb", samples=8)
    assert np.unique(e.components).tolist() == [0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a real segmentation: no warning
        xk.explain(model, flat, method=method, components="grid", samples=8)
