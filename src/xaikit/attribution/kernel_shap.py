"""KernelSHAP (Lundberg & Lee 2017): Shapley values by weighted least squares on coalitions.

The Shapley values of the game ``v(z)`` (the target score with components ``z`` kept, see
:class:`~xaikit.attribution.lime.CoalitionGame`) are the solution of a linear regression over
all coalitions with the Shapley kernel ``k(s) = (M-1) / (C(M, s) s (M-s))`` as weights, under
the efficiency constraint ``sum(phi) = v(1) - v(0)`` (Lundberg & Lee 2017, Theorem 2; Charnes
et al. 1988). With ``samples >= 2^M`` every coalition is evaluated and the result is exact.

Otherwise the coalitions are stratified by size. Sizes ``s`` and ``M - s`` form one stratum
whose total kernel weight ``W = (M-1)/(s (M-s))`` per size is known exactly. Small and large
sizes are enumerated while the budget allows (as shap's KernelExplainer does); the other strata
get a share of the budget, and each draws distinct coalitions of size ``s`` uniformly without
replacement, each with its complement (antithetic pairs, Covert & Lee 2021). Every sampled
coalition of a stratum weighs ``W / n`` where ``n`` is the number drawn there: the regression
then uses each stratum's exact weight instead of noisy draw counts, and no forward pass is spent
on a coalition twice.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from xaikit._validation import check_positive_int
from xaikit.attribution.lime import assemble, check_seed, games_for
from xaikit.attribution.registry import Attribution, register
from xaikit.model import Model

REFERENCE = "Lundberg & Lee 2017, A Unified Approach to Interpreting Model Predictions, NeurIPS"

# Enumerate a stratum and pick from it when it holds at most this many times the draws needed
# (cheaper than rejecting duplicates); also bounds the enumeration's memory.
_ENUMERATE_RATIO = 4
_ENUMERATE_MAX = 2**20
_POWER = 1.0
_CONTROL = 0.0
_CW = "uniform"
_ORDER = 3
_KRR = True
_WALSH = True
_GRID = (0.025, 0.05, 0.1, 0.2, 0.4)
_GAMMA = 0


def _walsh(z, w, v, lam, gamma):
    m = z.shape[1]
    ends = np.zeros((2, m), dtype=bool)
    ends[1] = True
    za = np.concatenate([ends, z])
    sa = np.where(za, 1.0, -1.0)
    disagree = (m - sa @ sa.T) / 2
    rho = (1 - gamma) / (1 + gamma)
    K = rho ** disagree
    if _CW == "kernel":
        wa = np.concatenate([[w.max() * 10, w.max() * 10], w]); wa = wa / wa.mean()
    else:
        wa = np.ones(len(za))
    mu = v.mean()
    alpha = np.linalg.solve(K + lam * np.diag(1 / wa), v - mu)
    g = K @ alpha + mu
    # c(a) for a = 0..m-1 plus entries among the other m-1
    nodes, wq = np.polynomial.legendre.leggauss(m // 2 + 2)
    tau = (nodes + 1) / 2; wq = wq / 2
    a = np.arange(m)[:, None]; b = m - 1 - a
    gt = gamma * tau[None, :]
    c = (0.5 * ((1 + gt) ** a * (1 - gt) ** b + (1 - gt) ** a * (1 + gt) ** b)) @ wq
    plus = za.sum(1, keepdims=True) - za  # plus entries among the others
    per = 2 * gamma * sa * c[plus] / (1 + gamma) ** m
    phi_g = alpha @ per
    r = v - g
    return phi_g + constrained_wls(z, w, r[2:] - r[0], r[1] - r[0])


def _with_krr(z, w, v, lam):
    if _WALSH and _GAMMA == 0:
        m = z.shape[1]
        ends = np.zeros((2, m), dtype=bool)
        ends[1] = True
        za = np.concatenate([ends, z])
        sa = np.where(za, 1.0, -1.0)
        disagree = (m - sa @ sa.T) / 2
        best = None
        for gamma in _GRID:
            rho = (1 - gamma) / (1 + gamma)
            K = rho ** disagree
            A = np.linalg.inv(K + lam * np.eye(len(K)))
            al = A @ (v - v.mean())
            loo = np.mean((al / np.diag(A)) ** 2)
            if best is None or loo < best[0]:
                best = (loo, gamma)
        return _walsh(z, w, v, lam, best[1])
    if _WALSH:
        return _walsh(z, w, v, lam, _GAMMA)
    m = z.shape[1]
    ends = np.zeros((2, m), dtype=bool)
    ends[1] = True
    za = np.concatenate([ends, z]).astype(np.float64)
    base = 1.0 + _GAMMA
    K = base ** (za @ za.T)
    if _CW == "kernel":
        wa = np.concatenate([[w.max() * 10, w.max() * 10], w]); wa = wa / wa.mean()
    else:
        wa = np.ones(len(za))
    y = v - v.mean()
    scale = np.trace(K) / len(K)
    alpha = np.linalg.solve(K + lam * scale * np.diag(1 / wa), y)
    g = K @ alpha + v.mean()
    size = za.sum(1)
    per = np.where(size > 0, (base ** size - 1) / np.maximum(size, 1), 0.0)
    phi_g = (alpha * per) @ za
    r = v - g
    return phi_g + constrained_wls(z, w, r[2:] - r[0], r[1] - r[0])


def _with_control(z, w, v, lam):
    if _KRR:
        return _with_krr(z, w, v, lam)
    m = z.shape[1]
    ends = np.zeros((2, m), dtype=bool)
    ends[1] = True
    za = np.concatenate([ends, z])
    cols, share = [za], [np.eye(m)]
    if _ORDER >= 2:
        i, j = np.triu_indices(m, 1)
        cols.append(za[:, i] & za[:, j])
        sh = np.zeros((len(i), m)); sh[np.arange(len(i)), i] = 0.5; sh[np.arange(len(i)), j] = 0.5
        share.append(sh)
    if _ORDER >= 3:
        t = np.array(list(itertools.combinations(range(m), 3)))
        cols.append(za[:, t[:, 0]] & za[:, t[:, 1]] & za[:, t[:, 2]])
        sh = np.zeros((len(t), m))
        for c in range(3): sh[np.arange(len(t)), t[:, c]] = 1/3
        share.append(sh)
    X = np.concatenate(cols, axis=1).astype(np.float64)
    S = np.concatenate(share)
    if _CW == "kernel":
        wa = np.concatenate([[w.max() * 10, w.max() * 10], w])
    else:
        wa = np.ones(len(za))
    pen = np.full(X.shape[1], lam)
    pen[:m] = 1e-9
    tot = wa.sum()
    xm = wa @ X / tot
    ym = wa @ v / tot
    Xc, yc = X - xm, v - ym
    gram = Xc.T @ (wa[:, None] * Xc) / tot
    gram[np.diag_indices_from(gram)] += pen
    coef = np.linalg.solve(gram, Xc.T @ (wa * yc) / tot)
    g = ym + Xc @ coef
    phi_g = coef @ S
    r = v - g
    return phi_g + constrained_wls(z, w, r[2:] - r[0], r[1] - r[0])


@register("kernel_shap", needs_gradients=False, reference=REFERENCE)
def kernel_shap(
    model: Model,
    x: np.ndarray,
    targets: np.ndarray,
    *,
    components: Any = "auto",
    samples: int | str = "auto",
    baseline: Any = None,
    seed: int | None = None,
) -> Attribution:
    """KernelSHAP: Shapley values of the components, summing to ``v(1) - v(0)`` exactly.

    Parameters
    ----------
    components : "auto", str, or int array
        As for ``lime``: a segmentation name or an id map (relabelled to ``0 .. M-1``).
    samples : int or "auto"
        Coalitions evaluated, the empty and the full one included (at least 2); ``"auto"``:
        ``2 M + 2048`` like shap. From ``2^M`` on, all coalitions: exact Shapley values.
    baseline : None, number, str, array, or background rows
        What a removed component becomes (see ``lime``). Background rows ``(R, *x.shape)``
        give the interventional expectation ``v(z) = mean_r f(x_z, r_{not z})``, so the values
        sum to ``f(x) - mean_r f(r)``; each coalition then costs R forward passes.
    seed : int, optional
        Seeds the sampled coalitions (the same for every item of a batch).

    Returns
    -------
    Attribution
        ``component_values (N, M)`` (Shapley values, padded with 0), ``info``:
        ``expected_value`` (``v(0)``, E[f(baseline)]), ``score`` (``v(1)``), ``efficiency_gap``
        (``sum(phi) - (v(1) - v(0))``, float error only), ``samples`` (coalitions evaluated),
        ``exact`` (all coalitions enumerated), ``explained_output``.

    References
    ----------
    Lundberg & Lee 2017, NeurIPS. Covert & Lee 2021, Improving KernelSHAP: Practical Shapley
    Value Estimation via Linear Regression, AISTATS (paired sampling).
    """
    if samples != "auto":
        samples = check_positive_int(samples, name="samples")
        if samples < 2:
            raise ValueError(
                f"samples: expected at least 2 (the empty and the full coalition), got {samples}"
            )
    seed = check_seed(seed)
    games = games_for(model, x, targets, components=components, baseline=baseline, seed=seed)
    fits, rows = [], []
    for game in games:
        budget = 2 * game.m + 2048 if samples == "auto" else samples
        z, w, exact = shapley_coalitions(game.m, budget, np.random.default_rng(seed))
        ends = np.zeros((2, game.m), dtype=bool)
        ends[1] = True
        v = game(np.concatenate([ends, z]))
        empty, full = v[0], v[1]
        if _CONTROL and not exact and len(z):
            phi = _with_control(z, w, v, _CONTROL)
        else:
            phi = constrained_wls(z, w, v[2:] - empty, full - empty)
        fits.append((game, phi))
        rows.append((empty, full, phi.sum() - (full - empty), game.evaluations, exact))
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


def shapley_coalitions(m: int, budget: int, rng: np.random.Generator):
    """Coalitions for KernelSHAP within ``budget`` evaluations (2 kept for the empty and full).

    Returns ``(z, weights, exact)``: ``z (n, m)`` bools without the empty and full coalitions,
    their regression weights (summing to 1), and whether every coalition is there.
    """
    if m <= 30 and budget >= 2**m:
        codes = np.arange(1, 2**m - 1, dtype=np.int64)
        z = ((codes[:, None] >> np.arange(m)) & 1).astype(bool)
        size = z.sum(axis=1)
        kernel = (m - 1) / (
            np.array([math.comb(m, s) for s in range(m + 1)])[size] * size * (m - size)
        )
        return z, kernel / kernel.sum(), True
    pairs = (budget - 2) // 2
    # One stratum per size pair {s, m - s}; when 2s == m the pairs {S, not S} are drawn as the
    # subsets S that contain component 0.
    strata = list(range(1, m // 2 + 1))
    reps = {s: math.comb(m - 1, s - 1) if 2 * s == m else math.comb(m, s) for s in strata}
    weight = {s: (m - 1) / (s * (m - s)) * (1 if 2 * s == m else 2) for s in strata}
    share = {s: weight[s] ** _POWER for s in strata}
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
        if n == 0:
            continue
        chosen = _subsets(m, s, n, rng, contains_first=2 * s == m, enumerate_all=n == reps[s])
        parts.append(np.concatenate([chosen, ~chosen]))
        weights.append(np.full(2 * n, weight[s] / (2 * n)))
    if not parts:  # budget 2 or 3: only the ends; the fit spreads v(1) - v(0) evenly
        return np.zeros((0, m), dtype=bool), np.zeros(0), False
    w = np.concatenate(weights)
    return np.concatenate(parts), w / w.sum(), False


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


def _allocate(pairs: int, strata: list[int], share: dict, reps: dict) -> dict[int, int]:
    """Split ``pairs`` among strata by share (largest remainders), one each first if possible."""
    base = {s: 1 if pairs >= len(strata) else 0 for s in strata}
    if pairs < len(strata):  # too few for every stratum: the largest shares get one each
        for s in sorted(strata, key=lambda s: -share[s])[:pairs]:
            base[s] = 1
        return base
    left = pairs - len(strata)
    total = sum(share[s] for s in strata)
    ideal = {s: left * share[s] / total for s in strata}
    extra = {s: math.floor(ideal[s]) for s in strata}
    by_remainder = sorted(strata, key=lambda s: extra[s] - ideal[s])
    for s in by_remainder[: left - sum(extra.values())]:
        extra[s] += 1
    return {s: min(reps[s], base[s] + extra[s]) for s in strata}


def _subsets(m, s, n, rng, *, contains_first: bool, enumerate_all: bool) -> np.ndarray:
    """``n`` distinct subsets of size ``s`` of ``m`` components as ``(n, m)`` bools, uniform."""
    pool, k = (m - 1, s - 1) if contains_first else (m, s)
    count = math.comb(pool, k)
    if enumerate_all or count <= min(_ENUMERATE_MAX, _ENUMERATE_RATIO * n):
        flat = itertools.chain.from_iterable(itertools.combinations(range(pool), k))
        index = np.fromiter(flat, dtype=np.int64, count=count * k).reshape(count, k)
        if not enumerate_all:
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
