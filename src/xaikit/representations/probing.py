"""Probing classifiers: does a layer encode a property? Train a small classifier on it and see.

A probe ``g: h_l(x) -> label`` is trained on one part of the data and scored on the rest; high
held-out accuracy is evidence that layer ``l`` holds the property in a form the probe can read.
A strong probe can also learn a task by itself, so each probe gets a **control task** (Hewitt &
Liang 2019): the same probe on labels that carry no information about the inputs, which only
memorisation can learn. **Selectivity** = accuracy - control accuracy.

Hewitt & Liang give every word *type* a random label (drawn from the task's label
distribution), so a probe can memorise types it saw in training and score on held-out tokens of
the same types. Images and other continuous inputs have no types; here each item is its own
type unless ``types=`` names them: the control labels are a fixed random permutation of the real
labels (the same label distribution), and on held-out items, whose types were never seen, the
control accuracy is what chance gives. The control's training accuracy
(``control_train_accuracy``) still shows how much the probe can memorise.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xaikit._plotting import plain
from xaikit._repr import HTMLRepr
from xaikit._validation import check_choice, check_number, check_seed
from xaikit.representations._common import check_labels, flat, new_figure
from xaikit.representations.activations import DEFAULT_MEMORY_BUDGET, capture, data_length

__all__ = ["ProbeResult", "probe"]

KINDS = ("linear", "mlp")


@dataclass
class ProbeResult(HTMLRepr):
    """Held-out accuracy of a probe per layer, with its control task and selectivity.

    Attributes
    ----------
    accuracy : dict of str to float
        Held-out accuracy of the probe on each layer.
    control_accuracy : dict of str to float
        Held-out accuracy of the same probe on the control labels (empty with ``control=False``).
    selectivity : dict of str to float
        ``accuracy - control_accuracy`` per layer (empty with ``control=False``).
    train_accuracy, control_train_accuracy : dict of str to float
        The same on the training part: how well the probe fits, and how much it memorises.
    chance : float
        Held-out accuracy of always answering the most frequent training label.
    layers : list of str
    kind : str
    n_train, n_test : int
    """

    accuracy: dict[str, float]
    control_accuracy: dict[str, float]
    selectivity: dict[str, float]
    train_accuracy: dict[str, float]
    control_train_accuracy: dict[str, float]
    chance: float
    layers: list[str]
    kind: str
    n_train: int
    n_test: int
    params: dict = field(default_factory=dict)

    def plot(self, *, ax: Any = None, title: str | None = None) -> Any:
        """Accuracy, control accuracy and selectivity across layers; returns the ``Figure``."""
        if ax is None:
            ax = new_figure((max(5.0, 1.1 * len(self.layers) + 2.5), 3.8)).add_subplot()
        x = np.arange(len(self.layers))
        ax.plot(x, [self.accuracy[k] for k in self.layers], "o-", label="accuracy")
        if self.control_accuracy:
            ax.plot(
                x, [self.control_accuracy[k] for k in self.layers], "s--", label="control accuracy"
            )
            ax.plot(x, [self.selectivity[k] for k in self.layers], "^-", label="selectivity")
        ax.axhline(self.chance, color="grey", linewidth=0.8, linestyle=":", label="chance")
        shown = [plain(k) for k in self.layers]
        ax.set_xticks(x, labels=shown, rotation=30 if len(self.layers) > 5 else 0)
        ax.set_ylim(min([0.0, *self.selectivity.values()]) - 0.02, 1.02)
        ax.set_xlabel("layer")
        ax.set_ylabel("held-out accuracy")
        ax.legend(fontsize="small", frameon=False, loc="best")
        ax.set_title(plain(title or f"{self.kind} probe per layer"))
        return ax.figure


def probe(
    model: Any,
    data: Any,
    labels: Any = None,
    *,
    layers: str | list[str],
    kind: str = "linear",
    control: bool = True,
    types: Any = None,
    test_size: float = 0.25,
    seed: int = 0,
    pool: Any = None,
    batch_size: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    progress: bool | None = None,
) -> ProbeResult:
    """Train a probe on each layer's activations and score it on held-out items.

    Parameters
    ----------
    model : nn.Module or Model
    data : array, tensor, Dataset or DataLoader
        See :func:`xaikit.activations`.
    labels : sequence
        The property to probe for, one class per item (ints, bools or strings), e.g. the digit
        or "has watermark". ``None``: the data's own targets (a labelled Dataset/DataLoader).
    layers : str or list of str
        Layer paths to probe, typically shallow to deep.
    kind : {"linear", "mlp"}
        ``"linear"``: multinomial logistic regression (scikit-learn ``LogisticRegression``,
        L2, ``C=1``) on standardised, flattened activations. ``"mlp"``: an ``MLPClassifier``
        with one hidden layer of 100 units (Hewitt & Liang's MLP-1 probe) on the same.
    control : bool
        Also train the probe on the control task and report selectivity.
    types : sequence, optional
        One "type" per item for the control task (e.g. the word id of each token); items of
        one type share a control label, drawn from the label distribution. Default: every
        item its own type (a permutation of the labels).
    test_size : float
        Share of the items held out for scoring, split with ``seed`` and stratified by label
        when every class has at least two items.
    seed : int
        Seeds the split, the control labels and the probe.
    pool, batch_size, memory_budget, progress
        As in :func:`xaikit.activations` (``pool="mean"`` probes channel averages).

    Returns
    -------
    ProbeResult
        ``accuracy``, ``control_accuracy``, ``selectivity`` (dicts layer -> float), ``plot()``.

    References
    ----------
    Alain & Bengio 2017, Understanding intermediate layers using linear classifier probes,
    ICLR workshop. Hewitt & Liang 2019, Designing and interpreting probes with control tasks,
    EMNLP.

    Examples
    --------
    >>> from xaikit.datasets import load_default_cnn, load_mnist
    >>> X, y = load_mnist("test")
    >>> r = probe(load_default_cnn(), X, y, layers=["pool1", "pool2", "relu3"])
    >>> r.accuracy["relu3"] > r.accuracy["pool1"]
    True
    """
    kind = check_choice(kind, name="kind", choices=KINDS)
    test_size = check_number(
        test_size, name="test_size", low=0, high=1, low_open=True, high_open=True, what="share"
    )
    seed = check_seed(seed, allow_none=False, bits=32)  # scikit-learn's random_state
    n = data_length(data)
    if labels is not None and n is not None:  # fail before the forward passes
        labels = check_labels(labels, n=n)
    if types is not None and n is not None:
        types = check_labels(types, n=n, name="types", classes=False)
    acts = capture(
        model,
        data,
        layers=layers,
        pool=pool,
        batch_size=batch_size,
        memory_budget=memory_budget,
        progress=progress,
    )
    if labels is None:
        if acts.targets is None:
            raise TypeError(
                "labels: expected one label per item; the data yields no targets to use instead"
            )
        labels = acts.targets
    labels = check_labels(labels, n=acts.n)
    if types is not None:
        types = check_labels(types, n=acts.n, name="types", classes=False)
    train, test = _split(labels, test_size=float(test_size), seed=seed)
    control_labels = _control_labels(labels, types, seed=seed) if control else None
    values, counts = np.unique(labels[train], return_counts=True)
    result = ProbeResult(
        accuracy={},
        control_accuracy={},
        selectivity={},
        train_accuracy={},
        control_train_accuracy={},
        chance=float(np.mean(labels[test] == values[np.argmax(counts)])),
        layers=list(acts.layers),
        kind=kind,
        n_train=len(train),
        n_test=len(test),
        params={"test_size": float(test_size), "seed": seed, "pool": _describe_pool(pool)},
    )
    for layer in acts.layers:
        X = flat(acts[layer])
        X_train, X_test = X[train], X[test]
        result.train_accuracy[layer], result.accuracy[layer] = _fit_score(
            kind, X_train, labels[train], X_test, labels[test], seed=seed
        )
        if control_labels is not None:
            c_train, c_test = _fit_score(
                kind, X_train, control_labels[train], X_test, control_labels[test], seed=seed
            )
            result.control_train_accuracy[layer] = c_train
            result.control_accuracy[layer] = c_test
            result.selectivity[layer] = result.accuracy[layer] - c_test
    return result


def _split(labels: np.ndarray, *, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices, stratified when every class has two items or more."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    _, counts = np.unique(labels, return_counts=True)
    stratify = labels if counts.min() >= 2 else None
    try:
        train, test = train_test_split(
            index, test_size=test_size, random_state=seed, stratify=stratify
        )
    except ValueError as err:  # too few items for a split (or for a stratified one)
        raise ValueError(
            f"data: {len(labels)} items cannot be split into a training and a held-out part "
            f"with test_size={test_size} ({err})"
        ) from err
    if len(np.unique(labels[train])) < 2:
        raise ValueError(
            "labels: the training part holds a single class; give more items of each class"
        )
    return np.sort(train), np.sort(test)


def _control_labels(labels: np.ndarray, types: np.ndarray | None, *, seed: int) -> np.ndarray:
    """Hewitt & Liang's control task: a fixed random label per type, from the label
    distribution. Without types every item is its own type: a permutation of the labels."""
    rng = np.random.default_rng([seed, 1])  # its own stream: independent of the split
    if types is None:
        return rng.permutation(labels)
    kinds, inverse = np.unique(types, return_inverse=True)
    return rng.choice(labels, size=len(kinds), replace=True)[inverse]


def _fit_score(
    kind: str, X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, y_test, *, seed: int
) -> tuple[float, float]:
    """Train and held-out accuracy of a fresh probe."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "linear":
        head = LogisticRegression(C=1.0, max_iter=500, random_state=seed)
    else:
        head = MLPClassifier(hidden_layer_sizes=(100,), max_iter=300, random_state=seed)
    # Standardised features: the probe's regularisation then weighs every unit alike, however
    # large its activations are.
    clf = make_pipeline(StandardScaler(), head)
    with warnings.catch_warnings():
        # A probe stopped at its iteration limit is still a probe; its accuracy says how good.
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X_train, y_train)
    return float(clf.score(X_train, y_train)), float(clf.score(X_test, y_test))


def _describe_pool(pool: Any) -> Any:
    return pool if pool is None or isinstance(pool, str) else getattr(pool, "__name__", "callable")
