"""How well an attack's scores separate members from non-members: ROC AUC and TPR at low FPR.

TPR at a target FPR follows the conservative step-function reading of the empirical ROC, with
no interpolation: the highest TPR of any threshold whose empirical FPR does not exceed the
target. With n non-members the smallest non-zero FPR is 1/n, so a target below it is read at
FPR 0 and marked ``resolved=False`` (the data cannot tell that FPR apart from 0).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedxray.evaluation.metrics import roc_auc, roc_curve

DEFAULT_FPRS = (0.001, 0.01, 0.1)


@dataclass(frozen=True)
class TprAtFpr:
    fpr: float  # the target
    tpr: float
    achieved_fpr: float  # the empirical FPR of the threshold used (<= fpr)
    resolved: bool  # at least one non-member fits under the target (n * fpr >= 1)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _labelled(member, non_member) -> tuple[np.ndarray, np.ndarray]:
    member = np.asarray(member, dtype=np.float64)
    non = np.asarray(non_member, dtype=np.float64)
    if len(member) == 0 or len(non) == 0:
        raise ValueError("need at least one member and one non-member score")
    truth = np.concatenate([np.ones(len(member), bool), np.zeros(len(non), bool)])
    return truth, np.concatenate([member, non])


def attack_auc(member_scores, non_member_scores) -> float:
    """ROC AUC of "member" against "non-member" (ties count one half; 0.5 = no leakage seen)."""
    truth, scores = _labelled(member_scores, non_member_scores)
    return float(roc_auc(truth, scores))


def tpr_at_fpr(
    member_scores, non_member_scores, fprs: Sequence[float] = DEFAULT_FPRS
) -> list[TprAtFpr]:
    """TPR at each target FPR (rule in the module docstring)."""
    truth, scores = _labelled(member_scores, non_member_scores)
    curve = roc_curve(truth, scores)
    n_non = int((~truth).sum())
    out = []
    for target in fprs:
        if not 0 < target < 1:
            raise ValueError(f"target FPR must be in (0, 1), got {target}")
        ok = curve.fpr <= target + 1e-12  # the (0, 0) corner always qualifies
        i = int(np.flatnonzero(ok)[np.argmax(curve.tpr[ok])])
        out.append(
            TprAtFpr(
                fpr=float(target),
                tpr=float(curve.tpr[i]),
                achieved_fpr=float(curve.fpr[i]),
                resolved=n_non * target >= 1 - 1e-9,
            )
        )
    return out
