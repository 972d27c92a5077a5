"""Exact binomial tails and one-sided Clopper-Pearson bounds.

Everything goes through the regularised incomplete beta function (scipy.special), which is
exact to floating-point precision: P[Binomial(n, p) >= k] = I_p(k, n - k + 1).
"""

from __future__ import annotations

import numpy as np
from scipy import special


def tail(k, n: int, p) -> np.ndarray:
    """P[Binomial(n, p) >= k] for integer ``k`` (1 for k <= 0, 0 for k > n); k, p broadcast."""
    k = np.asarray(k, dtype=np.int64)
    p = np.asarray(p, dtype=np.float64)
    inside = (k >= 1) & (k <= n)
    kk = np.clip(k, 1, max(n, 1))
    out = special.betainc(kk, n - kk + 1, p) if n >= 1 else np.zeros(np.broadcast(k, p).shape)
    return np.where(k <= 0, 1.0, np.where(inside, out, 0.0))


def pmf(k, n: int, p) -> np.ndarray:
    """P[Binomial(n, p) = k] for integer ``k`` (0 outside 0..n); k and p broadcast."""
    k = np.asarray(k, dtype=np.int64)
    p = np.asarray(p, dtype=np.float64)
    ok = (k >= 0) & (k <= n)
    kk = np.where(ok, k, 0)
    log = (
        special.gammaln(n + 1)
        - special.gammaln(kk + 1)
        - special.gammaln(n - kk + 1)
        + special.xlogy(kk, p)
        + special.xlog1py(n - kk, -p)
    )
    return np.where(ok, np.exp(log), 0.0)


def clopper_pearson_lower(successes, trials, alpha: float) -> np.ndarray:
    """One-sided lower bound on a success rate: P[rate < bound] <= alpha (0 with no success)."""
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    _check(k, n, alpha)
    with np.errstate(invalid="ignore", divide="ignore"):
        b = special.betaincinv(np.maximum(k, 1), np.maximum(n - k + 1, 1), alpha)
    return np.where(k <= 0, 0.0, b)


def clopper_pearson_upper(successes, trials, alpha: float) -> np.ndarray:
    """One-sided upper bound on a success rate: P[rate > bound] <= alpha (1 when all succeed)."""
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    _check(k, n, alpha)
    return 1.0 - clopper_pearson_lower(n - k, n, alpha)


def _check(k: np.ndarray, n: np.ndarray, alpha: float) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if np.any(n < 1) or np.any(k < 0) or np.any(k > n):
        raise ValueError("need 0 <= successes <= trials and trials >= 1")
