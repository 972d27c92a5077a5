"""Empirical epsilon lower bound from a membership test's true- and false-positive rates.

(eps, delta)-DP bounds every test of "member" against "non-member" (Kairouz et al. 2015):

    TPR <= e^eps * FPR + delta        and        1 - FPR <= e^eps * (1 - TPR) + delta,

so an observed operating point (TPR, FPR) rules out every eps below

    max( log((TPR - delta) / FPR),  log((1 - FPR - delta) / (1 - TPR)) ).

Rates are estimated from finitely many people, so the bound uses a one-sided Clopper-Pearson
LOWER bound on TPR and UPPER bound on FPR, each at level (1 - confidence) / 2 (a union bound:
both hold together with probability >= confidence).

Threshold selection: picking the threshold that maximises the bound on the same people
inflates it (the maximum of many noisy bounds). We split: members and non-members are each
halved at random, the threshold is chosen on one half, and the bound is computed on the other
half at that single, already-fixed threshold. This costs half the data but needs no correction.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from fedxray.audit.binomial import clopper_pearson_lower, clopper_pearson_upper

SELECTION = "split-half"


def epsilon_from_rates(tpr, fpr, delta: float) -> np.ndarray:
    """Smallest eps compatible with (tpr, fpr) at ``delta`` (0 when any eps fits; may be inf)."""
    tpr = np.asarray(tpr, dtype=np.float64)
    fpr = np.asarray(fpr, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.log(np.maximum(tpr - delta, 0.0)) - np.log(fpr)
        b = np.log(np.maximum(1.0 - fpr - delta, 0.0)) - np.log(1.0 - tpr)
    a = np.where(np.isnan(a), -np.inf, a)  # 0/0: no evidence
    b = np.where(np.isnan(b), -np.inf, b)
    return np.maximum(np.maximum(a, b), 0.0)


@dataclass(frozen=True)
class EpsilonBound:
    """An eps that (eps, delta)-DP is ruled out below, with probability >= ``confidence``.

    ``lower`` is the one-sided Clopper-Pearson bound; ``estimate`` the same formula on the raw
    rates of the evaluation half (no confidence attached). Counts are of people (privacy
    units), on the half the bound was computed on. ``max_possible`` is what a perfect attack
    (every member caught, no non-member) would prove with these counts: the audit cannot
    show more, however much the model leaks.
    """

    lower: float
    estimate: float
    confidence: float
    delta: float
    threshold: float | None  # score at or above which the test says "member"
    true_positives: int
    members: int
    false_positives: int
    non_members: int
    tpr_lower: float
    fpr_upper: float
    max_possible: float
    selection: str = SELECTION

    def to_dict(self) -> dict:
        """JSON-ready; an infinite ``estimate`` (no false positive at all) is written as null."""
        d = dataclasses.asdict(self)
        for k in ("lower", "estimate", "threshold"):
            d[k] = None if d[k] is None or not math.isfinite(d[k]) else float(d[k])
        return d


def _bounds_at(member: np.ndarray, non: np.ndarray, thresholds: np.ndarray, alpha: float):
    """(tp, fp, tpr_lower, fpr_upper) for every threshold (test: score >= threshold)."""
    tp = len(member) - np.searchsorted(np.sort(member), thresholds, side="left")
    fp = len(non) - np.searchsorted(np.sort(non), thresholds, side="left")
    tpr_lo = clopper_pearson_lower(tp, len(member), alpha / 2)
    fpr_hi = clopper_pearson_upper(fp, len(non), alpha / 2)
    return tp, fp, tpr_lo, fpr_hi


def epsilon_lower_bound(
    member_scores,
    non_member_scores,
    *,
    delta: float,
    confidence: float = 0.95,
    rng: np.random.Generator,
) -> EpsilonBound:
    """The split-half Clopper-Pearson eps lower bound of a score (higher = "member").

    One score per privacy unit (patient). Needs at least two members and two non-members
    (one per half); with fewer the bound is 0 and no threshold is chosen.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if not 0 <= delta < 1:
        raise ValueError(f"delta must be in [0, 1), got {delta}")
    member = np.asarray(member_scores, dtype=np.float64)
    non = np.asarray(non_member_scores, dtype=np.float64)
    if not (np.isfinite(member).all() and np.isfinite(non).all()):
        raise ValueError("attack scores must be finite")
    alpha = 1.0 - confidence
    if len(member) < 2 or len(non) < 2:
        return EpsilonBound(
            lower=0.0, estimate=0.0, confidence=confidence, delta=delta, threshold=None,
            true_positives=0, members=len(member) // 2,
            false_positives=0, non_members=len(non) // 2, tpr_lower=0.0, fpr_upper=1.0,
            max_possible=0.0,
        )  # fmt: skip
    m_pick, m_eval = _halves(member, rng)
    n_pick, n_eval = _halves(non, rng)

    # Choose on the first half: the best bound; ties (often all 0) broken by the bound at
    # confidence 0.5, which is less noisy than the raw rates (those favour tiny counts).
    cand = np.unique(np.concatenate([m_pick, n_pick]))
    bound = epsilon_from_rates(*_bounds_at(m_pick, n_pick, cand, alpha)[2:], delta)
    loose = epsilon_from_rates(*_bounds_at(m_pick, n_pick, cand, 0.5)[2:], delta)
    threshold = float(cand[int(np.lexsort((-loose, -bound))[0])])

    # Bound on the second half, at that one threshold.
    tp, fp, tpr_lo, fpr_hi = (
        x[0] for x in _bounds_at(m_eval, n_eval, np.array([threshold]), alpha)
    )
    lower = float(epsilon_from_rates(tpr_lo, fpr_hi, delta))
    all_caught = clopper_pearson_lower(len(m_eval), len(m_eval), alpha / 2)
    none_wrong = clopper_pearson_upper(0, len(n_eval), alpha / 2)
    perfect = epsilon_from_rates(all_caught, none_wrong, delta)
    estimate = float(epsilon_from_rates(tp / len(m_eval), fp / len(n_eval), delta))
    return EpsilonBound(
        lower=lower,
        estimate=estimate,
        confidence=confidence,
        delta=delta,
        threshold=threshold,
        true_positives=int(tp),
        members=len(m_eval),
        false_positives=int(fp),
        non_members=len(n_eval),
        tpr_lower=float(tpr_lo),
        fpr_upper=float(fpr_hi),
        max_possible=float(perfect),
    )


def _halves(x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    perm = rng.permutation(len(x))
    cut = len(x) // 2
    return x[perm[:cut]], x[perm[cut:]]
