"""Huge counts (issue 16, item 13) and the numeric-parameter sweep.

A count (samples, steps, queries, repeats) must never allocate memory in proportion to itself:
what can stream does so chunk by chunk (and reaches the model with a small footprint), what
cannot is refused up front with an estimate that names the parameter. Memory is measured with
tracemalloc (NumPy reports its buffers to it) or with counts so large that any allocation in
proportion to them fails at once; a model that stops the run at its first call shows that the
work started. Results for normal counts are unchanged (same draws, regressions to rounding).
"""

from __future__ import annotations

import importlib
import math
import tracemalloc

import numpy as np
import pytest
import torch
from torch import nn

import xaikit as xk
from xaikit import _draws
from xaikit import _validation as validation
from xaikit.attribution import coalitions as coalitions_module
from xaikit.attribution import gradients as gradients_module
from xaikit.attribution import kernel_shap as kernel_shap_module
from xaikit.attribution import lime as lime_module
from xaikit.attribution import lime_tabular as lime_tabular_module
from xaikit.attribution import rise as rise_module
from xaikit.featureviz import render as render_module

# the package re-exports functions of the same names as these modules
infidelity_module = importlib.import_module("xaikit.metrics.infidelity")
robustness_module = importlib.import_module("xaikit.metrics.robustness")

MiB = 2**20


class RunStoppedError(Exception):
    """Raised by :class:`Stopping` once its budget of forward passes is spent."""


class Stopping(nn.Module):
    """Wraps a module and raises :class:`RunStoppedError` on forward pass number ``calls + 1``."""

    def __init__(self, inner: nn.Module, calls: int = 0) -> None:
        super().__init__()
        self.inner, self.left = inner, calls

    def forward(self, x):
        if self.left == 0:
            raise RunStoppedError
        self.left -= 1
        return self.inner(x)


def tabular_net(features: int = 4, outputs: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(features, 8), nn.Tanh(), nn.Linear(8, outputs)).eval()


def image_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 6 * 6, 3)
    ).eval()


def peak_traced(call) -> int:
    """Peak bytes NumPy and Python allocated during ``call()`` (ended by RunStoppedError)."""
    tracemalloc.start()
    try:
        call()
    except RunStoppedError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


ROW = np.random.default_rng(0).normal(size=4).astype(np.float32)
IMAGE = np.random.default_rng(1).random((1, 8, 8), dtype=np.float32)


@pytest.fixture
def small_skips(monkeypatch):
    """Skipped blocks of draws are drawn in small pieces, so they are not what is measured.

    (Patches of new module constants use ``raising=False`` so that, on code without them, the
    test fails on what it measures.)"""
    monkeypatch.setattr(_draws, "_SKIP_CHUNK", 2**12, raising=False)


# ---------------------------------------------------------------------- gradient methods


def test_smoothgrad_with_2_to_the_40_samples_streams_its_points():
    # Before: torch.full((samples,)) of weights, 4 TiB, failed before any model call.
    model = Stopping(tabular_net(), calls=1)  # explain's own forward pass first
    with pytest.raises(RunStoppedError):
        xk.explain(model, ROW, method="smoothgrad", target=0, samples=2**40)


@pytest.mark.parametrize("rule", ["riemann_middle", "riemann_trapezoid", "riemann_left"])
def test_integrated_gradients_riemann_rules_stream_2_to_the_40_steps(rule):
    # Before: path_rule built arrays of all steps (np.arange(2**40)).
    model = Stopping(tabular_net(), calls=1)  # the first call scores x and its baseline
    with pytest.raises(RunStoppedError):
        xk.explain(model, ROW, method="integrated_gradients", target=0, steps=2**40, rule=rule)


def test_path_rule_at_any_point_equals_the_whole_rule_bit_for_bit():
    for rule in gradients_module.RULES:
        alphas, weights = gradients_module.path_rule(rule, 37)
        k = np.array([36, 0, 17, 5])
        got = gradients_module.path_rule_at(rule, 37, k)
        assert np.array_equal(got[0], alphas[k]) and np.array_equal(got[1], weights[k])
    alphas, weights = gradients_module.path_rule("riemann_trapezoid", 11)
    assert np.array_equal(alphas, np.linspace(0.0, 1.0, 11)) and weights.sum() == pytest.approx(1)


def test_gauss_legendre_steps_beyond_its_eigenproblem_are_refused_up_front():
    # Before: leggauss(10**9) tried a 10**9 x 10**9 companion matrix.
    with pytest.raises(ValueError, match=r"^steps: the Gauss-Legendre rule .*riemann_middle"):
        xk.explain(tabular_net(), ROW, method="integrated_gradients", target=0, steps=10**9)


def test_layer_integrated_gradients_streams_its_path_points():
    # Before: np.repeat(np.arange(n), steps) and every path point built at once.
    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.embed = nn.Embedding(12, 4)
            self.head = nn.Linear(4, 2)

        def forward(self, ids):
            return self.head(self.embed(ids).mean(dim=1))

    ids = np.array([3, 5, 7, 1])
    model = Stopping(Tokens(), calls=1)  # the first call records the layer on x and baseline
    with pytest.raises(RunStoppedError):
        xk.explain(
            model, ids, method="integrated_gradients", layer="inner.embed", baseline=0,
            target=0, steps=2**40, rule="riemann_middle",
        )  # fmt: skip
    # and with few steps, a small chunk gives what one chunk gives
    net = Tokens()
    whole = xk.explain(net, ids, method="integrated_gradients", layer="embed", baseline=0, steps=9)
    chunked_chunk = gradients_module.CHUNK_BYTES
    try:
        gradients_module.CHUNK_BYTES = 16 * 4 * 3  # three path points per chunk
        chunked = xk.explain(
            net, ids, method="integrated_gradients", layer="embed", baseline=0, steps=9
        )
    finally:
        gradients_module.CHUNK_BYTES = chunked_chunk
    np.testing.assert_allclose(chunked.values, whole.values, rtol=1e-6, atol=1e-7)


def test_expected_gradients_draws_its_samples_chunk_by_chunk(monkeypatch, small_skips):
    background = np.random.default_rng(2).normal(size=(5, 4)).astype(np.float32)
    args = dict(method="expected_gradients", baseline=background, samples=50, target=1)
    whole = xk.explain(tabular_net(), ROW, **args)
    monkeypatch.setattr(gradients_module, "CHUNK_BYTES", 16 * 7)  # seven points per chunk
    chunked = xk.explain(tabular_net(), ROW, **args)  # the same draws, chunk by chunk
    np.testing.assert_allclose(chunked.values, whole.values, rtol=1e-6, atol=1e-8)
    # Before: two (items, samples) arrays up front, 64 MB here.
    monkeypatch.setattr(gradients_module, "CHUNK_BYTES", 16 * 4096)  # 4096 points per chunk
    model = Stopping(tabular_net(), calls=1)  # explain's own forward pass first
    peak = peak_traced(lambda: xk.explain(model, ROW, **{**args, "samples": 4_000_000}))
    assert peak < 8 * MiB


# ---------------------------------------------------------------------- perturbation methods


def test_rise_memory_stays_flat_for_millions_of_masks(monkeypatch, small_skips):
    # Before: all grids as float64 draws, then all shifts: > 200 MB for 4 million masks.
    monkeypatch.setattr(rise_module, "chunk_size", lambda *a, **k: 1000)
    model = Stopping(image_net(), calls=1)
    peak = peak_traced(
        lambda: xk.explain(model, IMAGE, method="rise", target=0, samples=4_000_000, cell=2)
    )
    assert peak < 8 * MiB


def test_lime_memory_stays_flat_for_millions_of_coalitions(monkeypatch, small_skips):
    # Before: every coalition, its kept count, score and weight at once (> 50 MB here).
    monkeypatch.setattr(lime_module, "coalition_rows", lambda m: 1000, raising=False)
    model = Stopping(tabular_net(), calls=1)
    peak = peak_traced(lambda: xk.explain(model, ROW, method="lime", target=0, samples=4_000_000))
    assert peak < 8 * MiB


def test_lime_result_does_not_depend_on_the_chunk(monkeypatch):
    x = np.random.default_rng(3).normal(size=9).astype(np.float32)
    whole = xk.explain(tabular_net(9), x, method="lime", target=2, samples=700, seed=4)
    z = lime_module.lime_coalitions(9, 700, np.random.default_rng(4))
    chunks = list(lime_module.lime_coalition_chunks(9, 700, np.random.default_rng(4), 37))
    assert np.array_equal(np.concatenate(chunks), z) and max(len(c) for c in chunks) == 37
    monkeypatch.setattr(lime_module, "coalition_rows", lambda m: 37, raising=False)
    chunked = xk.explain(tabular_net(9), x, method="lime", target=2, samples=700, seed=4)
    np.testing.assert_allclose(chunked.component_values, whole.component_values, rtol=1e-9)
    assert chunked.info["r2"] == pytest.approx(whole.info["r2"], rel=1e-9)
    assert chunked.info["intercept"] == pytest.approx(whole.info["intercept"], rel=1e-9)


def test_ridge_moments_over_chunks_equal_one_fit_on_all_rows():
    rng = np.random.default_rng(5)
    z = rng.random((500, 6)) < 0.5
    y, w = 40 + rng.normal(size=500), rng.random(500)  # far from 0: no cancellation allowed
    whole = coalitions_module.weighted_ridge(z, y, w, alpha=0.5)
    moments = coalitions_module.RidgeMoments(6)
    for start in range(0, 500, 64):
        moments.add(z[start : start + 64], y[start : start + 64], w[start : start + 64])
    coef, intercept, r2 = moments.solve(alpha=0.5)
    np.testing.assert_allclose(coef, whole[0], rtol=1e-9, atol=1e-12)
    assert intercept == pytest.approx(whole[1], rel=1e-12)
    assert r2 == pytest.approx(whole[2], rel=1e-9)


def test_tabular_lime_draws_rows_in_blocks(monkeypatch):
    from xaikit.attribution import lime_tabular

    training = np.random.default_rng(6).normal(size=(50, 4))
    args = dict(method="lime", sampling="training", baseline=training, samples=300, target=0)
    whole = xk.explain(tabular_net(), ROW, **args)
    monkeypatch.setattr(lime_tabular, "_BLOCK_ELEMENTS", 4 * 1000, raising=False)
    assert np.array_equal(xk.explain(tabular_net(), ROW, **args).values, whole.values)
    # blocks of 40 rows
    monkeypatch.setattr(lime_tabular, "_BLOCK_ELEMENTS", 4 * 40, raising=False)
    model = Stopping(tabular_net(), calls=2)  # explain's forward, then the first block
    peak = peak_traced(lambda: xk.explain(model, ROW, **{**args, "samples": 4_000_000}))
    assert peak < 4 * MiB
    blocked = xk.explain(tabular_net(), ROW, **{**args, "samples": 2000})
    assert np.isfinite(blocked.values).all() and 0 <= blocked.info["r2"] <= 1


def linear_table(features: int):
    w = np.random.default_rng(7).normal(size=features)
    return w, lambda rows: np.stack([rows @ w, -(rows @ w)], axis=1)


def test_kernel_shap_enumerates_every_coalition_in_chunks(monkeypatch):
    # Before: 2^18 coalitions as int64 bits, bools and float64 (> 80 MB) at once.
    monkeypatch.setattr(kernel_shap_module, "_CODES_PER_CHUNK", 4096, raising=False)
    monkeypatch.setattr(coalitions_module, "chunk_size", lambda *a, **k: 4096)
    w, f = linear_table(18)
    x, base = np.ones(18), np.zeros(18)
    result = {}
    peak = peak_traced(
        lambda: result.setdefault(
            "e",
            xk.explain(f, x, method="kernel_shap", target=0, baseline=base, samples=2**18),
        )
    )
    e = result["e"]
    assert e.info["exact"] and e.info["samples"] == 2**18
    np.testing.assert_allclose(e.component_values, w, rtol=1e-9, atol=1e-9)  # w (x - base)
    assert peak < 24 * MiB


def test_kernel_shap_refuses_sampled_counts_beyond_the_memory_limit():
    # Before: 10**10 distinct coalitions were drawn and held until memory ran out.
    model = Stopping(tabular_net(40), calls=1)
    with pytest.raises(ValueError, match=r"^samples: 10,000,000,000 distinct coalitions .*GiB"):
        xk.explain(model, np.zeros(40, np.float32), method="kernel_shap", samples=10**10)


def test_kernel_shap_fits_its_surrogate_on_a_bounded_number_of_pairs(monkeypatch):
    # Before: the kernel matrix was (pairs x pairs), 3 GB at 20,000 samples.
    shapes = []
    product_kernel = kernel_shap_module.product_kernel

    def recording(a, b, c):
        shapes.append((len(a), len(b)))
        return product_kernel(a, b, c)

    monkeypatch.setattr(kernel_shap_module, "product_kernel", recording)
    monkeypatch.setattr(kernel_shap_module, "_SURROGATE_PAIRS", 128, raising=False)
    f = lambda rows: np.stack([rows[:, 0] * rows[:, 1] + np.sin(rows[:, 2:]).sum(1)], 1)  # noqa: E731
    x, base = np.ones(12), np.zeros(12)
    e = xk.explain(f, x, method="kernel_shap", target=0, baseline=base, samples=2000)
    assert max(a * b for a, b in shapes) <= 128 * 128
    exact = xk.explain(f, x, method="kernel_shap", target=0, baseline=base, samples=2**12)
    assert abs(e.info["efficiency_gap"]) < 1e-9
    np.testing.assert_allclose(e.component_values, exact.component_values, atol=0.02)


def test_kernel_shap_pairs_are_drawn_in_chunks(monkeypatch):
    # the random draws of a large stratum come in chunks: the same pairs as one draw
    reps, weights = kernel_shap_module.shapley_pairs(40, 3000, np.random.default_rng(8))
    monkeypatch.setattr(kernel_shap_module, "_CODES_PER_CHUNK", 100, raising=False)
    again = kernel_shap_module.shapley_pairs(40, 3000, np.random.default_rng(8))
    assert np.array_equal(again[0], reps) and np.array_equal(again[1], weights)


def test_kernel_shap_normal_equations_over_chunks_equal_one_solve_on_all_rows():
    rng = np.random.default_rng(9)
    z = rng.random((600, 7)) < 0.5
    y, w = 25 + rng.normal(size=600), rng.random(600)
    whole = kernel_shap_module.constrained_wls(z, w, y, total=3.0)
    normal = kernel_shap_module.NormalEquations(7)
    for start in range(0, 600, 64):
        normal.add(z[start : start + 64], w[start : start + 64], y[start : start + 64])
    np.testing.assert_allclose(normal.solve(v0=0.0, total=3.0), whole, rtol=1e-9, atol=1e-12)


def test_kernel_shap_surrogate_in_chunks_equals_its_kernel_matrix_times_the_weights():
    rng = np.random.default_rng(10)
    a, b = (np.where(rng.random((n, 9)) < 0.5, 1.0, -1.0) for n in (300, 40))
    c, weights = rng.uniform(0.01, 0.9, 9), rng.normal(size=40)
    whole = kernel_shap_module.product_kernel(a, b, c) @ weights
    chunks = [
        kernel_shap_module.product_kernel_times(a[s : s + 64], b, c, weights)
        for s in range(0, 300, 64)
    ]
    np.testing.assert_allclose(np.concatenate(chunks), whole, rtol=1e-12, atol=1e-15)


def nonlinear_table(features: int):
    w = np.random.default_rng(11).normal(size=features)
    return lambda rows: np.stack([np.tanh(rows @ w) + rows[:, 0] * rows[:, 1], rows @ w], axis=1)


BACKGROUND = np.random.default_rng(12).normal(size=(50, 20))
# method, its options, and its chunk size set small: (module, name, value)
FULL_RUNS = {
    "kernel_shap": (
        "kernel_shap", {"baseline": BACKGROUND[:10]},
        (coalitions_module, "chunk_size", lambda *args, **kwargs: 2048),
    ),
    "lime": ("lime", {}, (lime_module, "coalition_rows", lambda m: 2048)),
    "tabular lime": (
        "lime", {"sampling": "training", "baseline": BACKGROUND},
        (lime_tabular_module, "_BLOCK_ELEMENTS", 2048 * 20),
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", FULL_RUNS)
def test_a_full_run_at_50_000_samples_holds_little_more_than_at_5_000(case, monkeypatch):
    # Issue 20: 16,000 samples once took 2.4 GB for one row. With small chunks, what grows with
    # the samples is at most KernelSHAP's distinct coalitions (their bits, scores and weights,
    # 48 + M bytes each); one (samples, M) float64 array would be 7.6 MiB here.
    method, options, chunk = FULL_RUNS[case]
    monkeypatch.setattr(*chunk)
    f, x = nonlinear_table(20), np.random.default_rng(13).normal(size=20)

    def peak(samples):
        return peak_traced(
            lambda: xk.explain(f, x, method=method, target=0, samples=samples, **options)
        )

    peak(5_000)  # the model's batch-size search (once per model) is not what is measured
    assert peak(50_000) - peak(5_000) < 45_000 * (48 + 20) * 2


@pytest.mark.parametrize("case", FULL_RUNS)
def test_a_full_run_at_50_000_samples_stays_within_its_chunks(case):
    # Default chunk sizes: 64 MiB of float32 inputs per chunk (float64 for a NumPy callable),
    # KernelSHAP's surrogate fitted on at most 2048 pairs (a 32 MiB kernel matrix).
    method, options, _ = FULL_RUNS[case]
    f, x = nonlinear_table(20), np.random.default_rng(13).normal(size=20)
    run = dict(method=method, target=0, **options)
    xk.explain(f, x, samples=5_000, **run)  # the model's batch-size search, once per model
    assert peak_traced(lambda: xk.explain(f, x, samples=50_000, **run)) < 256 * MiB


# ---------------------------------------------------------------------- metrics and others


def test_infidelity_reduces_its_samples_as_they_come(monkeypatch):
    # Before: every score and every I . e were kept to the end (~15 MB for 300,000).
    e = xk.explain(tabular_net(), ROW, method="saliency", target=0)
    monkeypatch.setattr(infidelity_module, "chunk_size", lambda x: 5000)
    exact = {
        n: xk.metrics.infidelity(tabular_net(), ROW, e, samples=3000, normalize=n)
        for n in (False, True)
    }
    monkeypatch.setattr(infidelity_module, "chunk_size", lambda x: 700)
    # running sums from here on
    monkeypatch.setattr(infidelity_module, "_KEPT", 1000, raising=False)
    for normalize in (False, True):
        got = xk.metrics.infidelity(tabular_net(), ROW, e, samples=3000, normalize=normalize)
        assert got == pytest.approx(exact[normalize], rel=1e-9)
    monkeypatch.setattr(infidelity_module, "chunk_size", lambda x: 10_000)
    peak = peak_traced(lambda: xk.metrics.infidelity(tabular_net(), ROW, e, samples=300_000))
    assert peak < 4 * MiB


@pytest.mark.parametrize("metric", ["max_sensitivity", "local_lipschitz"])
def test_robustness_metrics_explain_their_perturbations_in_chunks(metric, monkeypatch):
    # Before: all perturbations drawn at once, (samples, *x.shape) float64.
    e = xk.explain(tabular_net(), ROW, method="saliency", target=0)
    function = getattr(xk.metrics, metric)
    with pytest.raises(RunStoppedError):
        function(Stopping(tabular_net()), ROW, "saliency", samples=2**40, explanation=e, target=0)
    whole = function(tabular_net(), ROW, "saliency", samples=50, explanation=e)
    monkeypatch.setattr(robustness_module, "chunk_size", lambda *a, **k: 7)
    chunked = function(tabular_net(), ROW, "saliency", samples=50, explanation=e)
    assert chunked == pytest.approx(whole, rel=1e-5)  # batches of 7: float32 rounding only


def test_spsa_attack_queries_are_explained_in_chunks():
    # Before: (queries, *x.shape) directions and 2 * queries explanations at once.
    net = image_net()
    target = int(xk.Model(net).scores(IMAGE[None]).argmax())
    e = xk.explain(net, IMAGE, method="saliency", target=target)
    with pytest.raises(RunStoppedError):
        xk.metrics.attack_explanation(
            Stopping(net, calls=1), IMAGE, "saliency", explanation=e, target=target,
            estimator="spsa", queries=2**40, steps=1,
        )  # fmt: skip


def test_permutation_importance_in_chunks_equals_the_whole(monkeypatch):
    X = np.random.default_rng(9).normal(size=(30, 4)).astype(np.float32)
    whole = xk.permutation_importance(tabular_net(), X, n_repeats=40)
    from xaikit import importance

    # three repeats per model call
    monkeypatch.setattr(importance, "CHUNK_BYTES", X.nbytes * 3, raising=False)
    assert np.array_equal(
        xk.permutation_importance(tabular_net(), X, n_repeats=40).importances, whole.importances
    )


def test_permutation_importance_refuses_a_result_beyond_the_memory_limit():
    # Before: np.repeat(X, 10**9) copies of the table.
    X = np.random.default_rng(9).normal(size=(30, 4)).astype(np.float32)
    with pytest.raises(ValueError, match=r"^n_repeats: 1,000,000,000 repeats of 4 features need"):
        xk.permutation_importance(tabular_net(), X, n_repeats=10**9)


def test_surrogate_refuses_samples_beyond_the_memory_limit():
    # Before: 10**10 rows were drawn until memory ran out.
    X = np.random.default_rng(10).normal(size=(40, 4))
    with pytest.raises(ValueError, match=r"^samples: 10,000,000,000 rows of 4 features .*GiB"):
        xk.surrogate(tabular_net(), X, samples=10**10)


def test_the_memory_limit_can_be_raised(monkeypatch):
    X = np.random.default_rng(10).normal(size=(40, 4))
    monkeypatch.setattr(validation, "_memory_limit", None)
    monkeypatch.setenv("XAIKIT_MEMORY_LIMIT", "1 MiB")
    assert xk.memory_limit() == MiB
    with pytest.raises(
        ValueError, match=r"^samples: .* at most [\d,]+ fit in the memory limit of 1 MiB"
    ):
        xk.surrogate(tabular_net(), X, samples=20_000)
    xk.set_memory_limit("64MiB")
    try:
        assert xk.surrogate(tabular_net(), X, samples=20_000).info["fitted_rows"] == 20_030
    finally:
        xk.set_memory_limit(None)
    assert xk.memory_limit() == MiB  # the environment again
    monkeypatch.delenv("XAIKIT_MEMORY_LIMIT")
    assert xk.memory_limit() == validation.DEFAULT_MEMORY_LIMIT


@pytest.mark.parametrize(
    ("limit", "error"), [("lots", ValueError), (1.5, TypeError)], ids=["no size", "float"]
)
def test_set_memory_limit_refuses_a_bad_limit(monkeypatch, limit, error):
    monkeypatch.setattr(validation, "_memory_limit", None)
    with pytest.raises(error, match=r"^limit: "):
        xk.set_memory_limit(limit)


def test_visualize_in_blocks_equals_the_whole(monkeypatch):
    net = image_net()
    kw = dict(steps=12, input_shape=(1, 8, 8), lr=0.1)
    whole = xk.visualize(net, xk.objectives.logit(1), **kw)
    # one step's draws per block
    monkeypatch.setattr(render_module, "_DRAW_BLOCK", 5, raising=False)
    monkeypatch.setattr(render_module, "_HISTORY_BLOCK", 5, raising=False)
    blocked = xk.visualize(net, xk.objectives.logit(1), **kw)
    assert np.array_equal(blocked.images, whole.images)
    assert np.array_equal(blocked.history, whole.history) and whole.history.shape == (12, 1)


@pytest.mark.parametrize(
    ("options", "pattern"),
    [
        # Before: (items, 2**40, draws) transform draws were made up front.
        ({"steps": 2**40}, r"^steps: 1,099,511,627,776 steps of 1 item"),
        ({"batch": 10**12}, r"^batch: "),
    ],
    ids=["steps", "batch"],
)
def test_visualize_refuses_a_history_beyond_the_limit(options, pattern):
    with pytest.raises(ValueError, match=pattern):
        xk.visualize(image_net(), xk.objectives.logit(1), input_shape=(1, 8, 8), **options)


def test_counts_beyond_2_to_the_40_are_refused_with_their_name():
    # Before: OverflowError from torch for 10**20 samples, a hang or MemoryError elsewhere.
    for method in ("smoothgrad", "rise", "lime", "kernel_shap"):
        with pytest.raises(ValueError, match=r"^samples: expected at most 2\*\*40"):
            xk.explain(tabular_net(), ROW, method=method, target=0, samples=10**20)


# ---------------------------------------------------------------------- the smaller cases


def test_linear_surrogate_alpha_names_alpha():
    # Before: scikit-learn's message about C.
    X = np.random.default_rng(10).normal(size=(40, 4))
    with pytest.raises(ValueError, match=r"^alpha: expected a positive number, got -1"):
        xk.surrogate(tabular_net(), X, kind="linear", alpha=-1)


@pytest.mark.parametrize(
    ("names", "error", "pattern"),
    [
        # Before: three names for a binary model were accepted (and a rule could name the third).
        (["a", "b", "c"], ValueError, r"^class_names: expected 2 names .*got 3"),
        ("ab", TypeError, r"^class_names: "),
    ],
    ids=["one name too many", "a string"],
)
def test_surrogate_class_names_must_match_the_outputs(names, error, pattern):
    X = np.random.default_rng(10).normal(size=(40, 4))
    with pytest.raises(error, match=pattern):
        xk.surrogate(tabular_net(outputs=2), X, class_names=names)


def test_surrogate_keeps_class_names_that_match_the_outputs():
    X = np.random.default_rng(10).normal(size=(40, 4))
    s = xk.surrogate(tabular_net(outputs=2), X, class_names=["no", "yes"])
    assert s.class_names == ["no", "yes"]


def test_sanity_check_threshold_nan_names_threshold():
    # Before: a NaN threshold made every check fail silently (mean < nan is False).
    with pytest.raises(ValueError, match=r"^threshold: expected a finite number, got nan"):
        xk.sanity_check(image_net(), IMAGE, "saliency", threshold=float("nan"))


@pytest.mark.parametrize(
    ("call", "pattern"),
    [
        (lambda t: xk.explain(tabular_net(), ROW, method="saliency", target=t),
         r"^target: expected class indices in \[0, "),
        (lambda t: xk.metrics.deletion(tabular_net(), ROW, np.ones(4), target=t), r"^target: "),
    ],
    ids=["explain", "deletion"],
)  # fmt: skip
@pytest.mark.parametrize("target", [10**20, -(10**20)])
def test_a_target_beyond_int64_is_a_target_error(target, call, pattern):
    # Before: OverflowError: Python int too large to convert to C long.
    with pytest.raises(ValueError, match=pattern):
        call(target)


# ---------------------------------------------------------------------- the sweep

NET, X40 = tabular_net(), np.random.default_rng(11).normal(size=(40, 4)).astype(np.float32)
E = xk.explain(NET, ROW, method="saliency", target=0)


def _explain(**params):
    return lambda: xk.explain(NET, ROW, target=0, **params)


# Each case gave another exception type, a message without the name, or no error before.
SWEEP = [
    (lambda: xk.surrogate(NET, X40, max_depth=2**41), ValueError, "max_depth"),
    # seeds: negative, float, bool, too large for the library that takes them
    (_explain(method="smoothgrad", seed=-1), ValueError, "seed"),
    (_explain(method="smoothgrad", seed=1.5), TypeError, "seed"),
    (_explain(method="expected_gradients", baseline=X40, seed=True), TypeError, "seed"),
    (_explain(method="rise", seed=-2), ValueError, "seed"),
    (_explain(method="lime", seed=-2), ValueError, "seed"),
    (lambda: xk.metrics.infidelity(NET, ROW, E, seed=-1), ValueError, "seed"),
    (lambda: xk.metrics.max_sensitivity(NET, ROW, seed=float("nan")), TypeError, "seed"),
    (lambda: xk.permutation_importance(NET, X40, seed=-1), ValueError, "seed"),
    (lambda: xk.surrogate(NET, X40, seed=2**40), ValueError, "seed"),
    (lambda: xk.text.make_sentences(5, seed=-1), ValueError, "seed"),
    # numbers: NaN, infinity, negative, bool, str
    (_explain(method="smoothgrad", noise=True), TypeError, "noise"),
    (_explain(method="integrated_gradients", tolerance=float("nan")), ValueError, "tolerance"),
    (_explain(method="integrated_gradients", baseline="x"), TypeError, "baseline"),
    (_explain(method="occlusion", baseline=True), TypeError, "baseline"),
    (
        lambda: xk.metrics.insertion(image_net(), IMAGE, np.ones((8, 8)), sigma=float("inf")),
        ValueError,
        "sigma",
    ),
    (
        lambda: xk.metrics.noisy_linear_imputation(IMAGE, np.eye(8, dtype=bool), noise=-1),
        ValueError,
        "noise",
    ),
    (lambda: xk.metrics.road(image_net(), IMAGE, np.ones((8, 8)), seed=-1), ValueError, "seed"),
    (
        lambda: xk.metrics.road(image_net(), IMAGE, np.ones((8, 8)), percentages=[True]),
        TypeError,
        "percentages",
    ),
    (lambda: xk.metrics.max_sensitivity(NET, ROW, radius="big"), TypeError, "radius"),
    (lambda: xk.metrics.attack_explanation(NET, ROW, beta=-1.0), ValueError, "beta"),
    (
        lambda: xk.metrics.attack_explanation(NET, ROW, step_size=float("inf")),
        ValueError,
        "step_size",
    ),
    (lambda: xk.surrogate(NET, X40, test_size="a quarter"), TypeError, "test_size"),
    (lambda: xk.fidelity_curve(NET, X40, settings=[2, 2.5]), TypeError, "settings"),
    (lambda: xk.visualize(image_net(), xk.objectives.logit(0), lr=float("inf")), ValueError, "lr"),
    (
        lambda: xk.sanity_check(image_net(), IMAGE, "saliency", threshold="high"),
        TypeError,
        "threshold",
    ),
    (lambda: E.top(k=2.5), TypeError, "k"),
    (lambda: E.plot(top_k=0), ValueError, "top_k"),
    (lambda: xk.text.Tokenizer.from_words(["a", "b"], max_length=1.5), TypeError, "max_length"),
    (lambda: xk.text.Tokenizer.from_words(["a", "b"], max_length=2), ValueError, "max_length"),
]


@pytest.mark.parametrize(
    ("call", "error", "name"), SWEEP, ids=[f"{c[2]}-{i}" for i, c in enumerate(SWEEP)]
)
def test_bad_numbers_name_their_parameter(call, error, name):
    with pytest.raises(error, match=rf"^{name}: "):
        call()


def _train_tiny_cnn(**options):
    from xaikit import datasets

    return datasets.train_cnn(np.zeros((2, 1, 28, 28), np.float32), np.array([0, 1]), **options)


def _make_shapes(*args, **options):
    from xaikit import datasets

    return datasets.make_shapes(*args, **options)


@pytest.mark.parametrize(
    ("call", "error", "pattern"),
    [
        (lambda: _make_shapes(4, noise=-1.0), ValueError, r"^noise: "),
        (lambda: _make_shapes(4, size=10**6), ValueError, r"^size: "),
        (lambda: _make_shapes(10**9), ValueError, r"^n: .* images of 32 x 32 pixels need"),
        (lambda: _train_tiny_cnn(lr=-1.0), ValueError, r"^lr: "),
        (lambda: _train_tiny_cnn(epochs=1.5), TypeError, r"^epochs: "),
    ],
    ids=["make_shapes noise", "make_shapes size", "make_shapes n", "train_cnn lr",
         "train_cnn epochs"],
)  # fmt: skip
def test_datasets_check_their_numbers(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


def test_check_memory_message_gives_the_estimate_with_what_fits(monkeypatch):
    monkeypatch.setattr(validation, "_memory_limit", 4 * 2**30)
    with pytest.raises(ValueError) as caught:
        validation.check_memory(10**9, 784, name="samples", what="masks of 784 components")
    message = str(caught.value)
    assert message.startswith("samples: 1,000,000,000 masks of 784 components need ~730 GiB")
    assert f"at most {4 * 2**30 // 784:,} fit" in message and "set_memory_limit" in message
    validation.check_memory(1000, 784, name="samples", what="masks")  # fits: no error


def test_check_number_accepts_an_int_in_range():
    assert math.isclose(validation.check_number(2, name="a", low=0), 2.0)
