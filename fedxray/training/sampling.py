"""Poisson sampling of privacy units (patients or images) for DP-SGD steps.

Each step includes every unit independently with probability q, so batch sizes vary. A
sampled patient contributes exactly ONE of their images (drawn uniformly), so the per-example
gradient clipping bounds the influence of a whole patient, however many images they have.
"""

from __future__ import annotations

import numpy as np

from fedxray.data.shard import Shard
from fedxray.errors import FedxrayError

PATIENT = "patient"
IMAGE = "image"


def resolve_unit(shard: Shard, requested: str = "auto") -> str:
    """'patient' when the shard knows patients (default), else 'image'."""
    if requested not in ("auto", PATIENT, IMAGE):
        raise FedxrayError(f"unknown privacy unit {requested!r}", hint="use patient or image")
    if requested == "auto":
        return PATIENT if shard.patients is not None else IMAGE
    if requested == PATIENT and shard.patients is None:
        raise FedxrayError(
            "patient-level privacy needs patient pseudonyms, and this shard has none",
            hint="prepare the shard with patient ids, or use privacy unit 'image'",
        )
    return requested


class UnitSampler:
    """Groups image indices by privacy unit and draws Poisson batches of image indices."""

    def __init__(self, shard: Shard, unit: str):
        self.unit = unit
        n = len(shard)
        if unit == PATIENT:
            # Sort images by patient; each unit is then a contiguous run [start, start+count).
            _, inverse, counts = np.unique(
                np.asarray(shard.patients).astype(str), return_inverse=True, return_counts=True
            )
            self.order = np.argsort(inverse, kind="stable")
            self.counts = counts.astype(np.int64)
        else:
            self.order = np.arange(n)
            self.counts = np.ones(n, dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)

    @property
    def num_units(self) -> int:
        return int(self.counts.shape[0])

    def sample(self, rng: np.random.Generator, q: float) -> np.ndarray:
        """Image indices of one Poisson batch: at most one image per sampled unit."""
        chosen = np.flatnonzero(rng.random(self.num_units) < q)
        pick = (rng.random(chosen.shape[0]) * self.counts[chosen]).astype(np.int64)
        return self.order[self.starts[chosen] + pick]
