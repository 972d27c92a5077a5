"""The centring release: round 1 of a plan with ``centering`` publishes the mean feature.

All radiographs share one large common direction in feature space; subtracting the mean
feature (the ``center`` buffer of a linear head, fedxray.models.scatterlinear) is a pure
reparametrisation, W (z - c) + b = W z + b', that conditions gradient descent and lets the
learning rate grow several-fold (benchmarks/research/REPORT.md, section 3). The mean is a
statistic of private data, so it is released once, under DP, through the ordinary file
protocol:

* each site sums, over its units (patients), the unit's mean normalised feature (norm <= 1,
  so one patient moves the sum by at most 1: sensitivity 1), adds N(0, sigma_m^2 I)
  (``centering_sigma``), and divides by its number of units;
* its update for round 1 changes nothing but ``center`` (that site's noisy mean); secure
  aggregation averages the sites' means (weighted by their examples, like any update), so the
  round-2 global model carries the federation's noisy mean;
* the ledger counts the release as one Gaussian step (sigma_m, q = 1, 1 step), written
  before it runs like any epoch, and the training rounds' noise is calibrated with it as a
  prior, so epsilon after the last round stays within the plan's target.

The released mean is projected onto the unit ball (the true mean lies in it): post-processing,
free, and it only moves the estimate closer to the truth.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from fedxray.errors import FedxrayError
from fedxray.training.accounting import History
from fedxray.training.dp_engine import NoiseGenerator
from fedxray.training.replay import epoch_streams
from fedxray.training.sampling import Sampling, UnitSampler


def is_statistics_round(settings, round_number: int) -> bool:
    return bool(settings.centering) and int(round_number) == 1


def release_history(settings, round_number: int) -> History:
    """The release still to come before the training rounds, as an accounting entry."""
    if not is_statistics_round(settings, round_number):
        return []
    return [(float(settings.centering_sigma), 1.0, 1)]


def release_sampling(sampling: Sampling) -> Sampling:
    """One step over every unit (q = 1)."""
    return dataclasses.replace(sampling, sample_rate=1.0, steps_per_epoch=1)


def noisy_mean(
    embedded: torch.Tensor, sampler: UnitSampler, sigma: float | None, noise: NoiseGenerator
) -> torch.Tensor:
    """(sum over units of the unit's mean row + N(0, sigma^2 I)) / units, in the unit ball."""
    z = embedded.double()
    units = torch.from_numpy(sampler.unit_of)
    sums = z.new_zeros((sampler.num_units, z.shape[1])).index_add_(0, units, z)
    total = (sums / torch.from_numpy(sampler.counts).double()[:, None]).sum(0)
    if sigma is not None:
        total = total + sigma * noise.normal(total.shape, torch.float64, "cpu")
    mean = total / sampler.num_units
    return mean / max(1.0, float(mean.norm()))


class Release:
    """The statistics round's one "epoch": sets the model's ``center`` (loss reported 0)."""

    def __init__(self, model, features: np.ndarray | None, sampler: UnitSampler, sigma):
        head = getattr(model, "head", None)
        if features is None or not hasattr(head, "embed") or not hasattr(head, "center"):
            raise FedxrayError("centering needs a model with a fixed front end and a center")
        self.model, self.features, self.sampler, self.sigma = model, features, sampler, sigma

    def run(self, seed: str, step_done) -> float:
        _, _, noise_seed = epoch_streams(seed)
        head = self.model.head
        with torch.no_grad():
            z = head.embed(torch.from_numpy(self.features).to(head.center.device)).cpu()
            mean = noisy_mean(z, self.sampler, self.sigma, NoiseGenerator(noise_seed))
            head.center.copy_(mean.to(head.center))
        step_done(1)
        return 0.0

    def close(self) -> None:
        pass
