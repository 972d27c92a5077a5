"""Typed audit results that a CLI renders or dumps as JSON (``to_dict``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from fedxray.audit.hypothesis import EpsilonBound
from fedxray.audit.one_run import OneRunResult
from fedxray.audit.roc import TprAtFpr

LIRA = "lira-offline"
LOSS = "loss-threshold"
ATTACKS = (LIRA, LOSS)


def _json_eps(x: float | None) -> float | None:
    """JSON has no infinity: an infinite (non-DP) accountant epsilon is written as null."""
    return None if x is None or not math.isfinite(x) else float(x)


def _exceeds(lower: float, accountant: float | None) -> bool:
    # A small relative margin: the accountant rounds its own epsilon to ~0.1 %.
    return accountant is not None and lower > accountant * (1 + 1e-3)


@dataclass(frozen=True)
class AuditReport:
    """Membership inference against one model: what it leaks next to what was promised.

    ``epsilon`` is an empirical LOWER bound (what the attack proves at least); the
    accountant's epsilon is an UPPER bound (what DP-SGD guarantees at most). Counts are of
    privacy units (patients). ``accountant_epsilon`` None: not known; inf: trained without DP.
    """

    attack: str
    members: int
    non_members: int
    auc: float
    tpr_at_fpr: list[TprAtFpr]
    epsilon: EpsilonBound
    accountant_epsilon: float | None
    accountant_delta: float | None
    reference_models: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def exceeds_accountant(self) -> bool:
        """True when the lower bound is above the guarantee: a bug in training or accounting."""
        return _exceeds(self.epsilon.lower, self.accountant_epsilon)

    def to_dict(self) -> dict:
        return {
            "attack": self.attack,
            "members": self.members,
            "non_members": self.non_members,
            "auc": self.auc,
            "tpr_at_fpr": [t.to_dict() for t in self.tpr_at_fpr],
            "epsilon_lower_bound": self.epsilon.to_dict(),
            "accountant_epsilon": _json_eps(self.accountant_epsilon),
            "accountant_trained_without_dp": self.accountant_epsilon == math.inf,
            "accountant_delta": self.accountant_delta,
            "exceeds_accountant": self.exceeds_accountant,
            "reference_models": self.reference_models,
            "seconds": self.seconds,
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True)
class CanaryReport:
    """One-run canary audit (Steinke et al. 2023) of a model trained with coin-flipped canaries."""

    score: str
    result: OneRunResult
    accountant_epsilon: float | None
    seconds: float = 0.0

    @property
    def exceeds_accountant(self) -> bool:
        return _exceeds(self.result.epsilon_lower, self.accountant_epsilon)

    def to_dict(self) -> dict:
        return {
            "score": self.score,
            **self.result.to_dict(),
            "accountant_epsilon": _json_eps(self.accountant_epsilon),
            "accountant_trained_without_dp": self.accountant_epsilon == math.inf,
            "exceeds_accountant": self.exceeds_accountant,
            "seconds": self.seconds,
        }
