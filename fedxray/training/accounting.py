"""Privacy accounting: epsilon of a DP-SGD history, and calibrating the noise multiplier.

A history is a list of (noise_multiplier, sample_rate, steps) entries: Poisson-subsampled
Gaussian mechanisms, composed with Opacus' RDP accountant.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from functools import cache, lru_cache

import numpy as np

from fedxray.errors import BudgetExceededError, FedxrayError

History = list[tuple[float, float, int]]

# RDP orders searched for the best conversion to (epsilon, delta). Any set of orders gives a
# valid upper bound; this one is coarser than Opacus' default 150 orders (whose fractional
# orders cost ~1 s per evaluation in pure Python) and within ~1% of it in practice.
ORDERS = (
    *(1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 2.75, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0, 7.0, 8.0, 9.0),
    *(10.0, 12.0, 14.0, 16.0, 20.0, 24.0, 32.0, 48.0, 64.0, 128.0, 256.0),
)

# Calibration stops once epsilon is within this relative margin of the budget, from below.
_REL_TOLERANCE = 1e-3
_MAX_BISECTIONS = 200
_MAX_SIGMA = 1e4


# How epsilon is shown and stored, everywhere: documents keep 4 decimals, people read 3.
JSON_DECIMALS = 4


def epsilon_value(eps: float | None) -> float | None:
    """Epsilon for a JSON document: 4 decimals; None when infinite (JSON has no infinity)."""
    return None if eps is None or not math.isfinite(eps) else round(float(eps), JSON_DECIMALS)


def epsilon_text(eps: float | None, infinite: str = "inf") -> str:
    """Epsilon as fedxray shows it, in every message and table: 3 decimals (``infinite`` for
    None or infinity: trained without DP).

    It rounds to the documents' 4 decimals first, so that a raw value (a ledger, an update's
    header) and the same value read back from a JSON document show the same text: 3.66549
    is stored as 3.6655, and rounding that again would show 3.666 where the raw value shows
    3.665.
    """
    value = epsilon_value(eps)
    return infinite if value is None else f"{value:.3f}"


def epsilon_left_text(budget: float, spent: float | None) -> str:
    """What remains of ``budget``, as shown beside ``spent``: the difference of the numbers
    people read, so that the two shown add up to the budget (8 = 6.136 + 1.864, where the raw
    values would show 1.863)."""
    shown = epsilon_value(spent)
    if shown is None:
        return epsilon_text(0.0)
    return epsilon_text(max(0.0, budget - float(f"{shown:.3f}")))


def epsilon(history: Iterable[tuple[float, float, int]], delta: float) -> float:
    """Epsilon spent by ``history`` at ``delta`` (0 for an empty history)."""
    from opacus.accountants.analysis import rdp as opacus_rdp  # slow import: only when used

    total = np.zeros(len(ORDERS))
    for s, q, n in history:
        if int(n) <= 0:
            continue
        if float(s) <= 0:
            return math.inf
        total += int(n) * _rdp_per_step(float(s), float(q))
    if not total.any():
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "optimal order is the smallest/largest alpha"
        eps, _ = opacus_rdp.get_privacy_spent(orders=list(ORDERS), rdp=total, delta=delta)
    return float(eps)


@lru_cache(maxsize=1024)
def _rdp_per_step(sigma: float, q: float) -> np.ndarray:
    """RDP of one Poisson-subsampled Gaussian step at each order (Opacus' analysis)."""
    from opacus.accountants.analysis import rdp as opacus_rdp

    out = opacus_rdp.compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=list(ORDERS))
    out = np.asarray(out, dtype=np.float64)
    out.setflags(write=False)
    return out


def steps_per_epoch(num_units: int, batch_size: int) -> tuple[float, int]:
    """(sample rate, steps per epoch) for Poisson sampling with an expected batch size."""
    if num_units < 1:
        raise FedxrayError("the shard is empty: nothing to train on")
    if batch_size < 1:
        raise FedxrayError(f"batch size must be positive, got {batch_size}")
    q = min(1.0, batch_size / num_units)
    return q, max(1, math.ceil(num_units / batch_size))


def calibrate_noise(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, prior: History = ()
) -> float:
    """The noise multiplier whose epsilon(prior + planned steps) is within 0.1% of ``target``
    from below: target * (1 - 0.001) < epsilon <= target."""
    if not target_epsilon > 0:
        raise FedxrayError(f"target epsilon must be positive, got {target_epsilon}")
    if not 0 < delta < 1:
        raise FedxrayError(f"delta must be in (0, 1), got {delta}")
    prior = list(prior)
    spent = epsilon(prior, delta)
    if spent >= target_epsilon:
        raise BudgetExceededError(
            f"epsilon {epsilon_text(spent)} of the budget {target_epsilon:g} is already spent"
        )

    @cache
    def eps_at(sigma: float) -> float:
        return epsilon([*prior, (sigma, sample_rate, steps)], delta)

    lo, hi = 0.0, 1.0
    while eps_at(hi) > target_epsilon:
        lo, hi = hi, hi * 2
        if hi > _MAX_SIGMA:
            raise BudgetExceededError(
                f"privacy budget epsilon={target_epsilon:g} is too small to train at all",
                hint="raise the plan's target epsilon or train fewer steps",
            )
    # Invariant: eps_at(lo) > target >= eps_at(hi); epsilon falls continuously as sigma grows.
    # False position on log(epsilon) against log(sigma), nearly a straight line, aiming at the
    # middle of the window (Illinois rule against stalling; bisection when it leaves the
    # bracket): a few evaluations instead of a dozen, each costing ~0.1 s of Opacus' analysis.
    goal = math.log(target_epsilon * (1 - _REL_TOLERANCE / 2))
    weight, moved = {"lo": 1.0, "hi": 1.0}, None
    for _ in range(_MAX_BISECTIONS):
        if eps_at(hi) > target_epsilon * (1 - _REL_TOLERANCE) or hi - lo <= 1e-12 * hi:
            break
        mid = (lo + hi) / 2
        if lo > 0 and math.isfinite(eps_at(lo)):
            x0, x1 = math.log(lo), math.log(hi)
            y0 = (math.log(eps_at(lo)) - goal) * weight["lo"]
            y1 = (math.log(eps_at(hi)) - goal) * weight["hi"]
            guess = math.exp(x1 - y1 * (x1 - x0) / (y1 - y0))
            mid = guess if lo < guess < hi else mid
        side = "lo" if eps_at(mid) > target_epsilon else "hi"
        other = "hi" if side == "lo" else "lo"
        lo, hi = (mid, hi) if side == "lo" else (lo, mid)
        weight[side] = 1.0
        if moved == side:  # the other end held twice: pull it in (Illinois)
            weight[other] /= 2
        moved = side
    return hi
