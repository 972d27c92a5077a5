"""Poisson sampling of privacy units (patients or images) for DP-SGD steps.

Each step includes every unit independently with probability q (q = 1: full batch, every
unit every step), so batch sizes vary. A sampled patient contributes ALL of their images as
one clipped unit: the loss of each image is weighted by 1 / (the patient's images), so the
patient's gradient is the mean over their images, and the DP engine clips it once
(DPEngine.clipped_backward with ``groups``). Its influence is bounded by the clip norm,
however many images the patient has.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fedxray.data.shard import Shard
from fedxray.errors import FedxrayError
from fedxray.training import accounting

if TYPE_CHECKING:
    from fedxray.training.settings import TrainSettings

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
        self.unit_of = np.empty(n, dtype=np.int64)
        self.unit_of[self.order] = np.repeat(np.arange(len(self.counts)), self.counts)

    @property
    def num_units(self) -> int:
        return int(self.counts.shape[0])

    def sample(self, rng: np.random.Generator, q: float) -> np.ndarray:
        """Image indices of one Poisson batch: every image of each sampled unit, unit by unit
        (a unit's images are consecutive)."""
        chosen = np.flatnonzero(rng.random(self.num_units) < q)
        return self.members(chosen)

    def members(self, units: np.ndarray) -> np.ndarray:
        """The image indices of ``units``, unit by unit."""
        if len(units) == 0:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([self.order[self.starts[u] : self.starts[u] + self.counts[u]]
                               for u in units])  # fmt: skip

    def grouping(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For image indices of a batch (unit by unit): each image's unit number within the
        batch (0, 1, ...) and its loss weight, 1 / (the unit's images)."""
        unit = self.unit_of[idx]
        starts = np.r_[True, unit[1:] != unit[:-1]][: len(unit)]
        groups = np.cumsum(starts) - 1
        return groups.astype(np.int64), 1.0 / self.counts[unit]


@dataclass(frozen=True)
class Sampling:
    """How a round draws its batches: per unit (DP) or a shuffled pass (no DP)."""

    unit: str
    sampler: UnitSampler
    sample_rate: float  # q: each unit's chance to be in a batch (1 without DP)
    steps_per_epoch: int
    warnings: list[str]

    @property
    def expected_batch_size(self) -> float:
        return self.sample_rate * self.sampler.num_units


def plan_sampling(shard: Shard, settings: TrainSettings, dp: bool) -> Sampling:
    """Poisson sampling of privacy units at the plan's expected batch size under DP; without
    DP, minibatches of the batch size over the images."""
    unit = resolve_unit(shard, settings.privacy_unit) if dp else IMAGE
    sampler = UnitSampler(shard, unit)
    if not dp:
        steps = 1 if settings.full_batch else math.ceil(len(shard) / settings.batch_size)
        return Sampling(unit, sampler, 1.0, steps, [])
    if settings.full_batch:
        q, steps = 1.0, 1
    else:
        q, steps = accounting.steps_per_epoch(sampler.num_units, settings.batch_size)
    warnings = []
    if settings.delta >= 1.0 / sampler.num_units:
        warnings.append(
            f"delta={settings.delta:g} is not below 1/{sampler.num_units} "
            f"({unit}s at this site): the guarantee is weak"
        )
    return Sampling(unit, sampler, q, steps, warnings)
