"""Complexity, localisation, robustness, evaluate and compare; cross-checks with Quantus."""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest
import torch

import xaikit as xk
from _models import LinearVectorModel, PatchModel
from _stand_ins import import_zennit
from xaikit.datasets import WATERMARK_CLASS, WATERMARK_REGION, load_watermark_mnist
from xaikit.metrics import (
    METRICS,
    attack_explanation,
    compare,
    entropy,
    evaluate,
    local_lipschitz,
    max_sensitivity,
    pointing_game,
    relevance_mass,
    relevance_rank,
    road,
    sparseness,
)
from xaikit.metrics.evaluate import higher_is_better
from xaikit.metrics.faithfulness import deletion, insertion, pixel_flipping
from xaikit.metrics.infidelity import infidelity
from xaikit.metrics.registry import metric

# ---------------------------------------------------------------------- complexity


def _one_hot():
    one_hot = np.zeros(10)
    one_hot[3] = -5.0
    return one_hot


def test_sparseness_values():
    assert sparseness(np.ones(10)) == pytest.approx(0.0)
    assert sparseness(_one_hot()) == pytest.approx(0.9)  # (n - 1) / n for one non-zero of n
    assert sparseness(np.zeros(4)) == 0.0
    assert sparseness(np.array([1.0, 3.0])) == pytest.approx(0.25)  # (-1*1 + 1*3) / (2*4)


def test_entropy_values():
    assert entropy(np.ones(8)) == pytest.approx(np.log(8))
    assert entropy(_one_hot()) == pytest.approx(0.0)
    assert entropy(np.array([1.0, 1.0, 2.0])) == pytest.approx(
        -(2 * 0.25 * np.log(0.25) + 0.5 * np.log(0.5))
    )


def test_sparseness_agrees_with_quantus():
    """Quantus's Sparseness (abs, normalised by max, +1e-7 before sorting): |diff| < 1e-5.

    Quantus normalises by the maximum over the whole batch (its default normalise_axes), so
    a weak item in a batch with a strong one meets its +1e-7 at a much smaller scale (0.005
    apart here); item by item the two agree to 1e-6.
    """
    import_zennit()  # quantus imports zennit, which imports torchvision
    quantus = pytest.importorskip("quantus")
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 1, 12, 12)) * rng.uniform(0, 1, size=(6, 1, 1, 1)) ** 3
    a[0] = 2.0  # nearly flat (Quantus refuses constant maps)
    a[0, 0, 0, 0] = 2.5
    a[1, 0, 3, 4] = 50.0
    x = rng.uniform(size=a.shape).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metric = quantus.Sparseness(disable_warnings=True)
        theirs = [
            metric(model=None, x_batch=xi[None], y_batch=[0], a_batch=ai[None].copy())[0]
            for xi, ai in zip(x, a, strict=True)
        ]
    ours = [sparseness(item) for item in a]
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


# ---------------------------------------------------------------------- localisation


def test_localization_on_planted_patch():
    r = np.zeros((1, 10, 10))
    r[0, 2:4, 2:4] = [[1.0, 2.0], [3.0, 4.0]]
    r[0, 8, 8] = 2.0
    r[0, 0, 9] = -7.0  # negative relevance counts for neither mass nor the maximum
    mask = (2, 2, 4, 4)
    assert pointing_game(r, mask)
    assert relevance_mass(r, mask) == pytest.approx(10 / 12)
    assert relevance_rank(r, mask) == pytest.approx(3 / 4)  # top 4: 4, 3, 2 (in), 2 at (8, 8)
    boolean = np.zeros((10, 10), bool)
    boolean[8, 8] = True
    assert not pointing_game(r, boolean)
    assert relevance_mass(r, boolean) == pytest.approx(2 / 12)
    flat = np.ones((10, 10))
    assert not pointing_game(flat, boolean)  # ties must all be inside


def test_localization_bad_mask():
    with pytest.raises(ValueError, match="mask: expected a mask of shape"):
        relevance_mass(np.ones((1, 10, 10)), np.ones((9, 10), bool))
    with pytest.raises(ValueError, match="mask"):
        relevance_mass(np.ones((10, 10)), (0, 0, 11, 3))
    with pytest.raises(ValueError, match="mask: the mask is empty"):
        pointing_game(np.ones((10, 10)), np.zeros((10, 10), bool))


def test_watermark_model_looks_at_the_mark(watermark_cnn):
    X, y, _ = load_watermark_mnist("test_marked")
    pred = watermark_cnn(torch.as_tensor(X[:200])).argmax(1).numpy()
    fooled = np.flatnonzero((pred == WATERMARK_CLASS) & (y[:200] != WATERMARK_CLASS))[:10]
    assert len(fooled) >= 5
    area_share = 36 / 784
    for method in ("saliency", "integrated_gradients"):
        e = xk.explain(watermark_cnn, X[fooled], method=method, batch=True)
        values = np.abs(e.values) if method == "saliency" else e.values
        mass = np.array([relevance_mass(v, WATERMARK_REGION) for v in values])
        assert mass.mean() > 5 * area_share, (method, mass)
        rank = np.array([relevance_rank(v, WATERMARK_REGION) for v in values])
        assert rank.mean() > 5 * area_share, (method, rank)


# ---------------------------------------------------------------------- robustness


def input_x_gradient(model, x, targets, **_):
    return xk.explain(
        model, np.asarray(x), method="input_x_gradient", target=targets, batch=True
    ).values


def test_max_sensitivity_exact_on_linear_model():
    # For a linear model, input x gradient = w * x, so the change is w * d: computable here.
    model = LinearVectorModel()
    x = np.linspace(0.5, 1.5, 30).astype(np.float32)
    w = model.w.detach().numpy()[1]
    got = max_sensitivity(model, x, input_x_gradient, target=1, radius=0.1, samples=50, seed=4)
    d = np.random.default_rng(4).uniform(-0.1, 0.1, size=(50, 30)).astype(np.float32)
    want = np.linalg.norm(w * d, axis=1).max() / np.linalg.norm(w * x)
    assert got == pytest.approx(want, rel=1e-4)
    lip = local_lipschitz(model, x, input_x_gradient, target=1, radius=0.1, samples=50, seed=4)
    assert lip == pytest.approx(
        (np.linalg.norm(w * d, axis=1) / np.linalg.norm(d, axis=1)).max(), rel=1e-4
    )
    # Saliency of a linear model does not move at all.
    assert max_sensitivity(model, x, "saliency", target=1, samples=5) == pytest.approx(
        0.0, abs=1e-6
    )


def test_max_sensitivity_agrees_with_quantus_in_distribution():
    """Quantus draws its noise from np.random; we compare the maximum over 200 draws.

    Same model, input, target, explain function, radius (0.2), norms (Frobenius), no
    normalisation, no abs. With 30 features the max over 200 draws is stable: rel. tol 10%.
    """
    import_zennit()  # quantus imports zennit, which imports torchvision
    quantus = pytest.importorskip("quantus")
    model = LinearVectorModel()
    x = np.linspace(0.5, 1.5, 30).astype(np.float32)[None]
    np.random.seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = quantus.MaxSensitivity(
            nr_samples=200,
            lower_bound=0.2,
            disable_warnings=True,
            normalise=False,
            abs=False,
            return_nan_when_prediction_changes=False,
        )(
            model=model,
            x_batch=x,
            y_batch=np.array([1]),
            a_batch=input_x_gradient(model, x, np.array([1])),
            explain_func=lambda model, inputs, targets, **_: input_x_gradient(
                model, inputs, targets
            ),
            device="cpu",
        )
    ours = max_sensitivity(model, x[0], input_x_gradient, target=1, radius=0.2, samples=200)
    assert ours == pytest.approx(float(theirs[0]), rel=0.1)


def test_robustness_bad_input():
    with pytest.raises(ValueError, match="radius"):
        max_sensitivity(LinearVectorModel(), np.ones(30, np.float32), radius=0)
    with pytest.raises(ValueError, match="samples"):
        local_lipschitz(LinearVectorModel(), np.ones(30, np.float32), samples=0)


# ---------------------------------------------------------------------- evaluate and compare


@pytest.fixture
def image():
    return np.random.default_rng(0).uniform(0.2, 1, size=(1, 10, 10)).astype(np.float32)


def test_evaluate_fills_scores(image):
    model = PatchModel()
    e = xk.explain(model, image, method="saliency", target=0)
    mask = np.zeros((10, 10), bool)
    mask[2:5, 3:7] = True
    scores = evaluate(
        model,
        image,
        e,
        metrics=[
            "deletion",
            "insertion",
            "sparseness",
            "relevance_mass",
            "pointing_game",
            "max_sensitivity",
        ],
        mask=mask,
        samples=3,
        steps=10,
    )
    assert e.scores == scores
    assert scores["deletion"] == pytest.approx(xk.metrics.deletion(model, image, e, steps=10).area)
    assert scores["relevance_mass"] == pytest.approx(1.0)
    assert scores["pointing_game"] == 1.0
    assert scores["max_sensitivity"] == pytest.approx(0.0, abs=1e-6)  # saliency is constant here


def test_evaluate_batch(image):
    model = PatchModel()
    X = np.stack([image, image * 0.5])
    e = xk.explain(model, X, method="saliency", target=0, batch=True)
    scores = evaluate(model, None, e, metrics="deletion", steps=5)
    assert scores["deletion"].shape == (2,)
    assert scores["deletion"][0] == pytest.approx(
        xk.metrics.deletion(model, image, e[0], steps=5).area
    )


def test_evaluate_errors(image):
    model = PatchModel()
    e = xk.explain(model, image, method="saliency", target=0)
    with pytest.raises(ValueError, match=r"metrics: unknown metric 'delection'.*deletion"):
        evaluate(model, image, e, metrics=["delection"])
    with pytest.raises(ValueError, match="mask"):
        evaluate(model, image, e, metrics=["relevance_mass"])
    with pytest.raises(TypeError, match="window"):
        evaluate(model, image, e, metrics=["deletion"], window=3)
    with pytest.raises(TypeError, match=r"explanation: .* need x="):
        evaluate(model, None, e.values)


# ---------------------------------------------------------------------- the metric table


def _patch_explanation(image):
    return xk.explain(PatchModel(), image, method="saliency", target=0)


def _mask():
    mask = np.zeros((10, 10), bool)
    mask[2:5, 3:7] = True
    return mask


@pytest.mark.parametrize("name", sorted(METRICS))
def test_every_option_of_a_metric_is_accepted_by_evaluate(name, image):
    # Each option at its default value gives the score of the defaults: evaluate takes every
    # option the metric's signature states, and passes it on.
    e = _patch_explanation(image)
    required = {"mask": _mask()} if "mask" in METRICS[name].required else {}
    options = {k: v for k, v in METRICS[name].defaults.items() if k not in required}
    given = evaluate(PatchModel(), image, e, metrics=name, **options, **required)[name]
    assert given == evaluate(PatchModel(), image, e, metrics=name, **required)[name]


@pytest.mark.parametrize(("option", "value"), [("step_size", -1.0), ("beta", 0.0), ("queries", 0)])
def test_evaluate_passes_attack_options_on(option, value, image):
    # Before the table was derived from the signature these were "not an option" (TypeError);
    # now they reach attack_explanation, whose own check rejects the bad value.
    e = _patch_explanation(image)
    with pytest.raises(ValueError, match=rf"^{option}: "):
        evaluate(PatchModel(), image, e, metrics="attack_top_k", steps=1, **{option: value})


def test_evaluate_attack_step_size_equals_the_direct_call(image):
    e = _patch_explanation(image)
    kw = {"steps": 3, "step_size": 0.05, "queries": 2, "estimator": "spsa", "k": 4}
    scores = evaluate(PatchModel(), image, e, metrics="attack_top_k", **kw)
    direct = attack_explanation(PatchModel(), image, "saliency", **kw)
    assert scores["attack_top_k"] == direct.top_k_intersection


def _keyword_only(function, *, without=()):
    return {
        p.name
        for p in inspect.signature(function).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in without
    }


@pytest.mark.parametrize(
    ("name", "function", "without"),
    [
        ("deletion", deletion, ()),
        ("insertion", insertion, ()),
        ("morf", pixel_flipping, ("order",)),
        ("lerf", pixel_flipping, ("order",)),
        ("road", road, ("order",)),
        ("road_lerf", road, ("order",)),
        ("infidelity", infidelity, ()),
        ("max_sensitivity", max_sensitivity, ("explanation",)),
        ("local_lipschitz", local_lipschitz, ("explanation",)),
        ("attack_top_k", attack_explanation, ("explanation",)),
    ],
)
def test_metric_options_are_the_public_function_options(name, function, without):
    assert METRICS[name].options == _keyword_only(function, without=without)


def test_attack_top_k_takes_the_attack_options():
    assert {"step_size", "beta", "queries"} <= METRICS["attack_top_k"].options


@pytest.mark.parametrize("name", sorted(METRICS))
def test_every_metric_takes_model_x_explanation_then_target(name):
    parameters = list(inspect.signature(METRICS[name].function).parameters)
    assert parameters[:3] == ["model", "x", "explanation"]
    if "target" in parameters:
        assert parameters[3] == "target"


DIRECTIONS = {  # metric -> higher is better
    "deletion": False,
    "insertion": True,
    "morf": False,
    "lerf": True,
    "road": False,
    "road_lerf": True,
    "infidelity": False,
    "sparseness": True,
    "entropy": False,
    "pointing_game": True,
    "relevance_mass": True,
    "relevance_rank": True,
    "max_sensitivity": False,
    "local_lipschitz": False,
    "attack_top_k": True,
}


def test_the_metric_table_holds_the_documented_metrics():
    assert set(METRICS) == set(DIRECTIONS)


@pytest.mark.parametrize(("name", "better"), DIRECTIONS.items())
def test_direction_of_each_metric(name, better):
    assert higher_is_better(name) is better


def test_a_metric_entry_pairs_its_function_with_its_direction(image):
    e = _patch_explanation(image)
    function, better = METRICS["lerf"]
    lerf = pixel_flipping(PatchModel(), image, e, order="lerf", steps=5).area
    assert better is True
    assert function(PatchModel(), image, e, steps=5) == lerf


def test_a_metric_in_another_argument_order_is_refused():
    with pytest.raises(TypeError, match=r"^function: a metric takes"):
        metric("backwards", higher_is_better=True)(lambda explanation, mask: 0.0)
    assert "backwards" not in METRICS


def test_a_metric_taking_target_late_is_refused():
    def late(model, x, explanation, *, steps=1, target=None):
        return 0.0

    with pytest.raises(TypeError, match=r"^function: late must take target first"):
        metric("late", higher_is_better=True)(late)
    assert "late" not in METRICS


def test_compare_of_a_batch_of_one_does_not_suggest_batch_true():
    # explain's hint said "pass batch=True", which compare then refused as a metric option
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(72, 2))
    with pytest.raises(ValueError, match=r"compare takes one input: pass x\[0\]") as caught:
        compare(net.eval(), np.zeros((1, 1, 8, 8), np.float32), methods=["saliency"])
    assert "batch=True" not in str(caught.value)


def test_compare_ranks_methods(image):
    model = PatchModel()
    rng = np.random.default_rng(0)
    noise = lambda m, x, t: rng.normal(size=x.shape)  # noqa: E731
    result = compare(
        model,
        image,
        methods={"saliency": {}, "occlusion": {"window": 2, "stride": 2}},
        metrics=("deletion", "insertion"),
        target=0,
    )
    assert [r["method"] for r in result.table] == ["saliency", "occlusion"]
    assert set(result.rank("deletion")) == {"saliency", "occlusion"}
    assert result.explanations["saliency"].scores["deletion"] == result.table[0]["deletion"]
    best = result.rank("deletion")[0]
    assert result.table[[r["method"] for r in result.table].index(best)]["deletion"] == min(
        r["deletion"] for r in result.table
    )
    assert "| saliency |" in str(result)
    assert len(result.plot().axes) >= 2
    del noise


def test_compare_of_a_torchscript_model_runs_only_the_methods_that_apply(tmp_path):
    # It tried Grad-CAM, which needs hooks a TorchScript module does not run, and failed
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(2 * 8 * 8, 2)).eval()  # fmt: skip
    scripted = torch.jit.script(net)
    x = np.random.default_rng(0).random((1, 8, 8), dtype=np.float32)
    result = compare(scripted, x, metrics=["deletion"])
    assert "gradcam" not in result.explanations and "saliency" in result.explanations


def test_evaluate_takes_a_map_without_channels_as_the_metrics_do():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.Flatten(),
                              torch.nn.Linear(18, 2)).eval()  # fmt: skip
    x = np.random.default_rng(0).random((3, 5, 5)).astype(np.float32)
    heat = np.random.default_rng(1).random((5, 5))
    got = xk.evaluate(net, x, heat, metrics="deletion")["deletion"]
    assert got == pytest.approx(xk.metrics.deletion(net, x, heat).area)
    with pytest.raises(ValueError, match=r"^explanation: expected attributions of the shape"):
        xk.evaluate(net, x, np.zeros((4, 4)), metrics="deletion")
