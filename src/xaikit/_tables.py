"""Tables: a pandas DataFrame as a float array for the methods, and back for the model.

Every method perturbs numeric arrays. A table model (a scikit-learn pipeline fitted on a
DataFrame) wants a DataFrame with its column names, and categorical columns as categories.
:class:`Table` is the two-way map: numeric columns stay numbers, a categorical column (pandas
``category``, strings, booleans) becomes the index of its category, so a method that replaces
a value by a background value moves between real categories. pandas is imported only when a
DataFrame is met.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from xaikit._validation import describe


def is_frame(x: Any) -> bool:
    """True for a pandas DataFrame or Series, told without importing pandas."""
    return type(x).__module__.startswith("pandas") and type(x).__name__ in ("DataFrame", "Series")


@dataclass(frozen=True)
class Table:
    """Column names, dtypes and categories of a table: the map between a DataFrame and floats.

    Build one with :meth:`of` from DataFrames (the explained rows and any background rows, so
    that every category is known). ``categories[j]`` is ``None`` for a numeric column, else
    the column's categories in code order.
    """

    columns: tuple[str, ...]
    dtypes: tuple[Any, ...]
    categories: tuple[tuple | None, ...]

    @property
    def feature_names(self) -> list[str]:
        return [str(c) for c in self.columns]

    @classmethod
    def of(cls, *frames: Any) -> Table:
        """The table of one or more DataFrames (or Series rows) with the same columns."""
        frames = tuple(_as_frame(f, name="x") for f in frames)
        first = frames[0]
        for f in frames[1:]:
            if list(f.columns) != list(first.columns):
                raise ValueError(
                    f"background: expected the columns of x {list(first.columns)}, got "
                    f"{list(f.columns)}"
                )
        dtypes, categories = [], []
        for column in first.columns:
            values = [f[column] for f in frames]
            dtype = values[0].dtype
            if all(_numeric_dtype(v.dtype) for v in values):
                dtypes.append(dtype)
                categories.append(None)
            elif str(dtype) == "category":
                dtypes.append(dtype)
                categories.append(tuple(dtype.categories))
            else:
                seen = {v for series in values for v in series.tolist()}
                dtypes.append(dtype)
                categories.append(tuple(sorted(seen, key=lambda v: (type(v).__name__, str(v)))))
        return cls(tuple(first.columns), tuple(dtypes), tuple(categories))

    @classmethod
    def fitted_on(cls, model: Any) -> Table | None:
        """The numeric table of an estimator fitted on a DataFrame (``feature_names_in_``)."""
        owner = getattr(model, "__self__", model)
        names = getattr(owner, "feature_names_in_", None)
        if names is None:
            return None
        names = tuple(str(n) for n in names)
        return cls(names, (np.dtype(np.float64),) * len(names), (None,) * len(names))

    def array(self, frame: Any, *, name: str) -> np.ndarray:
        """``frame`` (rows of this table) as a float64 array ``(N, F)``; categories as codes."""
        frame = _as_frame(frame, name=name)
        if [str(c) for c in frame.columns] != self.feature_names:
            raise ValueError(
                f"{name}: expected the columns {self.feature_names}, got "
                f"{[str(c) for c in frame.columns]}"
            )
        out = np.empty((len(frame), len(self.columns)), dtype=np.float64)
        for j, column in enumerate(frame.columns):
            series = frame[column]
            cats = self.categories[j]
            if cats is None:
                if not _numeric_dtype(series.dtype):
                    raise TypeError(f"{name}: column {column!r} is not numeric ({series.dtype})")
                out[:, j] = series.to_numpy(dtype=np.float64)
                continue
            index = {v: i for i, v in enumerate(cats)}
            unknown = [v for v in series.tolist() if v not in index]
            if unknown:
                raise ValueError(
                    f"{name}: column {column!r} has {unknown[0]!r}, not one of its categories "
                    f"{list(cats)[:10]}"
                )
            out[:, j] = [index[v] for v in series.tolist()]
        return out

    def frame(self, array: np.ndarray) -> Any:
        """Rows of floats as a DataFrame of this table (codes back to their categories)."""
        import pandas as pd

        array = np.asarray(array)
        data = {}
        for j, column in enumerate(self.columns):
            values = array[:, j]
            cats = self.categories[j]
            if cats is None:
                data[column] = _numbers_as(values, self.dtypes[j])
                continue
            codes = np.clip(np.rint(values), 0, len(cats) - 1).astype(np.int64)
            chosen = np.array(cats, dtype=object)[codes]
            if str(self.dtypes[j]) == "category":
                data[column] = pd.Categorical(chosen, dtype=self.dtypes[j])
            else:
                data[column] = _values_as(chosen, self.dtypes[j])
        return pd.DataFrame(data, columns=list(self.columns))


def _numbers_as(values: np.ndarray, dtype: Any) -> Any:
    """A numeric column back in its dtype (int64, Int64, float32, ...); values that an integer
    column cannot hold exactly (LIME's draws from training statistics) stay float64."""
    import pandas as pd

    kind = getattr(dtype, "kind", "f")
    if kind in "iu" and not np.array_equal(values, np.rint(values)):
        return values
    try:
        return pd.array(values, dtype=dtype) if kind in "iu" else values.astype(dtype)
    except (TypeError, ValueError, OverflowError):
        return values


def _values_as(values: np.ndarray, dtype: Any) -> Any:
    """Categories (objects) back in their column's dtype (bool, boolean, string, ...)."""
    import pandas as pd

    try:
        return pd.array(values, dtype=dtype)
    except (TypeError, ValueError):
        return values


def _as_frame(x: Any, *, name: str) -> Any:
    if not is_frame(x):
        raise TypeError(f"{name}: expected a pandas DataFrame, got {describe(x)}")
    if type(x).__name__ == "Series":  # one row, as df.iloc[i] gives it
        frame = x.to_frame().T
        return frame.infer_objects()
    return x


def _numeric_dtype(dtype: Any) -> bool:
    return getattr(dtype, "kind", "O") in "fiu" and str(dtype) != "category"


def frame_input(model: Any, frame: Any, *, name: str, others: dict | None = None):
    """A DataFrame input as float rows, for an :class:`xaikit.Model`.

    Returns ``(rows, view, others_rows)``: ``frame`` as rows ``(N, F)`` (categories as codes),
    a copy of ``model`` that turns each batch back into a DataFrame of those columns, dtypes
    and categories (learned from ``frame`` and the ``others``, e.g. background rows,
    together), and the ``others`` as rows. Columns other than the fitted ones are refused.
    """
    import copy

    others = others or {}
    table = Table.of(frame, *others.values())
    if model.table is not None and model.table.feature_names != table.feature_names:
        raise ValueError(
            f"{name}: expected the columns the model was fitted on {model.table.feature_names}, "
            f"got {table.feature_names}"
        )
    view = copy.copy(model)
    view.table = table
    rows = table.array(frame, name=name)
    return rows, view, {k: table.array(v, name=k) for k, v in others.items()}
