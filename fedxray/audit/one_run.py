"""Privacy auditing with one training run (Steinke, Nasr & Jagielski, NeurIPS 2023).

m canaries are each included in training by an independent fair coin. After training, the
auditor scores every canary, guesses "included" for the k+ highest scores, "excluded" for the
k- lowest, and abstains on the rest; W of the r = k+ + k- guesses are correct.

Their main theorem: if training is (eps, delta)-DP in each canary, then for every v

    P[W >= v] <= P[Binomial(r, q) >= v] + 2 m delta * max_{1<=i<=v} P[v-i <= Binomial(r, q) < v] / i

with q = e^eps / (1 + e^eps), the accuracy of eps-randomised response. (With delta = 0 the
second term vanishes: W is dominated by Binomial(r, q).) The right side is a p-value for the
claim "(eps, delta)-DP". We report the largest eps this claim is rejected for at level
beta = 1 - confidence. Reporting ANY eps whose p-value is <= beta is valid, even if the
p-value were not monotone in eps: (eps0, delta)-DP implies (eps, delta)-DP for all eps >= eps0,
so P[some eps >= eps0 gets p <= beta] <= P[W >= the smallest such v] <= beta.

Choosing k+ and k- after seeing the scores would inflate the bound: every candidate pair is
tested at beta / (number of candidates) (Bonferroni), and the best bound is reported.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import special

from fedxray.audit import binomial

# Fractions of the canaries guessed on (half "in", half "out") when the caller names none.
DEFAULT_GUESS_FRACTIONS = (0.05, 0.1, 0.25, 0.5, 1.0)
_GRID_STEP = 0.1
_BISECT = 30


def p_value(m: int, r: int, v: int, epsilon, delta: float):
    """Upper bound on P[W >= v] for r guesses on m canaries under (epsilon, delta)-DP.

    ``epsilon`` may be an array (one p-value each).
    """
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= correct ({v}) <= guesses ({r}) <= canaries ({m})")
    q = special.expit(np.asarray(epsilon, dtype=np.float64))
    p = binomial.tail(v, r, q)
    if delta > 0 and v > 0:
        # P[v-i <= B < v] for i = 1..v: cumulative sums of the pmf from v-1 downwards.
        below = np.cumsum(binomial.pmf(np.arange(v - 1, -1, -1), r, q[..., None]), axis=-1)
        p = p + 2 * m * delta * np.max(below / np.arange(1, v + 1), axis=-1)
    return np.minimum(p, 1.0) if p.ndim else min(float(p), 1.0)


@functools.lru_cache(maxsize=4096)  # pure; audits ask for the same ceilings again and again
def epsilon_lower_bound(m: int, r: int, v: int, *, delta: float, beta: float) -> float:
    """Largest eps (to ~1e-10) whose (eps, delta)-DP claim has p-value <= beta; 0 if none."""
    if not 0 < beta < 1:
        raise ValueError(f"beta must be in (0, 1), got {beta}")
    if not 0 <= delta < 1:
        raise ValueError(f"delta must be in [0, 1), got {delta}")
    if r == 0 or p_value(m, r, v, 0.0, 0.0) > beta:
        return 0.0  # even without delta nothing is rejected; delta only adds to p
    # p -> 1 as eps grows while v <= r; this top is far beyond any bound r guesses can give.
    top = 2.0 * math.log(r + 2) + 10.0
    grid = np.arange(0.0, top + _GRID_STEP, _GRID_STEP)
    # p >= the binomial tail, so only where the tail is <= beta can p be: skip the rest.
    ok = binomial.tail(v, r, special.expit(grid)) <= beta
    ok[ok] = p_value(m, r, v, grid[ok], delta) <= beta
    if not ok.any():
        return 0.0
    last = int(np.flatnonzero(ok)[-1])
    if last == len(grid) - 1:
        return float(grid[last])
    lo, hi = float(grid[last]), float(grid[last + 1])
    for _ in range(_BISECT):
        mid = (lo + hi) / 2
        if p_value(m, r, v, mid, delta) <= beta:
            lo = mid
        else:
            hi = mid
    return lo


def guesses(scores, k_plus: int, k_minus: int) -> np.ndarray:
    """+1 for the k_plus highest scores, -1 for the k_minus lowest, 0 (abstain) elsewhere."""
    scores = np.asarray(scores, dtype=np.float64)
    m = len(scores)
    if k_plus < 0 or k_minus < 0 or k_plus + k_minus > m:
        raise ValueError(f"cannot make {k_plus} + {k_minus} guesses on {m} canaries")
    order = np.argsort(scores, kind="stable")
    out = np.zeros(m, dtype=np.int64)
    out[order[m - k_plus :]] = 1
    out[order[:k_minus]] = -1
    return out


def default_guess_counts(m: int) -> list[tuple[int, int]]:
    """(k+, k-) pairs tried when the caller names none: 5 %, 10 %, 25 %, 50 %, all."""
    pairs = []
    for f in DEFAULT_GUESS_FRACTIONS:
        r = max(2, round(f * m)) if m >= 2 else m
        pair = (r - r // 2, r // 2)
        if pair not in pairs and sum(pair) <= m:
            pairs.append(pair)
    return pairs


@dataclass(frozen=True)
class GuessOutcome:
    k_plus: int
    k_minus: int
    correct: int
    epsilon_lower: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class OneRunResult:
    """The best of the tried guess counts; each was tested at beta / len(tried).

    ``max_possible``: the bound if every guess were right (the most these canaries can show).
    """

    canaries: int
    included: int
    k_plus: int
    k_minus: int
    correct: int
    epsilon_lower: float
    confidence: float
    delta: float
    max_possible: float  # the bound if every guess of the best-placed count were right
    tried: list[GuessOutcome] = field(default_factory=list)

    @property
    def guesses(self) -> int:
        return self.k_plus + self.k_minus

    def to_dict(self) -> dict:
        return dict(dataclasses.asdict(self), guesses=self.guesses)


def one_run_audit(
    scores,
    included,
    *,
    delta: float,
    confidence: float = 0.95,
    guess_counts: Sequence[tuple[int, int]] | None = None,
) -> OneRunResult:
    """Audit from one score per canary (higher = "included") and the coins actually drawn."""
    scores = np.asarray(scores, dtype=np.float64)
    truth = np.where(np.asarray(included, dtype=bool), 1, -1)
    if scores.shape != truth.shape or scores.ndim != 1 or len(scores) == 0:
        raise ValueError("need one score and one inclusion flag per canary")
    if not np.isfinite(scores).all():
        raise ValueError("canary scores must be finite")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    m = len(scores)
    pairs = list(guess_counts) if guess_counts is not None else default_guess_counts(m)
    if not pairs:
        raise ValueError("no guess counts to try")
    beta = (1.0 - confidence) / len(pairs)
    tried = []
    for k_plus, k_minus in pairs:
        g = guesses(scores, int(k_plus), int(k_minus))
        v = int(np.sum(g == truth))
        eps = epsilon_lower_bound(m, int(k_plus + k_minus), v, delta=delta, beta=beta)
        tried.append(GuessOutcome(int(k_plus), int(k_minus), v, eps))
    best = max(tried, key=lambda t: (t.epsilon_lower, t.correct / max(t.k_plus + t.k_minus, 1)))
    perfect = max(
        epsilon_lower_bound(m, k1 + k2, k1 + k2, delta=delta, beta=beta) for k1, k2 in pairs
    )
    return OneRunResult(
        canaries=m,
        included=int((truth == 1).sum()),
        k_plus=best.k_plus,
        k_minus=best.k_minus,
        correct=best.correct,
        epsilon_lower=best.epsilon_lower,
        confidence=confidence,
        delta=delta,
        max_possible=perfect,
        tried=tried,
    )
