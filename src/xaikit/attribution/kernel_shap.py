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
   kernel ridge part over Walsh (parity) functions of odd degree 3, 5, ..., one weight per
   degree; in the ±1 coding that kernel depends only on the Hamming distance, through
   Krawtchouk polynomials (O'Donnell 2014, ch. 1). A parity on a set ``T`` gives each member
   ``2 / |T|``, hence ``phi(g)`` in closed form. The weights' decay and the ridge are chosen by
   leave-one-out error on the evaluated pairs.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from xaikit._validation import check_positive_int
from xaikit.attribution.lime import assemble, check_seed, games_for, single_threaded_blas
from xaikit.attribution.registry import Attribution, register
from xaikit.model import Model

REFERENCE = "Lundberg & Lee 2017, A Unified Approach to Interpreting Model Predictions, NeurIPS"

# Surrogate: the linear part free, odd Walsh degrees 3 .. _MAX_DEGREE weighted 1, r5, r5^2, ...;
# r5 chosen by leave-one-out on at most _LOO_PAIRS pairs (bounded cost). On 96 ReLU-MLP games
# (M = 12) a wider r5 grid, a ridge grid or 128-256 LOO pairs changed the error by < 2%.
_MAX_DEGREE = 15
_R5 = (0.1, 0.3, 1.0)
_RIDGES = (1e-2,)  # relative to the kernel's diagonal
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


def walsh_kernel(n: int, x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``sum_d weights[..., d] K_d(x; n) / C(n, d)``: Walsh functions of degree d at distance x.

    ``K_d`` are Krawtchouk polynomials, evaluated by their three-term recurrence in normalised
    form (values in [-1, 1]), two degrees held at a time. ``weights`` ``(D+1,)`` gives one
    kernel; ``(k, D+1)`` gives ``k`` kernels from one pass.
    """
    x = np.asarray(x, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    previous, current = np.zeros_like(x), np.ones_like(x)
    total = np.multiply.outer(weights[..., 0], current)
    for d in range(min(weights.shape[-1] - 1, n)):
        previous, current = current, ((n - 2 * x) * current - d * previous) / (n - d)
        if np.any(weights[..., d + 1]):
            total += np.multiply.outer(weights[..., d + 1], current)
    return total


def _adjusted(z: np.ndarray, w: np.ndarray, v: np.ndarray, rng) -> np.ndarray:
    """``phi(g) + KernelSHAP(v - g)`` with ``g`` a spectral kernel ridge fit of the odd part.

    ``g = s . beta + h``: the linear part unpenalised (so an additive game stays exact, as
    KernelSHAP is on it), ``h`` a kernel ridge fit with Walsh degrees 3, 5, ... whose weights
    decay by ``r5`` per two degrees; ``r5`` and the ridge are chosen by leave-one-out.
    """
    m, n = z.shape[1], len(z) // 2  # z = [representatives, their complements]
    reps = np.concatenate([np.ones((1, m), dtype=bool), z[:n]])  # the ends are a pair too
    u = np.concatenate([[v[1] - v[0]], v[2 : 2 + n] - v[2 + n :]]) / 2
    signs = np.where(reps, 1.0, -1.0)
    # Hamming distances are integers 0..m: kernels are tables over them, looked up by index
    distance = np.rint((m - signs @ signs.T) / 2).astype(np.intp)
    grid = np.arange(m + 1)
    top = min(m, _MAX_DEGREE) - (1 - min(m, _MAX_DEGREE) % 2)  # highest odd degree used
    subset = rng.choice(len(u), size=min(len(u), _LOO_PAIRS), replace=False)
    near = distance[np.ix_(subset, subset)]
    degree_tables = walsh_kernel(m, grid, np.eye(top + 1)[3::2])  # one per odd degree >= 3
    best = (np.inf, None, None)
    for ridge, r5 in itertools.product(_RIDGES, _R5):
        odd = r5 ** np.arange(len(degree_tables))
        kernel = (odd @ degree_tables)[near]
        fit = _semiparametric(kernel, ridge * odd.sum(), signs[subset], u[subset])
        if fit[2] < best[0]:
            best = (fit[2], odd, ridge)
    _, odd, ridge = best
    if odd is None:  # too few pairs to judge any surrogate: plain KernelSHAP
        return constrained_wls(z, w, v[2:] - v[0], v[1] - v[0])
    sigma = np.zeros(top + 1)
    sigma[3::2] = odd  # weight of each Walsh degree 0..top: odd degrees from 3 on
    kernel = walsh_kernel(m, grid, sigma)[distance]
    beta, alpha, _ = _semiparametric(kernel, ridge * odd.sum(), signs, u, loo=False)
    # a parity on T gives each member 2/|T|: phi_i(h) = sum_p alpha_p sum_d sigma_d (2/m) s_pi
    # K_{d-1}(minus_{p,-i}; m-1) / C(m-1, d-1), with minus the -1 entries of s_p other than i
    minus = (~reps).sum(axis=1, keepdims=True) - ~reps
    lower = walsh_kernel(m - 1, np.arange(m), sigma[1:])[minus]
    phi_g = 2 * beta + alpha @ (lower * signs * (2 / m))
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
