"""The attack on interpretation (Ghorbani, Abid & Zou 2019): is the explanation fragile?

Ghorbani et al. 2019, "Interpretation of neural networks is fragile" (AAAI): a perturbation
``delta`` with ``||delta||_inf <= epsilon``, too small to see and keeping the predicted label,
can move a saliency map far away (from the object to the background). Their *top-k attack*
minimises the relevance left on the original ``k`` most relevant pixels by iterative projected
sign steps, keeping at each step only a perturbation under which the label stays; they report
the top-k intersection and the Spearman rank correlation between the original and the attacked
map, against a random sign perturbation of the same size as control.

The attack needs the gradient of the explanation with respect to the input:

- ``estimator="softplus"`` (saliency and input x gradient): the explanation is a gradient,
  and a ReLU network's gradient is piecewise constant (its second derivative is 0 almost
  everywhere), so as in the paper the attack differentiates through a **deep copy** of the model
  whose ``nn.ReLU`` modules are replaced by ``Softplus(beta)``; the result is always measured
  with the true method on the user's (untouched) model.
- ``estimator="spsa"`` (any method, also a callable): a simultaneous-perturbation estimate
  (Spall 1992) of the gradient from ``queries`` pairs of explanations at ``x' +- c u`` with
  random signs ``u``, explained in one batch.

Maps are compared as ``|attribution|`` summed over channels (as in the sanity checks).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from xaikit._plotting import new_figure, plain
from xaikit._progress import progress_bar
from xaikit._repr import HTMLRepr, short_repr
from xaikit._validation import (
    check_choice,
    check_count,
    check_number,
    check_positive_int,
    check_seed,
    check_targets,
    describe,
)
from xaikit.attribution.perturbation import chunk_size, chunk_sizes
from xaikit.explanation import Explanation
from xaikit.metrics._common import (
    as_array,
    check_explained,
    check_same_input,
    explainer,
    re_explaining,
)
from xaikit.metrics.registry import metric
from xaikit.model import Model, as_model

ESTIMATORS = ("auto", "softplus", "spsa")
_SOFTPLUS_METHODS = ("saliency", "input_x_gradient")


@dataclass
class AttackResult(HTMLRepr):
    """The outcome of a top-k attack on one method's explanation of one input.

    Attributes
    ----------
    method : str
    epsilon : float
        The L-inf budget.
    k : int
        Number of top pixels compared.
    target : int
        The explained class, still the predicted class of ``x_adv``.
    x : array
        The input.
    x_adv : array
        The attacked input (``x`` itself when no step kept the label).
    original, attacked : arrays
        ``|attribution|`` maps (channels summed) of ``x`` and ``x_adv``.
    top_k_intersection : float
        Share of the original top-k pixels still in the attacked map's top-k (1 = unmoved).
    spearman : float
        Rank correlation of the two maps (1 = same order).
    random_top_k_intersection, random_spearman : float
        The same for a random sign perturbation ``epsilon * sign(N(0, 1))`` (the paper's
        control): how much the map moves by chance at this budget.
    label_kept : bool
        Whether the predicted class of ``x_adv`` is ``target`` (always, by construction).
    estimator : str
        ``"softplus"`` or ``"spsa"``.
    accepted_steps : int
        Steps whose perturbation kept the label.
    """

    method: str
    epsilon: float
    k: int
    target: int
    x: np.ndarray
    x_adv: np.ndarray
    original: np.ndarray
    attacked: np.ndarray
    top_k_intersection: float
    spearman: float
    random_top_k_intersection: float
    random_spearman: float
    label_kept: bool
    estimator: str
    accepted_steps: int

    def __repr__(self) -> str:
        return short_repr(self)  # arrays by shape: a repr that fits on a screen

    def plot(self) -> Any:
        """Original map, attacked map and the perturbation; return the Figure."""
        fig = new_figure((9.0, 3.2), layout="constrained")
        axes = fig.subplots(1, 3)
        panels = [
            ("original map", self.original, "inferno"),
            (
                f"attacked: top-{self.k} {self.top_k_intersection:.2f}, rho {self.spearman:.2f}",
                self.attacked,
                "inferno",
            ),
            (f"perturbation (eps {self.epsilon:g})", _pixels(self.x_adv - self.x), "RdBu_r"),
        ]
        for ax, (title, img, cmap) in zip(axes, panels, strict=True):
            if img.ndim == 2:
                ax.imshow(img, cmap=cmap)
            else:
                ax.bar(np.arange(img.size), img.ravel())
            ax.set_title(title, fontsize=8)
            ax.set_axis_off()
        fig.suptitle(plain(f"{self.method}: attack on interpretation (Ghorbani et al. 2019)"))
        return fig


def attack_explanation(
    model: Any,
    x: Any,
    method: Any = "saliency",
    *,
    target: int | None = None,
    epsilon: float = 0.1,
    steps: int = 30,
    step_size: float | None = None,
    k: int | None = None,
    estimator: str = "auto",
    beta: float = 10.0,
    queries: int = 16,
    bounds: tuple[float, float] | None = None,
    seed: int = 0,
    explanation: Any = None,
    **method_params: Any,
) -> AttackResult:
    """Top-k attack on an explanation (Ghorbani et al. 2019).

    Parameters
    ----------
    model : nn.Module or xaikit.Model (a callable works with ``estimator="spsa"``)
        Never modified: the softplus surrogate is a deep copy.
    x : array
        One input.
    method : str or callable
        A name from ``xk.methods()`` or ``explain_fn(model, x (N, ...), targets (N,))``.
    target : int, optional
        Default the explanation's target, else the predicted class.
    epsilon : float
        L-inf budget of the perturbation, in the input's units (0.1 on [0, 1] images).
    steps : int
        Projected sign-gradient steps.
    step_size : float, optional
        Size of one step; default ``2.5 * epsilon / steps`` (enough to cross the ball).
        Halved whenever a step would change the label.
    k : int, optional
        Number of top pixels attacked and compared; default 5% of the pixels.
    estimator : {"auto", "softplus", "spsa"}
        ``"auto"``: softplus for ``saliency`` / ``input_x_gradient`` on a model with
        ``nn.ReLU`` modules, SPSA otherwise.
    beta : float
        Softplus sharpness (larger is closer to ReLU, but with smaller second derivatives).
    queries : int
        SPSA pairs per step.
    bounds : (low, high), optional
        Valid input range, e.g. ``(0, 1)``; the attacked input is clipped to it.
    seed : int
    explanation : Explanation or array, optional
        The explanation of ``x``, when already computed.
    **method_params
        Parameters of the named method.

    Returns
    -------
    AttackResult
    """
    epsilon = check_number(epsilon, name="epsilon", low=0, low_open=True)
    steps = check_count(steps, name="steps")
    queries = check_count(queries, name="queries")
    estimator = check_choice(estimator, name="estimator", choices=ESTIMATORS)
    beta = check_number(beta, name="beta", low=0, low_open=True)
    seed = check_seed(seed)
    if step_size is None:
        step_size = 2.5 * epsilon / steps
    else:
        step_size = check_number(step_size, name="step_size", low=0, low_open=True)
    name, explain_fn = explainer(method, method_params)
    m = as_model(model)
    x = as_array(x, name="x").astype(np.float32)
    low, high = _bounds(bounds, x)
    if target is None and isinstance(explanation, Explanation):
        target = explanation.target
    if target is None:
        target = int(m.scores(x[None]).argmax(axis=1)[0])
    target = int(check_targets(target, n=1, n_classes=None)[0])
    scores = m.scores(x[None])
    check_targets(target, n=1, n_classes=scores.shape[1])
    if int(scores.argmax(axis=1)[0]) != target:
        raise ValueError(
            f"target: the attack keeps the predicted class, but class {target} is not predicted "
            f"for x (class {int(scores.argmax())} is)"
        )

    # A named method gets the one Model (its batch size is chosen once); a callable the
    # user's own model object, as it would be called outside xaikit.
    explained = m if isinstance(method, str) else model

    def maps(points: np.ndarray) -> np.ndarray:
        values = explain_fn(explained, points, np.full(len(points), target))
        values = check_explained(values, points)
        return _pixels(np.abs(values), batch=True)

    if explanation is None:
        original = maps(x[None])[0]
    else:
        check_same_input(x, explanation)
        values = explanation.values if isinstance(explanation, Explanation) else explanation
        values = as_array(values, name="explanation")
        check_explained(values[None], x[None], name="explanation")
        original = _pixels(np.abs(values))
    n_pixels = original.size
    k = max(1, round(0.05 * n_pixels)) if k is None else check_positive_int(k, name="k")
    if k >= n_pixels:
        raise ValueError(f"k: expected fewer than the {n_pixels} pixels, got {k}")
    top = _top_k(original, k)

    if estimator == "auto":
        usable = isinstance(method, str) and method in _SOFTPLUS_METHODS and not method_params
        estimator = "softplus" if usable and _has_relu(m) else "spsa"
    if estimator == "softplus":
        gradient = _softplus_gradient(m, name, method, method_params, target, top, beta)
    else:
        gradient = _spsa_gradient(maps, top, queries, 0.5 * epsilon, seed)

    best_x, best = x, (1.0, 1.0)
    accepted = 0
    current = x.copy()
    alpha = float(step_size)
    with progress_bar(steps, "attack steps") as bar:
        for _ in range(steps):
            bar.advance()
            g = gradient(current)
            candidate = np.clip(current - alpha * np.sign(g), x - epsilon, x + epsilon)
            candidate = np.clip(candidate, low, high).astype(np.float32)
            if int(m.scores(candidate[None]).argmax(axis=1)[0]) != target:
                alpha /= 2  # this step crossed the decision boundary: stay, take smaller steps
                continue
            current = candidate
            accepted += 1
            moved = maps(current[None])[0]
            score = (_intersection(top, moved, k), _spearman(original, moved))
            if score < best:
                best_x, best = current, score
    attacked = maps(best_x[None])[0] if best_x is not x else original

    rng = np.random.default_rng(seed)
    noisy = np.clip(x + epsilon * np.sign(rng.normal(size=x.shape)), low, high).astype(np.float32)
    control = maps(noisy[None])[0]
    kept = int(m.scores(best_x[None]).argmax(axis=1)[0]) == target
    return AttackResult(
        name,
        float(epsilon),
        k,
        target,
        x,
        best_x,
        original,
        attacked,
        _intersection(top, attacked, k),
        _spearman(original, attacked),
        _intersection(top, control, k),
        _spearman(original, control),
        kept,
        estimator,
        accepted,
    )


# As a metric: the top-k intersection, attacking the explanation's own method.
metric("attack_top_k", higher_is_better=True)(
    re_explaining(attack_explanation, score=lambda result: result.top_k_intersection)
)


def _bounds(bounds: Any, x: np.ndarray) -> tuple[float, float]:
    if bounds is None:
        return -np.inf, np.inf
    try:
        low, high = (float(b) for b in bounds)
    except (TypeError, ValueError) as err:
        raise TypeError(f"bounds: expected (low, high), got {describe(bounds)}") from err
    if not low < high:
        raise ValueError(f"bounds: expected low < high, got {bounds!r}")
    if x.min() < low or x.max() > high:
        raise ValueError(
            f"bounds: x lies in [{x.min():.3g}, {x.max():.3g}], outside the bounds {bounds!r}"
        )
    return low, high


def _pixels(values: np.ndarray, *, batch: bool = False) -> np.ndarray:
    """Channel sum of ``(C, H, W)`` maps (``(N, C, H, W)`` with ``batch``)."""
    image_ndim = 4 if batch else 3
    return values.sum(axis=-3) if values.ndim == image_ndim else values


def _top_k(a: np.ndarray, k: int) -> np.ndarray:
    """Flat indices of the k largest values (ties by pixel order)."""
    return np.argsort(-a.ravel(), kind="stable")[:k]


def _intersection(top: np.ndarray, moved: np.ndarray, k: int) -> float:
    return float(np.isin(top, _top_k(moved, k)).sum() / k)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    a, b = a.ravel(), b.ravel()
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0  # a constant map ranks nothing
    return float(spearmanr(a, b).statistic)


def _has_relu(m: Model) -> bool:
    return m.module is not None and any(isinstance(s, nn.ReLU) for s in m.module.modules())


def _softplus_gradient(m: Model, name, method, params, target: int, top: np.ndarray, beta: float):
    """d(share of |attribution| on the original top-k) / dx through a softplus deep copy."""
    if not (isinstance(method, str) and method in _SOFTPLUS_METHODS) or params:
        raise ValueError(
            f"estimator: 'softplus' differentiates {list(_SOFTPLUS_METHODS)} with default "
            f"parameters, got {name!r} {params or ''}; use estimator='spsa'"
        )
    if not _has_relu(m):
        raise ValueError(
            "estimator: 'softplus' replaces nn.ReLU modules, but the model has none; use "
            "estimator='spsa'"
        )
    work = copy.deepcopy(m.module).eval()
    for parent in list(work.modules()):
        for child, sub in list(parent.named_children()):
            if isinstance(sub, nn.ReLU):
                setattr(parent, child, nn.Softplus(beta=beta))
    for p in work.parameters():
        p.requires_grad_(False)
    device = m.device

    def gradient(point: np.ndarray) -> np.ndarray:
        xt = torch.as_tensor(point[None], device=device).requires_grad_(True)
        with torch.enable_grad():
            out = work(xt)[0, target]
            (g,) = torch.autograd.grad(out, xt, create_graph=True)
            values = (g if method == "saliency" else xt * g).abs()
            pix = values.sum(dim=1) if values.ndim == 4 else values
            flat = pix.reshape(-1)
            share = flat[torch.as_tensor(top, device=device)].sum() / (flat.sum() + 1e-12)
            (d,) = torch.autograd.grad(share, xt)
        return d[0].detach().cpu().numpy()

    return gradient


def _spsa_gradient(maps, top: np.ndarray, queries: int, c: float, seed: int):
    """SPSA estimate of d(share on the original top-k) / dx from one batch of explanations."""
    rng = np.random.default_rng(seed)

    def share(batch_maps: np.ndarray) -> np.ndarray:
        flat = batch_maps.reshape(len(batch_maps), -1)
        return flat[:, top].sum(axis=1) / np.maximum(flat.sum(axis=1), 1e-12)

    def gradient(point: np.ndarray) -> np.ndarray:
        # Queries in chunks (the same directions as one draw; one batch of explanations per
        # chunk), so memory is one chunk whatever ``queries`` is.
        total = None
        for b in chunk_sizes(queries, chunk_size(point, n_background=4)):
            u = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=(b, *point.shape))
            s = share(maps(np.concatenate([point[None] + c * u, point[None] - c * u])))
            slope = (s[:b] - s[b:]) / (2 * c)
            part = (slope.reshape(-1, *[1] * point.ndim) * u).sum(axis=0)
            total = part if total is None else total + part
        return total / queries

    return gradient
