"""KernelSHAP (Lundberg & Lee 2017): Shapley values by weighted least squares on coalitions.

The Shapley values of the game ``v(z)`` (the target score with components ``z`` kept, see
:class:`~xaikit.attribution.coalitions.CoalitionGame`) solve a regression over all coalitions with
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

from xaikit._progress import progress_bar
from xaikit._validation import check_count, check_memory
from xaikit.attribution.coalitions import (
    assemble,
    check_seed,
    games_for,
    row_keys,
    single_threaded_blas,
)
from xaikit.attribution.perturbation import chunk_sizes, values_dtype
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
# The surrogate's kernel matrix is quadratic in the pairs it is fitted on: at most this many
# (32 MiB); more pairs are fitted on a random subset of them and all pairs still correct it.
_SURROGATE_PAIRS = 2048
_KERNEL_ROWS = 256  # pairs whose surrogate value is computed at once (a 4 MiB buffer)
_CODES_PER_CHUNK = 2**16  # coalitions built, scored and summed per chunk
# Memory held per sampled coalition besides its m bits-as-bytes (a pair's scores and weight,
# the complement, the deduplication of draws), for the up-front estimate.
_BYTES_PER_COALITION = 48


@register("kernel_shap", needs_gradients=False, reference=REFERENCE, scores_at_input=True)
def kernel_shap(
    model: Model,
    x: np.ndarray,
    targets: np.ndarray | None,
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
        samples = check_count(samples, name="samples")
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
        if exact:  # every coalition, streamed: memory of one chunk even for 2^30 of them
            v0, v1, phi = _exact(game)
        else:
            # Distinct draws must be remembered: the coalitions are held (bits and scores),
            # everything else streams.
            check_memory(
                budget, _BYTES_PER_COALITION + m, name="samples",
                what=f"distinct coalitions of {m} components (kept to draw them without repeats)",
            )  # fmt: skip
            reps, pair_w = shapley_pairs(m, budget, rng)
            v = _pair_values(game, reps)
            v0, v1 = v[0], v[1]
            with single_threaded_blas():
                if m < 3 or len(reps) < m + 1:  # a surrogate needs pairs per unknown
                    phi = _paired_wls(reps, pair_w, v, np.zeros(len(v)))
                else:
                    phi = _adjusted(reps, pair_w, v, rng)
        fits.append((game, phi))
        rows.append((v0, v1, phi.sum() - (v1 - v0), game.evaluations, exact))
    empty, full, gap, used, exact = (np.array(c) for c in zip(*rows, strict=True))
    info = {
        "expected_value": empty,
        "score": full,
        "efficiency_gap": gap,
        "samples": used,
        "exact": exact,
        "explained_output": model.output,
    }
    return assemble(x, fits, info, dtype=values_dtype(model, x))


def _exact(game) -> tuple[float, float, np.ndarray]:
    """``v(0)``, ``v(1)`` and the exact Shapley values from every coalition, chunk by chunk.

    The coalitions run in the order ``[empty, full, codes 1 .. 2^m - 2]`` and the weighted
    normal equations of :func:`constrained_wls` are summed per chunk (never all coalitions).
    """
    m = game.m
    comb = np.array([math.comb(m, s) for s in range(m + 1)], dtype=np.float64)
    total = sum((m - 1) / (s * (m - s)) for s in range(1, m))  # sum of all kernel weights
    ends = np.zeros((2, m), dtype=bool)
    ends[1] = True

    def coalitions():
        yield ends
        for start in range(1, 2**m - 1, _CODES_PER_CHUNK):
            codes = np.arange(start, min(start + _CODES_PER_CHUNK, 2**m - 1), dtype=np.int64)
            yield ((codes[:, None] >> np.arange(m)) & 1).astype(bool)

    normal = NormalEquations(m)
    v0 = v1 = None
    with progress_bar(2**m, "KernelSHAP coalitions") as bar:
        for z, v in game.stream(coalitions()):
            bar.advance(len(z))
            if v0 is None:  # the first chunk starts with the two ends
                v0, v1, z, v = v[0], v[1], z[2:], v[2:]
            size = z.sum(axis=1)
            kernel = (m - 1) / (comb[size] * size * (m - size)) / total
            with single_threaded_blas():
                normal.add(z, kernel, v)
    with single_threaded_blas():
        phi = normal.solve(v0=v0, total=v1 - v0)
    return v0, v1, phi


def _pair_values(game, reps: np.ndarray) -> np.ndarray:
    """``v`` on ``[empty, full, reps, complements of reps]`` (in that order), chunk by chunk."""
    ends = np.zeros((2, game.m), dtype=bool)
    ends[1] = True

    def coalitions():
        yield ends
        for flip in (False, True):
            for start in range(0, len(reps), _CODES_PER_CHUNK):
                chunk = reps[start : start + _CODES_PER_CHUNK]
                yield ~chunk if flip else chunk

    v = np.empty(2 + 2 * len(reps))
    done = 0
    with progress_bar(len(v), "KernelSHAP coalitions") as bar:
        for z, values in game.stream(coalitions()):
            v[done : done + len(z)] = values
            done += len(z)
            bar.advance(len(z))
    return v


def _paired_wls(reps, pair_w, v, g) -> np.ndarray:
    """:func:`constrained_wls` of ``v - g`` on the coalitions ``[reps, ~reps]`` (each pair's
    weight halved over its two members), streamed over chunks of the representatives."""
    n = len(reps)
    y = v - g
    normal = NormalEquations(reps.shape[1])
    for start in range(0, n, _CODES_PER_CHUNK):
        stop = min(n, start + _CODES_PER_CHUNK)
        w = pair_w[start:stop] / 2
        normal.add(reps[start:stop], w, y[2 + start : 2 + stop])
        normal.add(~reps[start:stop], w, y[2 + n + start : 2 + n + stop])
    return normal.solve(v0=y[0], total=y[1] - y[0])


class NormalEquations:
    """The weighted normal equations of :func:`constrained_wls`, summed chunk by chunk."""

    def __init__(self, m: int) -> None:
        self.xtwx, self.xtwy, self.xtw = np.zeros((m, m)), np.zeros(m), np.zeros(m)

    def add(self, z: np.ndarray, weights: np.ndarray, y: np.ndarray) -> None:
        X = z.astype(np.float64)
        wX = weights[:, None] * X
        self.xtwx += X.T @ wX
        self.xtwy += wX.T @ y
        self.xtw += wX.sum(axis=0)

    def solve(self, *, v0: float, total: float) -> np.ndarray:
        """Shapley values for targets ``y - v0`` under ``sum(phi) = total``."""
        return _solve_kkt(self.xtwx, self.xtwy - v0 * self.xtw, total)


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
    normal = NormalEquations(z.shape[1])
    normal.add(z, weights, y)
    return normal.solve(v0=0.0, total=total)


def _solve_kkt(xtwx: np.ndarray, rhs_top: np.ndarray, total: float) -> np.ndarray:
    m = len(xtwx)
    kkt = np.zeros((m + 1, m + 1))
    kkt[:m, :m] = xtwx
    kkt[:m, m] = kkt[m, :m] = 1.0
    rhs = np.append(rhs_top, total)
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
    odd = _odd_part(a, b, c)
    odd -= (a * c) @ b.T * np.exp(-np.log1p(c).sum())
    return odd


def product_kernel_times(a: np.ndarray, b: np.ndarray, c: np.ndarray, weights: np.ndarray):
    """``product_kernel(a, b, c) @ weights`` with the linear terms as ``(a c) @ (b' weights)``:
    one ``(len(a), len(b))`` buffer and a matrix-vector product (the kernel matrix is never
    built whole; the caller passes ``a`` in chunks)."""
    linear = (a * c) @ (b.T @ weights) * np.exp(-np.log1p(c).sum())
    return _odd_part(a, b, c) @ weights - linear


def _odd_part(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``(exp(base + x) - exp(base - x)) / 2`` with ``x = (a atanh(c)) b'``, in place."""
    base = 0.5 * np.log1p(-(c**2)).sum() - np.log1p(c).sum()
    slopes = np.arctanh(c)
    x = (a * slopes) @ b.T
    if slopes.sum() < 700:  # |x| <= sum(slopes): sinh stays finite, one pass instead of two
        np.sinh(x, out=x)
        x *= np.exp(base)
        return x
    plus = np.add(base, x)
    np.exp(plus, out=plus)
    np.subtract(base, x, out=x)
    np.exp(x, out=x)
    plus -= x
    plus /= 2
    return plus


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


def _adjusted(reps: np.ndarray, pair_w: np.ndarray, v: np.ndarray, rng) -> np.ndarray:
    """``phi(g) + KernelSHAP(v - g)`` with ``g`` a kernel ridge fit of the odd part.

    ``g = s . beta + h``: the linear part unpenalised (so an additive game stays exact, as
    KernelSHAP is on it), ``h`` a kernel ridge fit whose interactions are weighted by the main
    effects of their members (:func:`product_kernel`); their strength is chosen by leave-one-out.
    The fit uses at most ``_SURROGATE_PAIRS`` pairs (the ends and a random subset beyond: its
    kernel matrix is quadratic in them); ``g`` is then evaluated on every pair chunk by chunk.
    """
    m, n = reps.shape[1], len(reps)
    u = np.concatenate([[v[1] - v[0]], v[2 : 2 + n] - v[2 + n :]]) / 2
    if n + 1 <= _SURROGATE_PAIRS:
        fitted = np.arange(n + 1)
    else:  # the ends and a random subset of the other pairs
        fitted = np.concatenate(
            [[0], 1 + np.sort(rng.choice(n, _SURROGATE_PAIRS - 1, replace=False))]
        )
    signs = np.where(_with_ends(reps[fitted[1:] - 1]), 1.0, -1.0)  # the ends are a pair too
    u_f = u[fitted]
    # heredity: in fitted models strong interactions mostly join components with strong main
    # effects, so a parity's prior weight is the product of its members' (least-squares) effects
    main = np.abs(np.linalg.lstsq(signs, u_f, rcond=None)[0])
    # floored: a kernel with fewer than three weighted components would be all zero
    relevance = np.maximum(main / main.max(), _FLOOR) if main.max() > 0 else np.ones(m)
    subset = rng.choice(len(u_f), size=min(len(u_f), _LOO_PAIRS), replace=False)
    best = (np.inf, None)
    for strength in _STRENGTHS:
        c = strength * relevance
        kernel = product_kernel(signs[subset], signs[subset], c)
        fit = _semiparametric(kernel, _RIDGE * kernel[0, 0], signs[subset], u_f[subset])
        if fit[2] < best[0]:
            best = (fit[2], c)
    c = best[1]
    if c is None:  # too few pairs to judge any surrogate: plain KernelSHAP
        return _paired_wls(reps, pair_w, v, np.zeros(len(v)))
    kernel = product_kernel(signs, signs, c)
    beta, alpha, _ = _semiparametric(kernel, _RIDGE * kernel[0, 0], signs, u_f, loo=False)
    phi_g = 2 * beta + alpha @ product_kernel_shapley(signs, c)
    # the surrogate's odd part at the ends and at each representative, chunk by chunk
    if len(fitted) == n + 1:
        g = signs @ beta + kernel @ alpha
    else:  # O(pairs x fitted pairs x m) time, one (_KERNEL_ROWS, fitted pairs) buffer
        g = np.empty(n + 1)
        for start in range(0, n + 1, _KERNEL_ROWS):
            stop = min(n + 1, start + _KERNEL_ROWS)
            part = reps[max(0, start - 1) : stop - 1]
            chunk = np.where(_with_ends(part) if start == 0 else part, 1.0, -1.0)
            g[start:stop] = chunk @ beta + product_kernel_times(chunk, signs, c, alpha)
    surrogate = np.concatenate([[-g[0], g[0]], g[1:], -g[1:]])
    return phi_g + _paired_wls(reps, pair_w, v, surrogate)


def _with_ends(reps: np.ndarray) -> np.ndarray:
    """The representatives with the full coalition first (the ends are a pair too)."""
    return np.concatenate([np.ones((1, reps.shape[1]), dtype=bool), reps])


def _semiparametric(kernel, ridge, X, y, *, loo: bool = True):
    """Kernel ridge with unpenalised linear terms: ``y ~ X beta + K alpha``.

    Returns ``beta``, ``alpha`` and (with ``loo``) the mean squared leave-one-out residual,
    which for this linear smoother is ``(B y)_i / B_ii`` with ``B = A - A X (X'AX)^-1 X'A``,
    ``A = (K + ridge I)^-1``.
    """
    regularized = kernel.copy()  # kernel + ridge I, without an identity matrix
    regularized.flat[:: len(kernel) + 1] += ridge
    if not loo:  # one factorisation, no inverse: about 3x cheaper
        solved = _solve_positive(regularized, np.column_stack([X, y]))
        AX, Ay = solved[:, :-1], solved[:, -1]
        beta = np.linalg.lstsq(X.T @ AX, AX.T @ y, rcond=None)[0]
        return beta, Ay - AX @ beta, None
    A = np.linalg.inv(regularized)
    AX = A @ X
    projected = np.linalg.lstsq(X.T @ AX, AX.T, rcond=None)[0]
    B = A - AX @ projected
    alpha = B @ y  # = A (y - X beta)
    diagonal = np.diag(B)
    if np.abs(diagonal).min() <= 1e-12 * np.abs(diagonal).max():  # a point fits itself alone
        return projected @ y, alpha, np.inf
    return projected @ y, alpha, float(np.mean((alpha / diagonal) ** 2))


def _solve_positive(matrix: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """``matrix^-1 rhs`` for a kernel matrix plus a ridge (symmetric positive definite): by
    Cholesky, half the work of the LU in ``np.linalg.solve`` (Golub & Van Loan 2013, Sec. 4.2);
    LU when rounding leaves the matrix not quite positive definite."""
    from scipy.linalg import LinAlgError, cho_factor, cho_solve  # on first use: light import

    try:
        factor = cho_factor(matrix, lower=True, check_finite=False)
    except LinAlgError:
        return np.linalg.solve(matrix, rhs)
    return cho_solve(factor, rhs, check_finite=False)


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
    if all_:  # the whole stratum, enumerated chunk by chunk (no index array of all of it)
        combinations = itertools.combinations(range(pool), k)
        picked = np.zeros((count, pool), dtype=bool)
        for start in range(0, count, _CODES_PER_CHUNK):
            rows = min(_CODES_PER_CHUNK, count - start)
            flat = itertools.chain.from_iterable(itertools.islice(combinations, rows))
            index = np.fromiter(flat, dtype=np.int64, count=rows * k).reshape(rows, k)
            np.put_along_axis(picked[start : start + rows], index, True, axis=1)
    elif count <= min(_ENUMERATE_MAX, 4 * n):  # cheaper than rejecting repeats
        flat = itertools.chain.from_iterable(itertools.combinations(range(pool), k))
        index = np.fromiter(flat, dtype=np.int64, count=count * k).reshape(count, k)
        index = index[rng.choice(count, size=n, replace=False)]
        picked = np.zeros((len(index), pool), dtype=bool)
        np.put_along_axis(picked, index, True, axis=1)
    else:  # a large stratum: draw random subsets, drop repeats, draw more until n distinct
        packed = np.zeros((0, (pool + 7) // 8), dtype=np.uint8)  # 8 components a byte
        while len(packed) < n:
            draws = [
                np.packbits(np.argsort(rng.random((rows, pool)), axis=1) < k, axis=1)
                for rows in chunk_sizes(2 * n, _CODES_PER_CHUNK)
            ]  # the same draws as one (2n, pool) array, in memory of one chunk
            both = np.concatenate([packed, *draws])
            _, first = np.unique(row_keys(both), return_index=True)  # first draws kept
            packed = both[np.sort(first)][:n]
        picked = np.unpackbits(packed, axis=1, count=pool).astype(bool)
    if contains_first:
        picked = np.concatenate([np.ones((len(picked), 1), dtype=bool), picked], axis=1)
    return picked
