"""KernelSHAP (Lundberg & Lee 2017): Shapley values by weighted least squares on coalitions.

The Shapley values of the game ``v(z)`` (the target score with components ``z`` kept, see
:class:`~xaikit.attribution.lime.CoalitionGame`) solve a regression over all coalitions with
the Shapley kernel ``k(s) = (M-1) / (C(M, s) s (M-s))`` as weights under the efficiency
constraint ``sum(phi) = v(1) - v(0)`` (Lundberg & Lee 2017, Theorem 2). With ``samples >= 2^M``
every coalition is evaluated and the result is exact.

Otherwise three things make each model evaluation count:

1. **Stratified antithetic pairs.** Sizes ``s`` and ``M - s`` form a stratum whose total kernel
   weight is known exactly. Small and large sizes are enumerated while the budget allows (as
   shap's KernelExplainer does); the other strata draw distinct coalitions uniformly, each with
   its complement (Covert & Lee 2021), and weigh ``stratum weight / draws`` rather than noisy
   draw counts. Budget shares go as the square root of the kernel weight: the Neyman allocation
   when a coalition's value varies like the sum of ``s`` independent contributions.
2. **A paired design sees only the odd part** ``u(z) = (v(z) - v(not z)) / 2`` of the game, and
   so does the Shapley value (a game symmetric under complement has all-zero Shapley values).
3. **Regression adjustment** (Witter et al. 2025): a kernel ridge surrogate ``g`` of ``u`` whose
   Shapley values are known in closed form, plus KernelSHAP on the residual:
   ``phi = phi(g) + phi_kernelshap(v - g)``, still exact in efficiency and exact once every
   coalition is evaluated. ``g`` is linear (unpenalised, so additive games stay exact) plus a
   kernel ridge part over Walsh (parity) functions of odd degree 3, 5, ... in the ±1 coding. A
   parity on a set ``T`` gets prior weight ``prod_{j in T} c_j`` with ``c_j`` the strength times
   component j's main effect relative to the largest (heredity: strong interactions mostly join
   components with strong main effects), which sums to a product kernel in closed form. A parity
   on ``T`` gives each member ``2 / |T|``, so ``phi(g)`` is an integral of the product, exact by
   Gauss-Legendre. The strength is chosen by leave-one-out error on the evaluated pairs (at most
   64: from 64 components on, plain KernelSHAP). On random MLP games (M = 12) this cut the error
   by about 15% against a kernel with one weight per degree; on a gradient-boosted tabular model
   by 3-5x (from 128 coalitions on, M = 10).
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any

import numpy as np

from xaikit._validation import check_positive_int
from xaikit.attribution.lime import assemble, check_seed, games_for, single_threaded_blas
from xaikit.attribution.registry import Attribution, register
from xaikit.model import Model

REFERENCE = "Lundberg & Lee 2017, A Unified Approach to Interpreting Model Predictions, NeurIPS"

# Surrogate: the linear part free, interactions weighted by c = strength * relevance, the
# strength chosen by leave-one-out on at most _LOO_PAIRS pairs (bounded cost).
_STRENGTHS = (0.3, 0.6, 0.9)
_RIDGE = 1e-2  # relative to the kernel's diagonal
_FLOOR = 0.01  # least relevance of a component
_LOO_PAIRS = 64
_ENUMERATE_MAX = 2**20  # a stratum is enumerated and subsampled below this many subsets


@register("kernel_shap", needs_gradients=False, reference=REFERENCE)
def kernel_shap(
    model: Model,
    x: np.ndarray,
    targets: np.ndarray,
    *,
    components: Any = "auto",
    samples: int | str = "auto",
    baseline: Any = None,
    seed: int | None = 0,
) -> Attribution:
    """KernelSHAP: Shapley values of the components, summing to ``v(1) - v(0)`` exactly.

    Parameters
    ----------
    components : "auto", str, dict, or int array
        As for ``lime``: a segmentation name, a name with options (``{"how": "slic",
        "n_segments": 100}``) or an id map.
    samples : int or "auto"
        Coalitions evaluated, the empty and the full one included (at least 2); ``"auto"``:
        ``2 M + 2048`` like shap. From ``2^M`` on, all coalitions: exact Shapley values.
    baseline : None, number, str, array, or background rows
        What a removed component becomes (see ``lime``). Background rows ``(R, *x.shape)``
        give the interventional expectation ``v(z) = mean_r f(x_z, r_{not z})``, so the values
        sum to ``f(x) - mean_r f(r)``; each coalition then costs R forward passes.
    seed : int or None
        Seeds the sampled coalitions (the same for every item of a batch). Default 0:
        reproducible; ``None`` draws a fresh seed.

    Returns
    -------
    Attribution
        ``component_values (N, M)`` (Shapley values, padded with 0), ``info``:
        ``expected_value`` (``v(0)``, E[f(baseline)]), ``score`` (``v(1)``), ``efficiency_gap``
        (``sum(phi) - (v(1) - v(0))``, float error only), ``samples`` (distinct coalitions
        evaluated), ``exact`` (all coalitions enumerated), ``explained_output``.

    References
    ----------
    Lundberg & Lee 2017, NeurIPS. Covert & Lee 2021, Improving KernelSHAP, AISTATS.
    Witter, Zhou, Musco et al. 2025, Regression-adjusted Monte Carlo Estimators for Shapley
    Values and Probabilistic Values. O'Donnell 2014, Analysis of Boolean Functions.
    """
    if isinstance(samples, str):
        if samples != "auto":
            raise ValueError(f"samples: expected a positive int or 'auto', got {samples!r}")
    else:
        samples = check_positive_int(samples, name="samples")
        if samples < 2:
            raise ValueError(
                f"samples: expected at least 2 (the empty and the full coalition), got {samples}"
            )
    seed = check_seed(seed)
    games = games_for(model, x, targets, components=components, baseline=baseline, seed=seed)
    fits, rows = [], []
    for game in games:
        m = game.m
        budget = 2 * m + 2048 if samples == "auto" else samples
        rng = np.random.default_rng(seed)
        exact = m <= 30 and budget >= 2**m
        if exact:
            z, w = all_coalitions(m)
        else:
            reps, pair_w = shapley_pairs(m, budget, rng)
            z, w = np.concatenate([reps, ~reps]), np.concatenate([pair_w, pair_w]) / 2
        ends = np.zeros((2, m), dtype=bool)
        ends[1] = True
        v = game(np.concatenate([ends, z]))
        with single_threaded_blas():
            if exact or m < 3 or len(z) // 2 < m + 1:  # a surrogate needs pairs per unknown
                phi = constrained_wls(z, w, v[2:] - v[0], v[1] - v[0])
            else:
                phi = _adjusted(z, w, v, rng)
        fits.append((game, phi))
        rows.append((v[0], v[1], phi.sum() - (v[1] - v[0]), game.evaluations, exact))
    empty, full, gap, used, exact = (np.array(c) for c in zip(*rows, strict=True))
    info = {
        "expected_value": empty,
        "score": full,
        "efficiency_gap": gap,
        "samples": used,
        "exact": exact,
        "explained_output": model.output,
    }
    return assemble(x, fits, info)


def all_coalitions(m: int) -> tuple[np.ndarray, np.ndarray]:
    """Every coalition but the empty and full one ``(2^m - 2, m)``, with Shapley kernel weights."""
    codes = np.arange(1, 2**m - 1, dtype=np.int64)
    z = ((codes[:, None] >> np.arange(m)) & 1).astype(bool)
    size = z.sum(axis=1)
    comb = np.array([math.comb(m, s) for s in range(m + 1)], dtype=np.float64)
    kernel = (m - 1) / (comb[size] * size * (m - size))
    return z, kernel / kernel.sum()


def shapley_pairs(m: int, budget: int, rng: np.random.Generator):
    """Representatives ``(n, m)`` of complementary pairs within ``budget`` evaluations.

    The ends take 2 evaluations, each pair 2. Returns the representatives and each pair's
    weight (the two coalitions of a pair share it); weights sum to 1.
    """
    pairs = (budget - 2) // 2
    strata = list(range(1, m // 2 + 1))
    # Pairs of a stratum: subsets of size s, or for 2s == m those containing component 0.
    reps = {s: math.comb(m - 1, s - 1) if 2 * s == m else math.comb(m, s) for s in strata}
    weight = {s: (m - 1) / (s * (m - s)) * (1 if 2 * s == m else 2) for s in strata}
    share = {s: math.sqrt(weight[s]) for s in strata}
    drawn: dict[int, int] = {}
    remaining = list(strata)
    while remaining:  # enumerate every stratum whose share covers all its pairs
        total = sum(share[s] for s in remaining)
        full = [s for s in remaining if pairs * share[s] / total >= reps[s] - 1e-9]
        if not full:
            break
        for s in full:
            drawn[s] = reps[s]
            pairs -= reps[s]
            remaining.remove(s)
    if remaining and pairs > 0:
        drawn.update(_allocate(pairs, remaining, share, reps))
    parts, weights = [], []
    for s, n in drawn.items():
        if n:
            parts.append(_subsets(m, s, n, rng, contains_first=2 * s == m, all_=n == reps[s]))
            weights.append(np.full(n, weight[s] / n))
    if not parts:  # a budget of 2 or 3: only the ends, the fit spreads v(1) - v(0) evenly
        return np.zeros((0, m), dtype=bool), np.zeros(0)
    w = np.concatenate(weights)
    return np.concatenate(parts), w / w.sum()


def constrained_wls(z: np.ndarray, weights: np.ndarray, y: np.ndarray, total: float):
    """``argmin sum_i w_i (y_i - z_i . phi)^2`` subject to ``sum(phi) = total`` (KKT system)."""
    m = z.shape[1]
    X = z.astype(np.float64)
    wX = weights[:, None] * X
    kkt = np.zeros((m + 1, m + 1))
    kkt[:m, :m] = X.T @ wX
    kkt[:m, m] = kkt[m, :m] = 1.0
    rhs = np.append(wX.T @ y, total)
    try:
        solution = np.linalg.solve(kkt, rhs)
        if not np.allclose(kkt @ solution, rhs, rtol=1e-8, atol=1e-10 * np.abs(rhs).max()):
            raise np.linalg.LinAlgError("ill-conditioned")
    except np.linalg.LinAlgError:  # fewer distinct coalitions than components: least norm
        solution = np.linalg.lstsq(kkt, rhs, rcond=None)[0]
    return solution[:m]


def product_kernel(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Odd part, less its linear terms, of ``prod_j (1 + c_j a_j b_j)`` for ±1 rows a and b.

    Expanded, a parity on ``T`` gets weight ``prod_{j in T} c_j``. The odd part is
    ``prod sqrt(1 - c^2) sinh(sum_j atanh(c_j) a_j b_j)``; all is divided by ``prod (1 + c)``
    (the largest value of the product) so that it stays finite for many components.
    """
    scale = np.log1p(c).sum()
    x = (a * np.arctanh(c)) @ b.T
    base = 0.5 * np.log1p(-(c**2)).sum() - scale
    return (np.exp(base + x) - np.exp(base - x)) / 2 - (a * c) @ b.T * np.exp(-scale)


def product_kernel_shapley(a: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Shapley values ``(n, m)`` of each game ``s -> product_kernel(a_p, s, c)``.

    A parity on ``T`` gives each member ``2 / |T|``; summed over the ``T`` holding ``i``, with
    ``1 / |T| = int_0^1 tau^(|T|-1)``: ``phi_i = c_i a_i int_0^1 (P+ + P-) dtau`` less the linear
    ``2 c_i a_i``, where ``P± = prod_{j != i} (1 ± tau c_j a_j)``. The integrand is a polynomial
    of degree m - 1, integrated exactly by Gauss-Legendre with ``ceil(m / 2)`` nodes.
    """
    tau, weights = _gauss_legendre((len(c) + 1) // 2)
    scale = np.log1p(c).sum()
    # prod_j (1 ± tau c_j a_j) = exp(middle ± x), divided by prod(1 + c) like the kernel
    middle = np.log1p(-((tau * c) ** 2)).sum(axis=1) / 2 - scale
    x = a @ np.arctanh(tau * c).T  # (n, nodes)
    plus, minus = np.exp(middle + x), np.exp(middle - x)
    # leaving j = i out: P+ / (1 + y) + P- / (1 - y) = (P+ + P- - y (P+ - P-)) / (1 - y^2) with
    # y = tau c_i a_i, and 1 - y^2 does not depend on a: two matrix products over the nodes
    inverse = 1 / (1 - (tau * c) ** 2)  # (nodes, m)
    ac = a * c
    both, odd = weights * (plus + minus), weights * tau[:, 0] * (plus - minus)
    total = both @ inverse - ac * (odd @ inverse)
    return ac * total - 2 * ac * np.exp(-scale)


@functools.lru_cache(maxsize=64)
def _gauss_legendre(nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes ``(nodes, 1)`` and weights on [0, 1]; cached (an eigenproblem)."""
    tau, weights = np.polynomial.legendre.leggauss(nodes)
    tau, weights = (tau[:, None] + 1) / 2, weights / 2
    tau.flags.writeable = weights.flags.writeable = False  # shared by every call
    return tau, weights


def _adjusted(z: np.ndarray, w: np.ndarray, v: np.ndarray, rng) -> np.ndarray:
    """``phi(g) + KernelSHAP(v - g)`` with ``g`` a kernel ridge fit of the odd part.

    ``g = s . beta + h``: the linear part unpenalised (so an additive game stays exact, as
    KernelSHAP is on it), ``h`` a kernel ridge fit whose interactions are weighted by the main
    effects of their members (:func:`product_kernel`); their strength is chosen by leave-one-out.
    """
    m, n = z.shape[1], len(z) // 2  # z = [representatives, their complements]
    reps = np.concatenate([np.ones((1, m), dtype=bool), z[:n]])  # the ends are a pair too
    u = np.concatenate([[v[1] - v[0]], v[2 : 2 + n] - v[2 + n :]]) / 2
    signs = np.where(reps, 1.0, -1.0)
    # heredity: in fitted models strong interactions mostly join components with strong main
    # effects, so a parity's prior weight is the product of its members' (least-squares) effects
    main = np.abs(np.linalg.lstsq(signs, u, rcond=None)[0])
    # floored: a kernel with fewer than three weighted components would be all zero
    relevance = np.maximum(main / main.max(), _FLOOR) if main.max() > 0 else np.ones(m)
    subset = rng.choice(len(u), size=min(len(u), _LOO_PAIRS), replace=False)
    best = (np.inf, None)
    for strength in _STRENGTHS:
        c = strength * relevance
        kernel = product_kernel(signs[subset], signs[subset], c)
        fit = _semiparametric(kernel, _RIDGE * kernel[0, 0], signs[subset], u[subset])
        if fit[2] < best[0]:
            best = (fit[2], c)
    c = best[1]
    if c is None:  # too few pairs to judge any surrogate: plain KernelSHAP
        return constrained_wls(z, w, v[2:] - v[0], v[1] - v[0])
    kernel = product_kernel(signs, signs, c)
    beta, alpha, _ = _semiparametric(kernel, _RIDGE * kernel[0, 0], signs, u, loo=False)
    phi_g = 2 * beta + alpha @ product_kernel_shapley(signs, c)
    g = signs @ beta + kernel @ alpha  # the surrogate's odd part at each representative
    residual = v - np.concatenate([[-g[0], g[0]], g[1:], -g[1:]])
    return phi_g + constrained_wls(z, w, residual[2:] - residual[0], residual[1] - residual[0])


def _semiparametric(kernel, ridge, X, y, *, loo: bool = True):
    """Kernel ridge with unpenalised linear terms: ``y ~ X beta + K alpha``.

    Returns ``beta``, ``alpha`` and (with ``loo``) the mean squared leave-one-out residual,
    which for this linear smoother is ``(B y)_i / B_ii`` with ``B = A - A X (X'AX)^-1 X'A``,
    ``A = (K + ridge I)^-1``.
    """
    regularised = kernel + ridge * np.eye(len(kernel))
    if not loo:  # one factorisation, no inverse: about 3x cheaper
        solved = np.linalg.solve(regularised, np.column_stack([X, y]))
        AX, Ay = solved[:, :-1], solved[:, -1]
        beta = np.linalg.lstsq(X.T @ AX, AX.T @ y, rcond=None)[0]
        return beta, Ay - AX @ beta, None
    A = np.linalg.inv(regularised)
    AX = A @ X
    projected = np.linalg.lstsq(X.T @ AX, AX.T, rcond=None)[0]
    B = A - AX @ projected
    alpha = B @ y  # = A (y - X beta)
    diagonal = np.diag(B)
    if np.abs(diagonal).min() <= 1e-12 * np.abs(diagonal).max():  # a point fits itself alone
        return projected @ y, alpha, np.inf
    return projected @ y, alpha, float(np.mean((alpha / diagonal) ** 2))


def _allocate(pairs: int, strata: list[int], share: dict, reps: dict) -> dict[int, int]:
    """Split ``pairs`` among strata by share (largest remainders), one each first if possible."""
    if pairs < len(strata):  # too few for every stratum: the largest shares get one each
        top = sorted(strata, key=lambda s: -share[s])[:pairs]
        return {s: int(s in top) for s in strata}
    left = pairs - len(strata)
    total = sum(share[s] for s in strata)
    ideal = {s: left * share[s] / total for s in strata}
    extra = {s: math.floor(ideal[s]) for s in strata}
    for s in sorted(strata, key=lambda s: extra[s] - ideal[s])[: left - sum(extra.values())]:
        extra[s] += 1
    return {s: min(reps[s], 1 + extra[s]) for s in strata}


def _subsets(m, s, n, rng, *, contains_first: bool, all_: bool) -> np.ndarray:
    """``n`` distinct subsets of size ``s`` of ``m`` components as ``(n, m)`` bools, uniform."""
    pool, k = (m - 1, s - 1) if contains_first else (m, s)
    count = math.comb(pool, k)
    if all_ or count <= min(_ENUMERATE_MAX, 4 * n):  # cheaper than rejecting repeats
        flat = itertools.chain.from_iterable(itertools.combinations(range(pool), k))
        index = np.fromiter(flat, dtype=np.int64, count=count * k).reshape(count, k)
        if not all_:
            index = index[rng.choice(count, size=n, replace=False)]
        picked = np.zeros((len(index), pool), dtype=bool)
        np.put_along_axis(picked, index, True, axis=1)
    else:  # a large stratum: draw random subsets, drop repeats, draw more until n distinct
        picked = np.zeros((0, pool), dtype=bool)
        while len(picked) < n:
            draw = np.argsort(rng.random((2 * n, pool)), axis=1) < k
            both = np.concatenate([picked, draw])
            _, first = np.unique(np.packbits(both, axis=1), axis=0, return_index=True)
            picked = both[np.sort(first)][:n]
    if contains_first:
        picked = np.concatenate([np.ones((len(picked), 1), dtype=bool), picked], axis=1)
    return picked
