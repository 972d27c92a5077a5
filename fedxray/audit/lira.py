"""Membership scores from model outputs (pure numpy): loss threshold and offline LiRA.

Higher score = "more likely a member". Every score here is per image; ``unit_means`` turns
them into one score per privacy unit (patient), the unit that DP protects and the audit tests.

- Loss attack (Yeom et al. 2018): the log-probability of the true class (minus the loss).
- Offline LiRA (Carlini et al. 2022, "Membership inference attacks from first principles"):
  reference models trained WITHOUT the example give its "OUT" distribution of the logit-scaled
  true-class confidence phi = log(p_y / (1 - p_y)), fitted by a Gaussian per example; the score
  is how many standard deviations the target model's phi sits above the OUT mean. (A one-sided
  test; the z-score orders examples exactly as the Gaussian tail probability does.)
"""

from __future__ import annotations

import numpy as np
from scipy import special

# Per-example variances from fewer OUT values than this are too noisy: use the global one.
MIN_PER_EXAMPLE = 16
_MIN_STD = 1e-6


def _check(logits, labels) -> tuple[np.ndarray, np.ndarray]:
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError("need logits [N, classes] and labels [N]")
    if len(labels) and (labels.min() < 0 or labels.max() >= logits.shape[1]):
        raise ValueError("a label is out of range for the logits")
    return logits, labels


def loss_scores(logits, labels) -> np.ndarray:
    """log p(true class): minus the cross-entropy loss."""
    logits, labels = _check(logits, labels)
    return logits[np.arange(len(labels)), labels] - special.logsumexp(logits, axis=1)


def logit_confidence(logits, labels) -> np.ndarray:
    """phi = log(p_y / (1 - p_y)), computed from logits without rounding p_y to 1."""
    logits, labels = _check(logits, labels)
    rows = np.arange(len(labels))
    others = logits.copy()
    others[rows, labels] = -np.inf
    return logits[rows, labels] - special.logsumexp(others, axis=1)


def lira_offline_scores(
    target_phi, reference_phi, out_mask, *, min_per_example: int = MIN_PER_EXAMPLE
) -> np.ndarray:
    """Offline LiRA z-scores: (phi_target - mean_OUT) / std_OUT per example.

    reference_phi [R, N]: phi of each example under each reference model; out_mask [R, N]:
    True where that reference model did NOT train on the example (only those are used).
    Mean: per example (the global OUT mean for an example no reference model left out).
    Standard deviation: per example when it has at least ``min_per_example`` OUT values,
    else the global one (pooled within-example spread; the spread across examples when no
    example has two OUT values), as Carlini et al. advise for few reference models.
    """
    target = np.asarray(target_phi, dtype=np.float64)
    ref = np.asarray(reference_phi, dtype=np.float64)
    out = np.asarray(out_mask, dtype=bool)
    if ref.ndim != 2 or ref.shape != out.shape or ref.shape[1] != target.shape[0]:
        raise ValueError("need target_phi [N], reference_phi and out_mask [R, N]")
    if not out.any():
        raise ValueError("no reference model left any example out")
    n_out = out.sum(axis=0)
    vals = np.where(out, ref, 0.0)
    global_mean = ref[out].mean()
    mean = np.where(n_out > 0, vals.sum(axis=0) / np.maximum(n_out, 1), global_mean)
    sq = np.where(out, (ref - mean) ** 2, 0.0).sum(axis=0)
    dof = np.maximum(n_out - 1, 0)
    global_var = sq.sum() / dof.sum() if dof.sum() > 0 else ref[out].var()
    var = np.where(n_out >= max(min_per_example, 2), sq / np.maximum(dof, 1), global_var)
    return (target - mean) / np.maximum(np.sqrt(var), _MIN_STD)


def unit_means(scores, units) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique units, mean score of each unit's images)."""
    scores = np.asarray(scores, dtype=np.float64)
    uniq, inverse = np.unique(np.asarray(units), return_inverse=True)
    total = np.bincount(inverse, weights=scores, minlength=len(uniq))
    return uniq, total / np.bincount(inverse, minlength=len(uniq))
