"""Global surrogates and permutation importance on the breast-cancer table."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.inspection import permutation_importance as sk_permutation_importance
from sklearn.linear_model import LinearRegression
from torch import nn

import xaikit as xk
from xaikit.datasets import load_breast_cancer_table


class TableMLP(nn.Module):
    """An MLP with its own standardisation, so it takes the raw table."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, hidden: int = 32) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))
        self.net = nn.Sequential(
            nn.Linear(len(mean), hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, 2),
        )  # fmt: skip

    def forward(self, x):
        return self.net((x - self.mean) / self.std)


@pytest.fixture(scope="module")
def table_mlp():
    train = load_breast_cancer_table("train")
    torch.manual_seed(0)
    net = TableMLP(train.X.mean(0), train.X.std(0))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2, weight_decay=1e-3)
    X, y = torch.tensor(train.X, dtype=torch.float32), torch.tensor(train.y)
    for _ in range(200):
        opt.zero_grad()
        nn.functional.cross_entropy(net(X), y).backward()
        opt.step()
    return net.eval()


@pytest.mark.parametrize("hidden, seed", [((100,), 4), ((32, 16), 0)])
def test_depth4_tree_mimics_scikit_learn_mlps(hidden, seed):
    # (100,) seed 4 was the hardest of 15 MLPs for the earlier, wider sampling (0.909).
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train, table = load_breast_cancer_table("train"), load_breast_cancer_table()
    mlp = make_pipeline(
        StandardScaler(), MLPClassifier(hidden, max_iter=1000, random_state=seed)
    ).fit(train.X, train.y)
    s = xk.surrogate(mlp.predict_proba, table.X, kind="tree", max_depth=4)
    assert s.fidelity >= 0.95


def test_depth4_tree_mimics_an_mlp(table_mlp):
    table = load_breast_cancer_table()
    s = xk.surrogate(
        table_mlp, table.X, kind="tree", max_depth=4,
        feature_names=table.feature_names, class_names=table.class_names,
    )  # fmt: skip
    assert s.fidelity >= 0.95
    assert s.complexity["depth"] <= 4 and s.complexity["leaves"] <= 16
    text = s.rules()
    assert any(name in text for name in table.feature_names)
    assert "class: malignant" in text and "class: benign" in text  # names, not indices
    # predictions agree with the fitted fidelity on the same held-out rows
    assert s.predict(table.X).shape == (len(table.X),)
    rules = xk.surrogate(
        table_mlp,
        table.X,
        kind="rules",
        max_depth=3,
        feature_names=table.feature_names,
        class_names=table.class_names,
    )
    assert rules.rules().startswith("IF ") and "THEN malignant" in rules.rules()
    assert s.plot() is not None and rules.plot() is not None


def test_sparse_linear_surrogate(table_mlp):
    table = load_breast_cancer_table()
    s = xk.surrogate(
        table_mlp, table.X, kind="linear", alpha=0.02, feature_names=table.feature_names
    )
    assert s.fidelity >= 0.9
    assert 0 < s.complexity["nonzero_weights"] < len(table.feature_names)
    assert s.rules().startswith("score for class 1 over class 0 = ")
    assert any(n in s.rules() for n in table.feature_names)


def test_regression_surrogate_reports_r2():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 4))
    reg = LinearRegression().fit(X, X @ np.array([2.0, -1.0, 0.0, 0.5]))
    s = xk.surrogate(lambda b: reg.predict(b)[:, None], X, kind="linear", alpha=0.001)
    assert s.task == "regression" and s.fidelity > 0.99
    tree = xk.surrogate(lambda b: reg.predict(b)[:, None], X, kind="tree", max_depth=6)
    assert 0.5 < tree.fidelity < 1.0


def test_fidelity_curve_rises_with_depth(table_mlp):
    table = load_breast_cancer_table()
    curve = xk.fidelity_curve(table_mlp, table.X, settings=[1, 2, 4, 8])
    assert curve.complexity == sorted(curve.complexity)
    assert curve.fidelity[-1] > curve.fidelity[0]
    assert curve.plot() is not None


def test_permutation_importance_agrees_with_scikit_learn():
    train, test = load_breast_cancer_table("train"), load_breast_cancer_table("test")
    gb = GradientBoostingClassifier(random_state=0).fit(train.X, train.y)
    ours = xk.permutation_importance(
        gb, test.X, test.y, n_repeats=30, feature_names=test.feature_names
    )
    theirs = sk_permutation_importance(gb, test.X, test.y, n_repeats=30, random_state=0)
    assert np.corrcoef(ours.importances_mean, theirs.importances_mean)[0, 1] > 0.95
    np.testing.assert_allclose(ours.importances_mean, theirs.importances_mean, atol=0.01)
    assert ours.baseline_score == pytest.approx(gb.score(test.X, test.y))
    assert ours.ranking()[0][0] in test.feature_names
    assert ours.plot() is not None


def test_permutation_importance_finds_the_only_used_feature():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 5)).astype(np.float32)

    def model(b):
        return np.stack([b[:, 2], -b[:, 2]], axis=1)

    imp = xk.permutation_importance(model, X, n_repeats=3, seed=0)
    assert imp.scoring == "agreement with the model"
    assert np.argmax(imp.importances_mean) == 2
    np.testing.assert_array_equal(np.delete(imp.importances_mean, 2), 0)


@pytest.mark.parametrize(
    ("call", "error", "pattern"),
    [
        (lambda X: xk.surrogate(lambda b: b[:, :2], X, kind="forest"), ValueError, "kind:"),
        (lambda X: xk.surrogate(lambda b: b[:, :2], X, max_depth=0), ValueError, "max_depth:"),
        (
            lambda X: xk.surrogate(lambda b: b[:, :2], X, feature_names=["a"]),
            ValueError,
            "feature_names: expected 3",
        ),
        (lambda X: xk.surrogate(lambda b: b[:, :2], X[:, 0]), ValueError, "X: expected a table"),
        (
            lambda X: xk.permutation_importance(lambda b: b[:, :2], X, y=[0, 1]),
            ValueError,
            "y: expected 20 labels",
        ),
        (
            lambda X: xk.permutation_importance(lambda b: b[:, :2], X, n_repeats=0),
            ValueError,
            "n_repeats:",
        ),
    ],
)
def test_bad_input_is_named(call, error, pattern):
    X = np.random.default_rng(0).normal(size=(20, 3))
    with pytest.raises(error, match=pattern):
        call(X)


@pytest.mark.parametrize("method", ["lime", "kernel_shap"])
def test_tabular_local_methods_on_gradient_boosting_predict_proba(method):
    train, test = load_breast_cancer_table("train"), load_breast_cancer_table("test")
    gb = GradientBoostingClassifier(random_state=0).fit(train.X, train.y)
    background = train.X[:25]
    e = xk.explain(
        gb, test.X[0], method=method, target=1, baseline=background, samples=400,
        feature_names=test.feature_names,
    )  # fmt: skip
    assert e.values.shape == (30,) and e.kind == "tabular"
    assert np.isfinite(e.values).all() and np.abs(e.values).sum() > 0
    if method == "kernel_shap":  # efficiency: values sum to f(x) - E[f(background)]
        p = gb.predict_proba(np.vstack([test.X[:1], background]))[:, 1]
        assert e.values.sum() == pytest.approx(p[0] - p[1:].mean(), abs=1e-6)
    else:
        assert 0 <= e.info["r2"] <= 1
    assert e.feature_names == list(test.feature_names)
    labels = [t.get_text() for t in e.plot().axes[0].get_yticklabels()]
    assert set(labels) <= set(test.feature_names) and labels


def test_names_holding_dollars_are_drawn_as_text():
    # A $...$ feature or class name crashed the plot through matplotlib's mathtext, and two
    # equal feature names shared one bar.
    from matplotlib import cbook

    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3)).astype(np.float32)

    def model(b):
        return np.stack([b[:, 0] + b[:, 1], -b[:, 0] - b[:, 1]], axis=1)

    names = [r"$\undefinedmacro$", "x", "x"]
    for kind in ("tree", "linear"):
        s = xk.surrogate(model, X, kind=kind, max_depth=2, feature_names=names,
                         class_names=[r"$a$", r"$\nope$"], seed=0)  # fmt: skip
        fig = s.plot()
        fig.canvas.draw()
        shown = [t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text"))]
        assert not any(cbook.is_math_text(t) for t in shown)
        assert any(r"\$\undefinedmacro\$" in t for t in shown)
    imp = xk.permutation_importance(model, X, n_repeats=2, seed=0, feature_names=names)
    fig = imp.plot()
    fig.canvas.draw()
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert sorted(labels) == sorted([r"\$\undefinedmacro\$", "x", "x"])  # three bars
    assert len(fig.axes[0].patches) == 3


# ---------------------------------------------------------- a model of one class, DataFrames


def _always_class_1(rows: np.ndarray) -> np.ndarray:
    scores = np.zeros((len(rows), 3))
    scores[:, 1] = 1.0
    return scores


def test_a_model_of_one_class_is_named_by_that_class():
    # scikit-learn's text of a one-leaf tree said "class: 0" whatever the class
    X = np.random.default_rng(0).normal(size=(40, 3))
    named = xk.surrogate(_always_class_1, X, kind="tree", class_names=["a", "b", "c"])
    assert named.rules() == "|--- class: b"
    assert xk.surrogate(_always_class_1, X, kind="tree").rules() == "|--- class: 1"
    with pytest.raises(ValueError, match=r"kind: the model predicts class 1 for every row"):
        xk.surrogate(_always_class_1, X, kind="linear")


def test_dataframe_columns_name_the_features_of_surrogates_with_importances():
    pd = pytest.importorskip("pandas")
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {"age": rng.normal(45, 10, 120), "city": rng.choice(["Lyon", "Oslo"], 120)}
    )
    labels = ((frame.age > 45) ^ (frame.city == "Oslo")).astype(int)
    prep = ColumnTransformer([("n", StandardScaler(), ["age"]), ("c", OneHotEncoder(), ["city"])])
    pipe = make_pipeline(prep, LogisticRegression()).fit(frame, labels)
    s = xk.surrogate(pipe, frame, max_depth=2)
    assert s.feature_names == ["age", "city"] and "city" in s.rules()
    assert s.fidelity > 0.9
    ranking = xk.permutation_importance(pipe, frame, labels).ranking()
    assert {name for name, _ in ranking} == {"age", "city"}


def test_a_linear_surrogates_text_names_the_class_of_each_score():
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    X, y = load_iris(return_X_y=True)
    three = LogisticRegression(max_iter=500).fit(X, y)
    lines = xk.surrogate(three, X, kind="linear", class_names=["se", "ve", "vi"]).rules()
    assert [line.split(" = ")[0] for line in lines.splitlines()] == [
        "score for se", "score for ve", "score for vi",
    ]  # fmt: skip
    two = LogisticRegression().fit(X, y == 0)
    assert xk.surrogate(two, X, kind="linear").rules().startswith("score for class 1 over class 0")
