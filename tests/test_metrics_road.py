"""ROAD (noisy linear imputation) and infidelity: exact values, Quantus and Captum cross-checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import xaikit as xk
from _models import PATCH, LinearImageModel, PatchModel
from xaikit.metrics import evaluate, infidelity, noisy_linear_imputation, road


def p0(x: np.ndarray) -> float:
    s = 4 * (x[:, PATCH[0], PATCH[1]].mean() - 0.5)
    return float(1 / (1 + np.exp(-2 * s)))


@pytest.fixture
def image():
    # A bright patch on a dark background: imputing the patch from its neighbours darkens it.
    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, 0.2, size=(1, 10, 10))
    x[:, PATCH[0], PATCH[1]] = rng.uniform(0.8, 1.0, size=(1, 3, 4))
    return x.astype(np.float32)


@pytest.fixture
def relevance(image):
    rng = np.random.default_rng(1)
    r = rng.uniform(0, 0.1, size=image.shape)
    r[:, PATCH[0], PATCH[1]] += image[:, PATCH[0], PATCH[1]]
    return r


# ---------------------------------------------------------------------- imputation


def test_imputation_reproduces_a_linear_ramp():
    # The stencil is symmetric, so a linear function is the weighted mean of its neighbours:
    # removed interior pixels come back exactly (the system has one solution).
    i, j = np.mgrid[0:9, 0:11]
    ramp = (0.3 * i - 0.2 * j + 1.0)[None]
    removed = np.zeros((9, 11), bool)
    removed[2:7, 3:9] = True
    removed[4, 1] = True
    filled = noisy_linear_imputation(ramp, removed, noise=0)
    np.testing.assert_allclose(filled, ramp, atol=1e-12)
    # Kept pixels are untouched; noise goes on the imputed values only, with its std.
    noisy = noisy_linear_imputation(
        np.zeros((60, 60)), np.arange(3600).reshape(60, 60) % 3 == 0, noise=0.5, seed=3
    )
    assert np.all(noisy[np.arange(3600).reshape(60, 60) % 3 != 0] == 0)
    assert noisy[np.arange(3600).reshape(60, 60) % 3 == 0].std() == pytest.approx(0.5, rel=0.05)


def test_imputation_agrees_with_quantus():
    """Quantus's noisy_linear_imputation (from the ROAD authors' code) with noise 0: 1e-10."""
    perturb = pytest.importorskip("quantus.functions.perturb_func")
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(3, 12, 10))
    removed = rng.uniform(size=(12, 10)) < 0.6
    ours = noisy_linear_imputation(x, removed, noise=0)
    theirs = perturb.noisy_linear_imputation(
        x.copy(), indices=np.flatnonzero(removed.ravel()), noise=0.0
    )
    np.testing.assert_allclose(ours, theirs, atol=1e-10)


# ---------------------------------------------------------------------- ROAD


def reference(x, relevance, percentages, order):
    """The ROAD curve with a plain loop over the percentages (noise 0)."""
    pix = relevance.sum(axis=0).ravel()
    ranked = np.argsort(-pix if order == "morf" else pix, kind="stable")
    probs = [p0(x)]
    for p in percentages:
        removed = np.zeros(pix.size, bool)
        removed[ranked[: round(p / 100 * pix.size)]] = True
        probs.append(p0(noisy_linear_imputation(x, removed.reshape(x.shape[1:]), noise=0)))
    return np.array(probs)


@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_road_equals_reference(image, relevance, order):
    percentages = (5, 12, 30, 50, 90)
    curve = road(
        PatchModel(offset=0.5),
        image,
        relevance,
        order=order,
        percentages=percentages,
        noise=0,
        target=0,
    )
    probs = reference(image, relevance, percentages, order)
    np.testing.assert_allclose(curve.probabilities, probs, atol=1e-6)
    np.testing.assert_allclose(curve.fractions, [0, 0.05, 0.12, 0.3, 0.5, 0.9])
    want = np.trapezoid(probs, curve.fractions) / 0.9
    assert curve.area == pytest.approx(want, abs=1e-6)
    assert curve.name == "road" and curve.order == order
    np.testing.assert_array_equal(curve.target_predicted, probs > 0.5)


def test_road_separates_correct_from_reversed(image, relevance):
    model = PatchModel(offset=0.5)
    good = road(model, image, relevance, target=0).area
    bad = road(model, image, -relevance, target=0).area
    assert good < bad - 0.3, (good, bad)
    # LeRF: removing the irrelevant background first keeps the decision (the same order as
    # MoRF of the reversed map).
    lerf = road(model, image, relevance, order="lerf", target=0).area
    assert lerf == pytest.approx(bad) and lerf > 0.9
    # The noise is seeded: the same seed gives the same curve.
    a = road(model, image, relevance, target=0, noise=0.05, seed=1)
    b = road(model, image, relevance, target=0, noise=0.05, seed=1)
    np.testing.assert_array_equal(a.probabilities, b.probabilities)


def test_road_bad_input(image, relevance):
    model = PatchModel(offset=0.5)
    with pytest.raises(ValueError, match="explanation: expected attributions"):
        road(model, image, relevance[:, :4])
    with pytest.raises(ValueError, match=r"percentages: expected values in \(0, 100\)"):
        road(model, image, relevance, percentages=(50, 100))
    with pytest.raises(ValueError, match="percentages: expected strictly increasing"):
        road(model, image, relevance, percentages=(50, 20))
    with pytest.raises(ValueError, match="at least one pixel more"):
        road(model, image, relevance, percentages=(10, 10.2))  # 10 pixels both times
    with pytest.raises(ValueError, match="at least one pixel more"):
        road(model, image, relevance, percentages=(0.1, 50))  # 0 pixels
    with pytest.raises(TypeError, match="percentages"):
        road(model, image, relevance, percentages=("a", "b"))
    with pytest.raises(ValueError, match="x: ROAD needs an image"):
        road(lambda x: np.full((len(x), 2), 0.5), np.ones(30), np.ones(30))
    with pytest.raises(ValueError, match="noise"):
        road(model, image, relevance, noise=-1)
    with pytest.raises(ValueError, match="order"):
        road(model, image, relevance, order="up")


# ---------------------------------------------------------------------- infidelity


def test_infidelity_exact_on_linear_model():
    # f(x) - f(x - I) = I . w, so the gradient w is perfectly faithful and 2 w is off by I . w.
    model = LinearImageModel()
    w = model.w.detach().numpy()[1]
    x = np.random.default_rng(0).uniform(size=(1, 6, 6)).astype(np.float32)
    perturbations = np.random.default_rng(1).normal(0, 0.1, size=(40, 1, 6, 6))
    assert infidelity(model, x, w, perturbation=perturbations, target=1) == pytest.approx(
        0, abs=1e-9
    )
    want = np.mean((perturbations.reshape(40, -1) @ w.ravel()) ** 2)
    got = infidelity(model, x, 2 * w, perturbation=perturbations, target=1)
    assert got == pytest.approx(want, rel=1e-5)
    # The error-minimising scale undoes the factor 2.
    assert infidelity(model, x, 2 * w, perturbation=perturbations, target=1, normalize=True) == (
        pytest.approx(0, abs=1e-9)
    )
    # Built-in perturbations: Gaussian and square removal (x - I zeroes a square).
    assert infidelity(model, x, w, target=1, samples=30) == pytest.approx(0, abs=1e-9)
    assert infidelity(model, x, w, target=1, perturbation="square", window=3) == pytest.approx(
        0, abs=1e-9
    )
    assert infidelity(model, x, -w, target=1, perturbation="square", samples=10) > 0.01


@pytest.mark.parametrize("normalize", [False, True])
def test_infidelity_agrees_with_captum(normalize):
    """Same model, input, attributions and perturbations as Captum's infidelity: rel 1e-5.

    Captum sums I * e in float32, we in float64; the forward passes are the same float32 ones.
    """
    captum_metrics = pytest.importorskip("captum.metrics")
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)
    ).eval()
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(1, 8, 8)).astype(np.float32)
    e = xk.explain(net, x, method="saliency", target=1)
    perturbations = rng.normal(0, 0.1, size=(50, 1, 8, 8)).astype(np.float32)

    def perturb(inputs):
        p = torch.as_tensor(perturbations)
        return p, inputs - p

    theirs = captum_metrics.infidelity(
        net,
        perturb,
        torch.as_tensor(x[None]),
        torch.as_tensor(e.values[None]),
        target=1,
        n_perturb_samples=50,
        normalize=normalize,
    ).item()
    ours = infidelity(net, x, e, perturbation=perturbations, normalize=normalize)
    assert ours == pytest.approx(theirs, rel=1e-5)


def test_infidelity_bad_input():
    model = LinearImageModel()
    x = np.ones((1, 6, 6), np.float32)
    e = np.ones((1, 6, 6))
    with pytest.raises(ValueError, match="perturbation: expected an array"):
        infidelity(model, x, e, perturbation=np.ones((3, 6, 6)))
    with pytest.raises(ValueError, match="perturbation: expected one of"):
        infidelity(model, x, e, perturbation="blur")
    with pytest.raises(ValueError, match="window"):
        infidelity(model, x, e, perturbation="square", window=7)
    with pytest.raises(ValueError, match="noise"):
        infidelity(model, x, e, noise=0)
    with pytest.raises(ValueError, match="samples"):
        infidelity(model, x, e, samples=0)
    with pytest.raises(ValueError, match="explanation: expected attributions"):
        infidelity(model, x, np.ones(5))


def test_evaluate_matches_the_road_with_infidelity_functions(image, relevance):
    model = PatchModel(offset=0.5)
    e = xk.explain(model, image, method="saliency", target=0)
    scores = evaluate(
        model,
        image,
        e,
        metrics=["road", "road_lerf", "infidelity"],
        noise=0.0,
        percentages=(20, 50, 80),
        perturbation="square",
    )
    assert scores["road"] == pytest.approx(
        road(model, image, e, noise=0.0, percentages=(20, 50, 80)).area
    )
    assert scores["road_lerf"] > scores["road"]
    assert scores["infidelity"] == pytest.approx(infidelity(model, image, e, perturbation="square"))
