"""Every kind of figure xaikit draws, on small inputs chosen to crowd it, has no overlaps.

The check (tests/figure_check.py) runs after every test of the suite on every figure it drew
(tests/conftest.py); this module makes sure each plot of the package is drawn at least once,
with long names, many tokens and many items, and asserts the check's verdict explicitly. The
demo's figures are checked in tests/test_report_browser.py.
"""

from __future__ import annotations

import numpy as np
import pytest

import xaikit as xk
from _models import ConvReluLinear
from figure_check import assert_no_overlaps, figure_problems, recording_figures
from xaikit import metrics
from xaikit._plotting import new_figure
from xaikit.explanation import Explanation, plot_token_maps
from xaikit.report import Page
from xaikit.report.local import add_prediction, add_scorecard, scorecard
from xaikit.text.attention import Attention
from xaikit.text.embeddings import WordEmbeddings

LONG = "mean concave points of the nucleus (standard error)"


@pytest.fixture(scope="module")
def net_and_data():
    rng = np.random.default_rng(0)
    X = rng.random((40, 1, 8, 8), dtype=np.float32)
    return ConvReluLinear().eval(), X, np.arange(40) % 4


def _table_model(rows: np.ndarray):
    w = np.linspace(-1, 1, rows.shape[1])

    def model(x):
        p = 1 / (1 + np.exp(-(x - 0.5) @ w * 4))
        return np.stack([1 - p, p], axis=1)

    return model


@pytest.mark.overlapping_figures
def test_the_check_finds_overlapping_texts_or_colour_bars():
    fig = new_figure((3, 2), layout=None)
    ax = fig.add_axes((0.1, 0.1, 0.8, 0.8))
    ax.text(0.5, 0.5, "first words")
    ax.text(0.52, 0.5, "second words")
    cax = fig.add_axes((0.5, 0.2, 0.3, 0.1))
    fig.colorbar(ax.imshow(np.eye(2)), cax=cax, orientation="horizontal")
    problems = figure_problems(fig)
    assert "text 'first words' overlaps text 'second words'" in problems
    assert any(p.startswith("a colour bar overlaps axes") for p in problems)


def test_the_check_passes_a_tidy_figure():
    tidy = new_figure((3, 2))
    tidy.add_subplot().text(0.1, 0.5, "alone")
    assert figure_problems(tidy) == []


def test_explanation_plots(net_and_data):
    net, X, _ = net_and_data
    for method in ("saliency", "integrated_gradients"):  # unsigned and signed maps
        assert_no_overlaps(xk.explain(net, X[0], method=method).plot(), where=method)
    assert_no_overlaps(xk.explain(net, X[:6], method="saliency", batch=True).plot(), where="grid")
    rows = np.random.default_rng(1).random((30, 24))
    names = [f"{LONG} {i}" for i in range(24)]
    e = xk.explain(_table_model(rows), rows[0], method="occlusion", feature_names=names)
    assert_no_overlaps(e.plot(), where="tabular")


def _token_explanation(tokens: list[str], seed: int = 0) -> Explanation:
    v = np.random.default_rng(seed).normal(size=len(tokens))
    return Explanation(
        values=v, x=np.arange(len(tokens)), target=1, prediction=np.array([0.3, 0.7]),
        method="lime", tokens=tokens,
    )  # fmt: skip


def test_token_maps_of_long_texts_wrap_without_overlaps():
    words = ["the", "plot", "was", "not", "nearly", "as", "boring", "as", "the", "reviews"]
    long = _token_explanation(words * 6)  # wraps over several lines
    fig = long.plot()
    assert_no_overlaps(fig, where="one long text")
    assert len(fig.axes[0].texts) == len(words) * 6  # every token
    items = [(_token_explanation(words[: 4 + 3 * k], seed=k), f"method {k}") for k in range(6)]
    items.append((long, "integrated_gradients · target 1 (a long title)"))
    assert_no_overlaps(plot_token_maps(items), where="seven token maps")
    batch = Explanation(
        values=np.ones((3, 5)), x=np.ones((3, 5), dtype=np.int64), target=np.array([0, 1, 0]),
        prediction=np.full((3, 2), 0.5), method="occlusion", batch=True,
    )  # fmt: skip
    assert_no_overlaps(batch.plot(), where="a batch of token ids")
    ax = new_figure((8, 2)).add_subplot()  # the user's own axes
    assert_no_overlaps(_token_explanation(words).plot(ax=ax), where="given axes")


def test_metric_plots(net_and_data):
    net, X, _ = net_and_data
    e = xk.explain(net, X[0], method="saliency")
    assert_no_overlaps(metrics.deletion(net, X[0], e).plot(), where="deletion")
    c = xk.compare(net, X[0], methods=["saliency", "occlusion", "integrated_gradients"])
    assert_no_overlaps(c.plot(), where="comparison")
    attack = metrics.attack_explanation(net, X[0], "saliency", epsilon=0.05, steps=2, bounds=(0, 1))
    assert_no_overlaps(attack.plot(), where="attack")
    assert_no_overlaps(xk.sanity_check(net, X[0], "saliency").plot(), where="sanity")


def test_representation_plots(net_and_data):
    net, X, y = net_and_data
    p = xk.project_layers(net, X, layers=["conv", "relu", "fc"], labels=y)
    assert_no_overlaps(p.plot(), where="projections")
    assert_no_overlaps(p["fc"].plot(), where="one projection")
    assert_no_overlaps(xk.probe(net, X, y, layers=["conv", "fc"]).plot(), where="probe")
    r = xk.reconstruct(net, X, layers=["conv", "fc"], epochs=1, examples=4)
    assert_no_overlaps(r.plot(), where="reconstruction")


def test_featureviz_plots(net_and_data):
    net, X, _ = net_and_data
    v = xk.visualize(net, xk.objectives.channels("conv"), steps=2, input_shape=(1, 8, 8))
    assert_no_overlaps(v.plot(), where="visualisation")
    assert_no_overlaps(xk.filter_activations(net, X[:3], layer="conv").plot(), where="filters")


def test_audit_plot(net_and_data):
    net, X, y = net_and_data
    a = xk.audit(net, X, labels=y, method="saliency")
    assert_no_overlaps(a.plot(), where="audit")


@pytest.fixture(scope="module")
def long_named_table():
    rows = np.random.default_rng(2).random((200, 12))
    return _table_model(rows), rows, [f"{LONG} {i}" for i in range(12)]


def test_surrogate_plots(long_named_table):
    model, rows, names = long_named_table
    classes = ["benign tissue", "malignant tissue"]
    for kind, depth in (("tree", 4), ("rules", 3), ("linear", 3)):
        s = xk.surrogate(
            model, rows, kind=kind, max_depth=depth, feature_names=names, class_names=classes
        )
        assert_no_overlaps(s.plot(), where=kind)
    assert_no_overlaps(xk.fidelity_curve(model, rows, settings=[1, 2, 3]).plot(), where="curve")


def test_importance_plot(long_named_table):
    model, rows, names = long_named_table
    imp = xk.permutation_importance(model, rows, model(rows).argmax(1), feature_names=names)
    assert_no_overlaps(imp.plot(), where="importance")


def test_text_result_plots():
    rng = np.random.default_rng(3)
    tokens = ["[CLS]", "the", "movie", "was", "not", "good", "at", "all", ".", "[SEP]"]
    logits = rng.normal(size=(2, 3, len(tokens), len(tokens)))
    weights = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    a = Attention(weights=weights, tokens=tokens, text="the movie was not good at all.")
    for fig in (a.plot(), a.plot(layer=1), a.plot(layer=0, head=2), a.plot_rollout()):
        assert_no_overlaps(fig, where="attention")
    sentences = [f"sentence number {i} about an apple, long enough to crowd" for i in range(6)]
    we = WordEmbeddings(
        vectors=rng.normal(size=(3, 6, 8)), sentences=sentences, word="apple",
        positions=[[3]] * 6, groups=np.array(["fruit"] * 3 + ["company"] * 3),
    )  # fmt: skip
    assert_no_overlaps(we.plot_distances(2), where="distances")
    assert_no_overlaps(we.plot_projection(), where="projection")


def test_report_figures(net_and_data):
    net, X, _ = net_and_data
    page = Page("figures")
    page.section("prediction", "Prediction")
    names = [f"class with a long name {k}" for k in range(4)]
    with recording_figures() as made:
        add_prediction(page, xk.Model(net), X[0], name="x.npy[0]", class_names=names)
        results = scorecard(net, X[0], methods={"saliency": {}, "occlusion": {}}, sanity=False)
        add_scorecard(page, results)
    assert len(made) >= 2
    for fig in made:
        assert_no_overlaps(fig, where="report")
