"""The Wisconsin breast-cancer table from scikit-learn, with a fixed train/test split.

scikit-learn ships the table inside the package (569 rows, 30 numeric features, classes
"malignant" = 0 and "benign" = 1), so nothing is downloaded at run time.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = ["Table", "load_breast_cancer_table"]

#: Share of rows in the test split (stratified by class).
TEST_FRACTION = 0.25
#: Seed of the split; fixed so that every user sees the same split.
SPLIT_SEED = 0


@dataclass(frozen=True)
class Table:
    """A labelled table.

    Attributes
    ----------
    X : np.ndarray of float64, shape (N, F)
        Feature values, one row per sample.
    y : np.ndarray of int64, shape (N,)
        Class index of each row (an index into ``class_names``).
    feature_names : list of str
        Name of each of the F columns.
    class_names : list of str
        Name of each class.
    """

    X: np.ndarray
    y: np.ndarray
    feature_names: list[str]
    class_names: list[str]


# split name (None for the whole table) -> (X, y)
_Splits = dict[str | None, tuple[np.ndarray, np.ndarray]]


@lru_cache(maxsize=1)
def _breast_cancer() -> tuple[_Splits, list[str], list[str]]:
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    bunch = load_breast_cancer()
    X = np.asarray(bunch.data, dtype=np.float64)
    y = np.asarray(bunch.target, dtype=np.int64)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=TEST_FRACTION, stratify=y, random_state=SPLIT_SEED
    )
    splits = {None: (X, y), "train": (X_train, y_train), "test": (X_test, y_test)}
    for arrays in splits.values():
        for a in arrays:  # shared by every call: make accidental writes fail loudly
            a.setflags(write=False)
    return splits, list(bunch.feature_names), list(bunch.target_names)


def load_breast_cancer_table(split: str | None = None) -> Table:
    """Load the breast-cancer table, whole or as its fixed train/test split.

    Parameters
    ----------
    split : {None, "train", "test"}
        ``None``: all 569 rows. ``"train"`` / ``"test"``: a stratified split with
        :data:`TEST_FRACTION` of the rows in the test part, the same on every call.

    Returns
    -------
    Table
        ``X`` (float64, (N, 30)), ``y`` (int64, 0 = malignant, 1 = benign), ``feature_names``
        (30 names) and ``class_names`` (``["malignant", "benign"]``). The arrays are fresh
        copies.

    Examples
    --------
    >>> t = load_breast_cancer_table("train")
    >>> t.X.shape[1] == len(t.feature_names)
    True
    """
    if split not in (None, "train", "test"):
        raise ValueError(f"split must be one of (None, 'train', 'test'), got {split!r}")
    splits, feature_names, class_names = _breast_cancer()
    X, y = splits[split]
    return Table(
        X=X.copy(), y=y.copy(), feature_names=list(feature_names), class_names=list(class_names)
    )
