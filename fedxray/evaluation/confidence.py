"""How sure a model is of one prediction: max-softmax confidence, rescaled to [0, 1].

``confidence = (K * max_k p_k - 1) / (K - 1)`` for K classes: 0 when the probabilities are
uniform (the model cannot tell the classes apart), 1 when one class has them all. Rescaled so
that one threshold means the same for any number of classes and any model.

The threshold is fixed, not fitted to anyone's data: no statistic of a site's training data
may travel in a plan or a model file without differential privacy, and a fixed threshold
needs none. It flags only near-uniform predictions; docs/data.md has the measurements
(including why the score alone does not tell noise from radiographs, and the plausibility
checks do).
"""

from __future__ import annotations

import numpy as np

# The top class at most 5% of the way from a uniform guess to certainty (for 3 classes:
# p_max < 0.367). On the DP sample federation's model, 21 of the 5,216 kermany224 images
# (0.4%) fall below it, and no sample phantom (benchmarks/bench_ood.py).
MIN_CONFIDENCE = 0.05


def confidence(probs: np.ndarray) -> np.ndarray:
    """Rescaled max-softmax confidence of each row of ``probs`` [N, K] (or of one row [K])."""
    p = np.asarray(probs, dtype=np.float64)
    k = p.shape[-1]
    top = p.max(axis=-1)
    return np.clip((k * top - 1.0) / (k - 1.0), 0.0, 1.0)
