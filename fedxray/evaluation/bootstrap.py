"""Percentile bootstrap confidence intervals, resampling patients when they are known.

Images of one patient are correlated, so resampling images would understate the uncertainty:
when pseudonyms exist a resample draws patients with replacement and takes all their images.
A resample is a weight per image (how often it was drawn), which the metric scorers consume
directly, so a block of resamples is scored with a few array operations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from fedxray.errors import FedxrayError
from fedxray.evaluation.metrics import WeightedScorer, check_inputs, to_optional

DEFAULT_RESAMPLES = 1000
DEFAULT_LEVEL = 0.95
# Resamples scored together: bounds memory to a few arrays of _BLOCK x N floats.
_BLOCK = 100

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Interval:
    """A percentile interval; ``n_valid`` resamples (of ``n_boot``) had the metric defined."""

    low: float | None
    high: float | None
    n_valid: int
    n_boot: int

    def to_dict(self) -> dict:
        return {"low": self.low, "high": self.high, "n_valid": self.n_valid}


def cluster_index(groups, n: int) -> tuple[np.ndarray, int]:
    """Map patient pseudonyms [N] to cluster numbers 0..P-1.

    An image with no pseudonym (None or empty) is its own cluster: nothing links it to others.
    """
    g = np.asarray(groups, dtype=object)
    if g.shape != (n,):
        raise FedxrayError(f"patient pseudonyms must have shape [{n}], got {list(g.shape)}")
    missing = np.array([x is None or (isinstance(x, str) and not x) for x in g], dtype=bool)
    named = ~missing
    out = np.empty(n, dtype=np.int64)
    n_named = 0
    if named.any():
        _, inverse = np.unique(g[named].astype(str), return_inverse=True)
        out[named] = inverse
        n_named = int(inverse.max()) + 1
    out[missing] = n_named + np.arange(int(missing.sum()))
    return out, n_named + int(missing.sum())


class Resampler:
    """Seeded bootstrap draws over N images, by patient when pseudonyms are given."""

    def __init__(self, n: int, groups=None, seed: int = 0):
        if groups is None:
            self.cluster, self.n_clusters = np.arange(n), n
        else:
            self.cluster, self.n_clusters = cluster_index(groups, n)
        self.by_patient = groups is not None
        self.rng = np.random.default_rng(seed)

    def weights(self, b: int) -> np.ndarray:
        """[b, N] image weights: each row one resample of the same size as the data."""
        p = self.n_clusters
        draws = self.rng.integers(0, p, size=(b, p))
        flat = (draws + np.arange(b)[:, None] * p).ravel()
        counts = np.bincount(flat, minlength=b * p).reshape(b, p).astype(np.float64)
        return counts[:, self.cluster]


def replicates(
    scorers: Sequence[WeightedScorer],
    resampler: Resampler,
    n_boot: int,
    progress: Progress | None = None,
) -> list[dict[str, np.ndarray]]:
    """Score every scorer on the SAME resamples (paired): [{metric: values [n_boot]}] ."""
    if n_boot < 1:
        raise FedxrayError(f"number of bootstrap resamples must be positive, got {n_boot}")
    parts: list[list[dict[str, np.ndarray]]] = [[] for _ in scorers]
    done = 0
    while done < n_boot:
        b = min(_BLOCK, n_boot - done)
        w = resampler.weights(b)
        for part, scorer in zip(parts, scorers, strict=True):
            part.append(scorer(w))
        done += b
        if progress is not None:
            progress(done, n_boot)
    return [{k: np.concatenate([blk[k] for blk in part]) for k in part[0]} for part in parts]


def percentile_interval(values: np.ndarray, level: float = DEFAULT_LEVEL) -> Interval:
    """Percentile interval over the resamples where the metric is defined."""
    if not 0 < level < 1:
        raise FedxrayError(f"confidence level must be between 0 and 1, got {level}")
    values = np.asarray(values, dtype=np.float64)
    ok = values[~np.isnan(values)]
    if ok.size == 0:
        return Interval(None, None, 0, len(values))
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(ok, [tail, 100 - tail])
    return Interval(to_optional(low), to_optional(high), int(ok.size), len(values))


def bootstrap_ci(
    y_true,
    probs,
    classes: Sequence[str],
    groups=None,
    *,
    n_boot: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
    hard: bool = False,
    progress: Progress | None = None,
) -> dict[str, Interval]:
    """95% (``level``) percentile intervals for every scalar metric of one set of predictions."""
    y, p, classes = check_inputs(y_true, probs, classes)
    scorer = WeightedScorer(y, p, classes, hard=hard)
    reps = replicates([scorer], Resampler(len(y), groups, seed), n_boot, progress)[0]
    return {k: percentile_interval(v, level) for k, v in reps.items()}
