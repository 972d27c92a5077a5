"""Is an accuracy above chance? A binomial bound shared by the end-to-end tests."""

from __future__ import annotations

import math


def fewest_correct_beyond_chance(n: int, classes: int, alpha: float) -> int:
    """Fewest correct answers out of n that guessing (1/classes) reaches with chance < alpha."""
    p, tail = 1 / classes, 0.0
    for k in range(n, -1, -1):
        tail += math.comb(n, k) * p**k * (1 - p) ** (n - k)
        if tail >= alpha:
            return k + 1
    return 0
