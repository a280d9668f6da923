"""Complexity: how concentrated an explanation is (fewer relevant features are easier to read).

- **Sparseness** (Chalasani et al. 2020, "Concise explanations of neural networks using
  adversarial training", ICML): the Gini index of ``|attributions|``; 0 when every feature is
  equally relevant, close to 1 when one feature holds all the relevance.
- **Entropy** (Bhatt et al. 2020, "Evaluating and aggregating feature-based model
  explanations", IJCAI): the Shannon entropy of ``|attributions|`` normalised to sum to 1; 0
  when one feature holds everything, ``log(n)`` when all are equal.

Both take the attributions over all elements of the input (channels included), as Quantus does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xaikit.explanation import Explanation
from xaikit.metrics._common import as_array
from xaikit.metrics.registry import metric


def _magnitudes(explanation: Any) -> np.ndarray:
    if isinstance(explanation, Explanation):
        if explanation.batch:
            raise ValueError(
                "explanation: expected one input's explanation, got a batch; pass e[i]"
            )
        explanation = explanation.values
    values = as_array(explanation, name="explanation")
    if values.size == 0:
        raise ValueError("explanation: expected at least one attribution, got an empty array")
    return np.abs(values.astype(np.float64).ravel())


def sparseness(explanation: Any) -> float:
    """Gini index of ``|attributions|`` (Chalasani et al. 2020): 0 spread out, near 1 sparse.

    ``G = sum_i (2 i - n - 1) a_(i) / (n sum_i a_i)`` with ``a_(1) <= ... <= a_(n)`` sorted;
    an all-zero explanation gives 0 (nothing is singled out). Scale-invariant.
    """
    a = np.sort(_magnitudes(explanation))
    n = a.size
    total = a.sum()
    if total == 0:
        return 0.0
    ranks = np.arange(1, n + 1)
    return float(((2 * ranks - n - 1) * a).sum() / (n * total))


def entropy(explanation: Any) -> float:
    """Shannon entropy (nats) of ``|attributions| / sum |attributions|`` (Bhatt et al. 2020).

    Low is concise. An all-zero explanation gives ``log(n)`` (no feature is preferred).
    """
    a = _magnitudes(explanation)
    total = a.sum()
    if total == 0:
        return float(np.log(a.size))
    p = a / total
    p = p[p > 0]  # 0 log 0 = 0
    return float(-(p * np.log(p)).sum())


# As metrics, in xk.evaluate's argument order (the model and input are not needed).
@metric("sparseness", higher_is_better=True)
def _sparseness_metric(model: Any, x: Any, explanation: Any) -> float:
    return sparseness(explanation)


@metric("entropy", higher_is_better=False)
def _entropy_metric(model: Any, x: Any, explanation: Any) -> float:
    return entropy(explanation)
