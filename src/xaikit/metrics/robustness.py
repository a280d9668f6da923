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

from typing import Any

import numpy as np

from xaikit._validation import check_positive_int, check_targets
from xaikit.explanation import Explanation
from xaikit.metrics._common import as_array, check_explained, check_same_input, explainer
from xaikit.model import as_model


def _samples(
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
):
    """The perturbations, the explanation of ``x`` and those of the perturbed inputs."""
    if not (isinstance(radius, (int, float)) and radius > 0):
        raise ValueError(f"radius: expected a positive number, got {radius!r}")
    samples = check_positive_int(samples, name="samples")
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
    d = rng.uniform(-radius, radius, size=(samples, *x.shape)).astype(np.float32)
    xs = x[None] + d
    perturbed = check_explained(explain_fn(model, xs, np.full(samples, t)), xs)
    return d, base, perturbed.reshape(samples, *base.shape)


def max_sensitivity(
    model: Any,
    x: Any,
    method: Any = "saliency",
    *,
    radius: float = 0.2,
    samples: int = 200,
    seed: int = 0,
    target: int | None = None,
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
    radius : float
        Perturbations are uniform in ``[-radius, radius]`` per element (Quantus's default 0.2).
    samples : int
        Number of perturbations (Quantus's default 200).
    seed : int
    target : int, optional
        Default: ``explanation.target``, else the predicted class.
    explanation : Explanation or array, optional
        The explanation of ``x`` when it is already computed.

    Returns
    -------
    float
        ``max_d ||e(x+d) - e(x)||_F / ||e(x)||_F``; ``inf`` when ``e(x)`` is all zero and some
        perturbed explanation is not.
    """
    _, base, perturbed = _samples(
        model,
        x,
        method,
        radius=radius,
        samples=samples,
        seed=seed,
        target=target,
        explanation=explanation,
        params=method_params,
    )
    num = np.linalg.norm((perturbed - base[None]).reshape(len(perturbed), -1), axis=1)
    den = np.linalg.norm(base)
    if den == 0:
        return 0.0 if num.max() == 0 else float("inf")
    return float(num.max() / den)


def local_lipschitz(
    model: Any,
    x: Any,
    method: Any = "saliency",
    *,
    radius: float = 0.1,
    samples: int = 200,
    seed: int = 0,
    target: int | None = None,
    explanation: Any = None,
    **method_params: Any,
) -> float:
    """Local Lipschitz estimate (Alvarez-Melis & Jaakkola 2018): ``max ||e(x+d)-e(x)|| / ||d||``.

    Parameters as in :func:`max_sensitivity`, with ``d ~ U(-radius, radius)`` per element.
    """
    d, base, perturbed = _samples(
        model,
        x,
        method,
        radius=radius,
        samples=samples,
        seed=seed,
        target=target,
        explanation=explanation,
        params=method_params,
    )
    num = np.linalg.norm((perturbed - base[None]).reshape(len(perturbed), -1), axis=1)
    den = np.linalg.norm(d.reshape(len(d), -1).astype(np.float64), axis=1)
    return float((num / den).max())
