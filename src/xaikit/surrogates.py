"""Interpretable mimics: a decision tree, a sparse linear model or a rule list fitted to the model.

The idea: a linear model or a small tree explains itself but predicts poorly, so let
it imitate the black box instead of the labels, and measure how well it does (fidelity) on data
it was not fitted on. A global surrogate is fitted to the model's *predictions* on the data plus
samples drawn around it (Craven & Shavlik 1996, "Extracting tree-structured representations of
trained networks"; Molnar, "Interpretable Machine Learning", ch. "Global surrogate").
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from xaikit._plotting import new_figure, plain
from xaikit._repr import HTMLRepr
from xaikit._tables import frame_input, is_frame
from xaikit._validation import (
    check_batch,
    check_choice,
    check_count,
    check_int,
    check_memory,
    check_number,
    check_seed,
    describe,
)
from xaikit.model import as_model

if TYPE_CHECKING:  # scikit-learn is imported on first use: `import xaikit` stays light
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

KINDS = ("tree", "linear", "rules")
# Bytes per table value held during a fit: the drawn rows and their noise (float64), the joined
# table, its float32 copy for the model, and scikit-learn's own copies (an estimate).
_BYTES_PER_VALUE = 48


@dataclass
class Surrogate(HTMLRepr):
    """A fitted interpretable mimic of a model, with its fidelity on held-out data."""

    kind: str
    estimator: Any
    feature_names: list[str]
    task: str  # "classification" (agreement) or "regression" (R²)
    fidelity: float
    complexity: dict[str, int]
    scaler: StandardScaler | None = None
    class_names: list[str] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def predict(self, X: Any) -> np.ndarray:
        """The surrogate's prediction (class index, or score for a regression)."""
        X = np.asarray(check_batch(X, name="X"), dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(self.feature_names):
            raise ValueError(
                f"X: expected rows of {len(self.feature_names)} features, got shape {X.shape}"
            )
        return self.estimator.predict(self.scaler.transform(X) if self.scaler else X)

    def rules(self) -> str:
        """The surrogate as readable text, with the feature names."""
        if self.kind in ("tree", "rules"):
            if self.kind == "tree":
                from sklearn.tree import export_text

                if self.task == "classification" and self.estimator.tree_.node_count == 1:
                    # the model predicts one class on X: scikit-learn's text would call it 0
                    label = self.estimator.classes_[0]
                    names = self._leaf_class_names()
                    return f"|--- class: {names[0] if names else label}"
                return export_text(
                    self.estimator,
                    feature_names=self.feature_names,
                    class_names=self._leaf_class_names(),
                )
            return "\n".join(_rule_list(self.estimator, self.feature_names, self.class_names))
        return _linear_text(self)

    def _leaf_class_names(self) -> list[str] | None:
        """Names of the classes the tree predicts, in its ``classes_`` order (a subset of K)."""
        if self.task != "classification" or not self.class_names:
            return None
        names = list(self.class_names)
        return [
            names[int(c)] if 0 <= int(c) < len(names) else str(c) for c in self.estimator.classes_
        ]

    def plot(self, *, ax=None):
        """The tree (or the linear weights as bars) as a matplotlib Figure."""
        from sklearn.tree import plot_tree

        own = ax is None
        fig = (
            new_figure((6, 3.5) if self.kind != "linear" else (6, 4), layout=None)
            if own
            else ax.figure
        )
        if own:
            ax = (
                fig.add_axes((0.01, 0.01, 0.98, 0.9))
                if self.kind != "linear"
                else fig.add_subplot()
            )
        if self.kind == "linear":
            weights = _linear_weights(self)
            order = np.argsort(np.abs(weights))[-20:]
            # Positions, not the names as categories: equal names would share one bar.
            ax.barh(
                np.arange(order.size),
                weights[order],
                color=["#b2182b" if w > 0 else "#2166ac" for w in weights[order]],
            )
            ax.set_yticks(
                np.arange(order.size), labels=[plain(self.feature_names[i]) for i in order]
            )
            ax.set_xlabel("weight (standardised features)")
        else:
            classes = self._leaf_class_names()
            nodes = plot_tree(
                self.estimator,
                feature_names=[plain(n) for n in self.feature_names],
                ax=ax,
                filled=True,
                class_names=None if classes is None else [plain(n) for n in classes],
                fontsize=7,
                impurity=False,
            )
            if own:
                _fit_tree(fig, nodes)
        ax.set_title(f"{self.kind} surrogate · fidelity {self.fidelity:.3f}")
        return fig


def _fit_tree(fig: Any, nodes: list) -> None:
    """Grow the figure until the tree's boxes (placed in axes fractions, text in points) keep
    a gap between neighbours on a level and between levels (room for the True/False labels)."""
    fig.canvas.draw()  # places the annotations (their boxes sit at the origin until drawn)
    renderer = fig.canvas.get_renderer()
    boxes = np.array(
        [
            n.get_bbox_patch().get_window_extent(renderer).extents
            for n in nodes
            if n.get_bbox_patch()
        ]
    )
    if len(boxes) < 2:
        return
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    gap_x, gap_y = 0.1 * fig.dpi, 0.35 * fig.dpi
    sx = sy = 1.0
    levels = np.unique(np.round(cy))
    for level in levels:
        on = np.flatnonzero(np.abs(cy - level) < 1)
        order = on[np.argsort(cx[on])]
        for a, b in itertools.pairwise(order):
            sx = max(sx, (w[a] / 2 + w[b] / 2 + gap_x) / max(cx[b] - cx[a], 1e-9))
    for upper, lower in itertools.pairwise(levels[::-1]):
        hu = h[np.abs(cy - upper) < 1].max()
        hl = h[np.abs(cy - lower) < 1].max()
        sy = max(sy, (hu / 2 + hl / 2 + gap_y) / (upper - lower))
    width, height = fig.get_size_inches()
    fig.set_size_inches(width * sx, height * sy)


def surrogate(
    model: Any,
    X: Any,
    *,
    kind: str = "tree",
    max_depth: int = 4,
    alpha: float = 0.01,
    feature_names: list[str] | None = None,
    class_names: list[str] | None = None,
    samples: int = 1000,
    test_size: float = 0.25,
    seed: int = 0,
) -> Surrogate:
    """Fit an interpretable model to the predictions of ``model`` and measure its fidelity.

    Parameters
    ----------
    model : nn.Module, xaikit.Model or callable
        The black box. Classifiers (K > 1 outputs) are mimicked on their predicted class;
        a single output is a regression.
    X : array (N, F)
        Data the surrogate should be faithful on. A held-out part (``test_size``) measures
        fidelity; the rest plus ``samples`` points drawn around it (Gaussian, each feature's
        standard deviation scaled by 0.2) is labelled by the model and fitted.
    kind : {"tree", "linear", "rules"}
        A decision tree of ``max_depth``; a sparse linear model (L1-penalised logistic
        regression or Lasso with strength ``alpha`` on standardised features); or the tree
        read as a list of if-then rules.

    Returns
    -------
    Surrogate
        ``fidelity`` = agreement with the model's predicted class (classifiers) or R² to its
        output (regression) on the held-out rows; ``complexity``; ``rules()``; ``plot()``.
    """
    kind = check_choice(kind, name="kind", choices=KINDS)
    max_depth = check_count(max_depth, name="max_depth")
    alpha = check_number(alpha, name="alpha", low=0, low_open=True)
    samples = check_int(samples, name="samples", minimum=0)
    test_size = check_number(
        test_size, name="test_size", low=0, high=1, low_open=True, high_open=True, what="fraction"
    )
    seed = check_seed(seed, bits=32)  # scikit-learn's random_state
    m = as_model(model)
    categorical = None
    if is_frame(X):  # its columns name the features; the model gets DataFrames back
        X, m, _ = frame_input(m, X, name="X")
        categorical = np.array([c is not None for c in m.table.categories])
        feature_names = m.table.feature_names if feature_names is None else feature_names
    X = np.asarray(check_batch(X, name="X"), dtype=np.float64)
    if X.ndim != 2 or len(X) < 8:
        raise ValueError(f"X: expected a table (N, F) with at least 8 rows, got shape {X.shape}")
    # The fit needs every row at once (scikit-learn holds them): refuse up front when the rows
    # drawn around the data, their copies and scores would not fit.
    check_memory(
        samples, _BYTES_PER_VALUE * X.shape[1] + 64, name="samples",
        what=f"rows of {X.shape[1]} features (held whole for the fit)",
        fixed=_BYTES_PER_VALUE * X.size,
    )  # fmt: skip
    from sklearn.linear_model import Lasso
    from sklearn.metrics import r2_score
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    names = _feature_names(feature_names, X.shape[1])
    rng = np.random.default_rng(seed)
    X_fit, X_test = train_test_split(X, test_size=test_size, random_state=seed)
    # Close to the data: on 15 MLPs x 5 splits of the breast-cancer table a depth-4 tree's
    # held-out fidelity averaged 0.959 with 0.2 std against 0.945 with 0.5 (points far off
    # the data teach the tree boundaries that held-out rows never meet).
    spread = 0.2 * X_fit.std(axis=0)
    if categorical is not None:
        spread[categorical] = 0.0  # a category's code stays a real category
    extra = (
        X_fit[rng.integers(0, len(X_fit), samples)]
        + rng.normal(size=(samples, X.shape[1])) * spread
    )
    X_fit = np.concatenate([X_fit, extra])

    scores_fit = m.scores(X_fit.astype(np.float32) if m.is_torch else X_fit)
    scores_test = m.scores(X_test.astype(np.float32) if m.is_torch else X_test)
    task = "classification" if scores_fit.shape[1] > 1 else "regression"
    if class_names is not None:
        class_names = _class_names(class_names, scores_fit.shape[1], task)
    y_fit = scores_fit.argmax(1) if task == "classification" else scores_fit[:, 0]
    y_test = scores_test.argmax(1) if task == "classification" else scores_test[:, 0]

    scaler = None
    if kind == "linear" and task == "classification" and len(np.unique(y_fit)) < 2:
        raise ValueError(
            f"kind: the model predicts class {int(y_fit[0])} for every row of X, so a linear "
            "surrogate has no boundary to learn; kind='tree' gives the one-leaf tree"
        )
    if kind == "linear":
        scaler = StandardScaler().fit(X_fit)
        if task == "classification":
            # Same scale as Lasso's alpha: sklearn's logistic loss is summed, Lasso's averaged.
            estimator = _l1_logistic(C=1.0 / (alpha * len(X_fit)), seed=seed)
        else:
            estimator = Lasso(alpha=alpha, random_state=seed, max_iter=20_000)
        estimator.fit(scaler.transform(X_fit), y_fit)
    else:
        tree = DecisionTreeClassifier if task == "classification" else DecisionTreeRegressor
        estimator = tree(max_depth=max_depth, random_state=seed).fit(X_fit, y_fit)
    predicted = estimator.predict(scaler.transform(X_test) if scaler else X_test)
    if task == "classification":
        fidelity = float(np.mean(predicted == y_test))
    else:
        fidelity = float(r2_score(y_test, predicted))
    result = Surrogate(
        kind=kind, estimator=estimator, feature_names=names, task=task, fidelity=fidelity,
        complexity={}, scaler=scaler, class_names=class_names,
        info={"fitted_rows": len(X_fit), "held_out_rows": len(X_test)},
    )  # fmt: skip
    result.complexity = _complexity(result)
    return result


@dataclass
class FidelityCurve:
    """Fidelity of surrogates of growing complexity, to choose the depth or sparsity."""

    kind: str
    settings: list[float]
    complexity: list[int]
    fidelity: list[float]

    def plot(self, *, ax=None):
        fig = ax.figure if ax is not None else new_figure((5, 3.5))
        ax = ax if ax is not None else fig.add_subplot()
        ax.plot(self.complexity, self.fidelity, marker="o")
        ax.set_xlabel("leaves" if self.kind != "linear" else "non-zero weights")
        ax.set_ylabel("held-out fidelity")
        ax.set_title(f"{self.kind} surrogate: fidelity against complexity")
        return fig


def fidelity_curve(
    model: Any, X: Any, *, kind: str = "tree", settings: list[float] | None = None, **kwargs: Any
) -> FidelityCurve:
    """Fit surrogates over ``settings`` (tree depths, or linear ``alpha`` values) and collect
    their held-out fidelity against their complexity (leaves or non-zero weights)."""
    kind = check_choice(kind, name="kind", choices=KINDS)
    if settings is None:
        settings = [1, 2, 3, 4, 5, 6, 8] if kind != "linear" else [1.0, 0.3, 0.1, 0.03, 0.01]
    if isinstance(settings, (str, bytes)) or not isinstance(settings, Sequence | np.ndarray):
        raise TypeError(f"settings: expected a list of depths or alphas, got {describe(settings)}")
    settings = [
        check_number(s, name="settings", low=0, low_open=True)
        if kind == "linear"
        else check_count(s, name="settings")
        for s in settings
    ]
    m = as_model(model)  # one adapter: its batch size is found once
    fits = [
        surrogate(
            m, X, kind=kind, **({"alpha": s} if kind == "linear" else {"max_depth": s}), **kwargs
        )
        for s in settings
    ]
    measure = "nonzero_weights" if kind == "linear" else "leaves"
    return FidelityCurve(
        kind=kind,
        settings=list(settings),
        complexity=[f.complexity[measure] for f in fits],
        fidelity=[f.fidelity for f in fits],
    )


def _l1_logistic(*, C: float, seed: int) -> LogisticRegression:
    """L1-penalised logistic regression across scikit-learn versions (1.8 renamed the knob)."""
    import sklearn
    from sklearn.linear_model import LogisticRegression

    major, minor = (int(v) for v in sklearn.__version__.split(".")[:2])
    penalty = {"l1_ratio": 1.0} if (major, minor) >= (1, 8) else {"penalty": "l1"}
    return LogisticRegression(C=C, solver="saga", max_iter=5000, random_state=seed, **penalty)


def _feature_names(names: list[str] | None, n: int) -> list[str]:
    if names is None:
        return [f"x[{i}]" for i in range(n)]
    names = [str(v) for v in names]
    if len(names) != n:
        raise ValueError(f"feature_names: expected {n} names, got {len(names)}")
    return names


def _class_names(names: Any, n_outputs: int, task: str) -> list[str]:
    """One name per output of a classifier (a regression has no classes)."""
    if isinstance(names, (str, bytes)) or not isinstance(names, Sequence | np.ndarray):
        raise TypeError(f"class_names: expected a list of names, got {describe(names)}")
    names = [str(n) for n in names]
    if task != "classification":
        raise ValueError(
            f"class_names: the model has one output (a regression, no classes), got {len(names)}"
            " names"
        )
    if len(names) != n_outputs:
        raise ValueError(
            f"class_names: expected {n_outputs} names (one per model output), got {len(names)}"
        )
    return names


def _complexity(s: Surrogate) -> dict[str, int]:
    if s.kind == "linear":
        return {"nonzero_weights": int(np.count_nonzero(_linear_weights(s)))}
    return {"depth": int(s.estimator.get_depth()), "leaves": int(s.estimator.get_n_leaves())}


def _linear_weights(s: Surrogate) -> np.ndarray:
    coef = np.atleast_2d(s.estimator.coef_)
    return coef[0] if len(coef) == 1 else np.abs(coef).max(axis=0)


def _linear_text(s: Surrogate) -> str:
    coef = np.atleast_2d(s.estimator.coef_)
    intercept = np.atleast_1d(s.estimator.intercept_)
    classes = list(getattr(s.estimator, "classes_", []))
    names = s.class_names

    def label(c) -> str:
        return names[int(c)] if names and 0 <= int(c) < len(names) else f"class {c}"

    lines = []
    for k, (row, b) in enumerate(zip(coef, intercept, strict=True)):
        terms = [
            f"{w:+.3f} * {name}"
            for w, name in sorted(zip(row, s.feature_names, strict=True), key=lambda t: -abs(t[0]))
            if w != 0
        ]
        if len(classes) == 2:  # one score: positive means the second class
            what = f"score for {label(classes[1])} over {label(classes[0])}"
        elif classes:
            what = f"score for {label(classes[k])}"
        else:
            what = "prediction"
        lines.append(f"{what} = {b:+.3f} " + " ".join(terms) + "   (standardised features)")
    return "\n".join(lines)


def _rule_list(tree, names: list[str], class_names: list[str] | None) -> list[str]:
    """Each leaf of the tree as one 'IF ... THEN ...' rule, most covering rule first."""
    t = tree.tree_
    rules = []

    def walk(node: int, conditions: list[str]) -> None:
        if t.children_left[node] == t.children_right[node]:  # a leaf
            value = t.value[node][0]
            if hasattr(tree, "classes_"):
                label = tree.classes_[int(np.argmax(value))]
                outcome = class_names[label] if class_names else f"class {label}"
            else:
                outcome = f"score {value[0]:.3f}"
            cond = " AND ".join(conditions) or "always"
            rules.append((t.n_node_samples[node], f"IF {cond} THEN {outcome}"))
            return
        name, threshold = names[t.feature[node]], t.threshold[node]
        walk(t.children_left[node], [*conditions, f"{name} <= {threshold:.4g}"])
        walk(t.children_right[node], [*conditions, f"{name} > {threshold:.4g}"])

    walk(0, [])
    return [f"{text}   [{n} rows]" for n, text in sorted(rules, key=lambda r: -r[0])]
