"""Deletion, insertion and pixel flipping against a plain-loop reference on a planted patch."""

from __future__ import annotations

import numpy as np
import pytest

import xaikit as xk
from _models import PATCH, PatchModel
from _stand_ins import import_zennit
from xaikit.metrics import deletion, insertion, pixel_flipping


def p0(x: np.ndarray) -> float:
    s = 4 * x[:, PATCH[0], PATCH[1]].mean()
    return float(1 / (1 + np.exp(-2 * s)))


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    return rng.uniform(0.2, 1.0, size=(2, 10, 10)).astype(np.float32)


@pytest.fixture
def relevance(image):
    # Inside the patch relevance grows with the pixel's value; outside small noise.
    rng = np.random.default_rng(1)
    r = rng.uniform(0, 0.1, size=image.shape)
    r[:, PATCH[0], PATCH[1]] += image[:, PATCH[0], PATCH[1]]
    return r


def reference(x, relevance, *, steps, baseline, insert, order="morf"):
    """The curve's area computed with a plain loop, one masked image at a time."""
    pix = relevance.sum(axis=0).ravel()
    order_idx = np.argsort(-pix if order == "morf" else pix, kind="stable")
    n = pix.size
    probs = []
    for k in range(steps + 1):
        chosen = order_idx[: k * n // steps]
        keep = np.zeros(n, bool) if insert else np.ones(n, bool)
        keep[chosen] = insert
        keep = keep.reshape(x.shape[1:])
        probs.append(p0(np.where(keep[None], x, baseline)))
    fr = np.array([k * n // steps for k in range(steps + 1)]) / n
    return float(np.trapezoid(probs, fr)), np.array(probs)


@pytest.mark.parametrize("steps", [1, 7, 10, 100])
def test_deletion_equals_reference(image, relevance, steps):
    curve = deletion(PatchModel(), image, relevance, target=0, steps=steps)
    area, probs = reference(image, relevance, steps=steps, baseline=0.0, insert=False)
    assert curve.probabilities.shape == (steps + 1,)
    np.testing.assert_allclose(curve.probabilities, probs, atol=1e-6)
    assert curve.area == pytest.approx(area, abs=1e-6)
    assert curve.fractions[0] == 0 and curve.fractions[-1] == 1


def test_insertion_equals_reference_with_blur(image, relevance):
    from scipy.ndimage import gaussian_filter

    blurred = np.stack([gaussian_filter(c.astype(np.float64), 1.0) for c in image])
    curve = insertion(PatchModel(), image, relevance, target=0, steps=10, sigma=1.0)
    area, probs = reference(image, relevance, steps=10, baseline=blurred, insert=True)
    np.testing.assert_allclose(curve.probabilities, probs, atol=1e-5)
    assert curve.area == pytest.approx(area, abs=1e-5)
    # Starts at the blurred image, ends at the original.
    assert curve.probabilities[0] == pytest.approx(p0(blurred), abs=1e-5)
    assert curve.probabilities[-1] == pytest.approx(p0(image), abs=1e-5)


def test_lerf_equals_reference(image, relevance):
    curve = pixel_flipping(PatchModel(), image, relevance, order="lerf", target=0, steps=20)
    area, _ = reference(image, relevance, steps=20, baseline=0.0, insert=False, order="lerf")
    assert curve.area == pytest.approx(area, abs=1e-6)
    morf = pixel_flipping(PatchModel(), image, relevance, order="morf", target=0, steps=20)
    assert morf.area == pytest.approx(deletion(PatchModel(), image, relevance, steps=20).area)
    assert curve.area > morf.area + 0.1


def test_correct_order_beats_reversed(image, relevance):
    model = PatchModel()
    good_del = deletion(model, image, relevance, target=0).area
    bad_del = deletion(model, image, -relevance, target=0).area
    good_ins = insertion(model, image, relevance, target=0, baseline=0.0).area
    bad_ins = insertion(model, image, -relevance, target=0, baseline=0.0).area
    assert good_del < bad_del - 0.2
    assert good_ins > bad_ins + 0.1


def test_deletion_of_an_explanation_starts_at_the_softmax_of_the_logits(image):
    model = PatchModel()
    e = xk.explain(model, image, method="saliency", target=0)
    curve = deletion(model, image, e)
    assert curve.target == 0
    # The default step count is the image side; the start is softmax of the logits.
    assert len(curve.probabilities) == 11
    assert curve.probabilities[0] == pytest.approx(p0(image), abs=1e-6)
    # Removing the whole patch gives s = 0: probability 1/2.
    assert curve.probabilities[-1] == pytest.approx(0.5, abs=1e-6)
    fig = curve.plot()
    assert fig.axes


def test_callable_probability_model(image, relevance):
    # A callable returning probabilities is used as it is (no second softmax).
    def predict(xb):
        return np.stack([[p0(x), 1 - p0(x)] for x in xb])

    torch_curve = deletion(PatchModel(), image, relevance, target=0, steps=10)
    fn_curve = deletion(predict, image, relevance, target=0, steps=10)
    np.testing.assert_allclose(fn_curve.probabilities, torch_curve.probabilities, atol=1e-5)


def test_streams_in_chunks(image, relevance, monkeypatch):
    import xaikit.metrics.faithfulness as faith

    monkeypatch.setattr(faith, "chunk_size", lambda x: 3)
    curve = deletion(PatchModel(), image, relevance, target=0, steps=100)
    area, _ = reference(image, relevance, steps=100, baseline=0.0, insert=False)
    assert curve.area == pytest.approx(area, abs=1e-6)


def test_bad_input(image, relevance):
    model = PatchModel()
    with pytest.raises(ValueError, match="explanation: expected attributions"):
        deletion(model, image, relevance[:, :5])
    with pytest.raises(ValueError, match="steps"):
        deletion(model, image, relevance, steps=0)
    with pytest.raises(ValueError, match="steps: expected at most"):
        deletion(model, image, relevance, steps=101)
    with pytest.raises(TypeError, match="steps"):
        insertion(model, image, relevance, steps=2.5)
    with pytest.raises(ValueError, match="order"):
        pixel_flipping(model, image, relevance, order="random")
    with pytest.raises(ValueError, match="target"):
        deletion(model, image, relevance, target=5)
    # A (H, W) map is accepted for a (C, H, W) image.
    assert deletion(model, image, relevance.sum(0), target=0, steps=10).area == pytest.approx(
        deletion(model, image, relevance, target=0, steps=10).area
    )


def test_pixel_flipping_agrees_with_quantus(image, relevance):
    """Quantus's PixelFlipping on the same input, attributions, target and baseline: 1e-6.

    Quantus removes ``features_in_step`` pixels per step by replacing them with its "black"
    baseline (the input's minimum), records softmax probabilities after each step and leaves the
    untouched input out; our curve with ``steps = pixels / features_in_step`` and
    ``baseline=x.min()`` equals it from its second point on. One channel, so Quantus's
    element order is our pixel order; no ties in the attributions (its argsort is unstable).
    Quantus has no LeRF switch (and refuses all-negative maps): its curve for the reversed
    map ``max(a) + 0.1 - a`` is our LeRF.
    """
    import_zennit()  # quantus imports zennit, which imports torchvision
    quantus = pytest.importorskip("quantus")
    import warnings

    x, a = image[:1], relevance[:1]

    def theirs(attributions):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            metric = quantus.PixelFlipping(
                features_in_step=4, perturb_baseline="black", normalise=False, disable_warnings=True
            )
            return metric(
                model=PatchModel().eval(),
                x_batch=x[None],
                y_batch=np.array([0]),
                a_batch=attributions[None].copy(),
                device="cpu",
            )[0]

    base = float(x.min())
    morf = pixel_flipping(PatchModel(), x, a, target=0, steps=25, baseline=base)
    lerf = pixel_flipping(PatchModel(), x, a, order="lerf", target=0, steps=25, baseline=base)
    np.testing.assert_allclose(morf.probabilities[1:], theirs(a), atol=1e-6)
    np.testing.assert_allclose(lerf.probabilities[1:], theirs(a.max() + 0.1 - a), atol=1e-6)


def test_default_metrics_run_on_a_table_row():
    # insertion's default was a blur, which a table row does not have: evaluate and compare
    # with their default metrics failed on every tabular input.
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    rows = rng.normal(size=(60, 5))
    clf = LogisticRegression().fit(rows, (rows[:, 0] + rows[:, 1] > 0).astype(int))
    e = xk.explain(clf, rows[0], method="occlusion")
    scores = xk.evaluate(clf, rows[0], e)
    assert set(scores) == {"deletion", "insertion"}
    zero = xk.evaluate(clf, rows[0], e, metrics="insertion", baseline=0.0)
    assert scores["insertion"] == zero["insertion"]
    with pytest.raises(ValueError, match="baseline: 'blur' is defined for images"):
        xk.evaluate(clf, rows[0], e, metrics="insertion", baseline="blur")
