"""Robustness: does the explanation stay put when the input barely moves?

- **Max-sensitivity** (Yeh, Hsieh, Suggala, Inouye & Ravikumar 2019, "On the (in)fidelity and
  sensitivity of explanations", NeurIPS): the largest relative change of the explanation over
  random perturbations ``d ~ U(-r, r)`` of every input element,
  ``max_d ||e(x + d) - e(x)|| / ||e(x)||`` (Frobenius norms, as Quantus's ``MaxSensitivity``).
- **Local Lipschitz estimate** (Alvarez-Melis & Jaakkola 2018, "On the robustness of
  interpretability methods", ICML WHI): ``max_d ||e(x + d) - e(x)|| / ||d||`` over the same
  kind of samples (the paper maximises; random sampling gives a lower bound of that maximum).

Low is robust. The explained target stays the one of the unperturbed input. The perturbed inputs
are explained in one batch per call, so a method's own batching applies.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from xaikit._progress import progress_bar
from xaikit._validation import check_count, check_number, check_seed, check_targets
from xaikit.attribution.perturbation import chunk_size
from xaikit.explanation import Explanation
from xaikit.metrics._common import (
    as_array,
    check_explained,
    check_same_input,
    explainer,
    re_explaining,
)
from xaikit.metrics.registry import metric
from xaikit.model import as_model


def _distances(
    model: Any,
    x: Any,
    method: Any,
    *,
    radius: float,
    samples: int,
    seed: int,
    target: Any,
    explanation: Any,
    params: dict[str, Any],
    per_sample: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray],
) -> tuple[float, np.ndarray]:
    """The largest ``per_sample(d, base, perturbed)`` over the perturbations, and ``base``.

    The perturbations are drawn and explained chunk by chunk (the same draws as one batch,
    each chunk one batch of the method), so memory is one chunk whatever ``samples`` is.
    """
    radius = check_number(radius, name="radius", low=0, low_open=True)
    samples = check_count(samples, name="samples")
    seed = check_seed(seed)
    x = as_array(x, name="x").astype(np.float32)
    _, explain_fn = explainer(method, params)
    m = as_model(model)
    if target is None:
        if isinstance(explanation, Explanation):
            target = explanation.target
        else:
            target = int(m.scores(x[None]).argmax(axis=1)[0])
    t = int(check_targets(target, n=1, n_classes=None)[0])
    if explanation is None:
        base = check_explained(explain_fn(model, x[None], np.array([t])), x[None])[0]
    else:
        check_same_input(x, explanation)
        values = explanation.values if isinstance(explanation, Explanation) else explanation
        base = as_array(values, name="explanation").astype(np.float64)
        if base.shape != x.shape:
            raise ValueError(
                f"explanation: expected attributions of the input's shape {x.shape}, got "
                f"{base.shape}"
            )
    rng = np.random.default_rng(seed)
    largest = -np.inf
    size = chunk_size(x, n_background=3)  # inputs, and float64 explanations of them
    with progress_bar(samples, "perturbations") as bar:
        for start in range(0, samples, size):
            b = min(size, samples - start)
            d = rng.uniform(-radius, radius, size=(b, *x.shape)).astype(np.float32)
            xs = x[None] + d
            perturbed = check_explained(explain_fn(model, xs, np.full(b, t)), xs)
            largest = max(
                largest, float(per_sample(d, base, perturbed.reshape(b, *base.shape)).max())
            )
            bar.advance(b)
    return largest, base


def _change(perturbed: np.ndarray, base: np.ndarray) -> np.ndarray:
    return np.linalg.norm((perturbed - base[None]).reshape(len(perturbed), -1), axis=1)


def max_sensitivity(
    model: Any,
    x: Any,
    method: Any = "saliency",
    *,
    target: int | None = None,
    radius: float = 0.2,
    samples: int = 200,
    seed: int = 0,
    explanation: Any = None,
    **method_params: Any,
) -> float:
    """Max-sensitivity of an explanation method at ``x`` (Yeh et al. 2019).

    Parameters
    ----------
    model : nn.Module, xaikit.Model or callable
    x : array
        One input.
    method : str or callable
        A name from ``xk.methods()`` or ``explain_fn(model, x (N, ...), targets (N,))``.
    target : int, optional
        Default: ``explanation.target``, else the predicted class.
    radius : float
        Perturbations are uniform in ``[-radius, radius]`` per element (Quantus's default 0.2).
    samples : int
        Number of perturbations (Quantus's default 200), explained a chunk at a time.
    seed : int
    explanation : Explanation or array, optional
        The explanation of ``x`` when it is already computed.

    Returns
    -------
    float
        ``max_d ||e(x+d) - e(x)||_F / ||e(x)||_F``; ``inf`` when ``e(x)`` is all zero and some
        perturbed explanation is not.
    """
    largest, base = _distances(
        model,
        x,
        method,
        radius=radius,
        samples=samples,
        seed=seed,
        target=target,
        explanation=explanation,
        params=method_params,
        per_sample=lambda _d, base, perturbed: _change(perturbed, base),
    )
    den = np.linalg.norm(base)
    if den == 0:
        return 0.0 if largest == 0 else float("inf")
    return float(largest / den)


def local_lipschitz(
    model: Any,
    x: Any,
    method: Any = "saliency",
    *,
    target: int | None = None,
    radius: float = 0.1,
    samples: int = 200,
    seed: int = 0,
    explanation: Any = None,
    **method_params: Any,
) -> float:
    """Local Lipschitz estimate (Alvarez-Melis & Jaakkola 2018): ``max ||e(x+d)-e(x)|| / ||d||``.

    Parameters as in :func:`max_sensitivity`, with ``d ~ U(-radius, radius)`` per element.
    """

    def ratio(d, base, perturbed):
        return _change(perturbed, base) / np.linalg.norm(
            d.reshape(len(d), -1).astype(np.float64), axis=1
        )

    largest, _ = _distances(
        model,
        x,
        method,
        radius=radius,
        samples=samples,
        seed=seed,
        target=target,
        explanation=explanation,
        params=method_params,
        per_sample=ratio,
    )
    return float(largest)


# As metrics, both re-explain with the explanation's own method (xk.evaluate's argument order).
metric("max_sensitivity", higher_is_better=False)(re_explaining(max_sensitivity))
metric("local_lipschitz", higher_is_better=False)(re_explaining(local_lipschitz))
