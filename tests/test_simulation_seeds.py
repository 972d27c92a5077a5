"""The simulation gives every site its own DP noise: one seed per site and round.

With one seed for all sites (the old ``seed * 1000 + round``), every site of a round drew
bit-identical noise, so averaging the sites' updates did not shrink the noise at all.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from fedxray.simulation.runner import site_round_seed
from fedxray.training.dp_engine import NoiseGenerator
from fedxray.training.replay import epoch_seed, epoch_streams

FEDERATION = "f" * 32  # every site of a simulation trains in the same federation


def _site_noise(run_seed: int, site: int, round_number: int, n: int = 20_000) -> np.ndarray:
    """The DP noise site ``site`` draws in the first epoch of ``round_number``: the same path
    from the simulation's seed to the noise as train-local's."""
    seed = epoch_seed(site_round_seed(run_seed, site, round_number), FEDERATION, round_number, 1, 0)
    _, _, noise_seed = epoch_streams(seed)
    return NoiseGenerator(noise_seed).normal((n,), torch.float64, "cpu").numpy()


def test_three_sites_draw_independent_noise_in_a_round():
    noise = [_site_noise(0, site, 1) for site in range(3)]
    for a, b in itertools.combinations(noise, 2):
        assert not np.array_equal(a, b)
        # Independent standard normals: |corr| ~ 1/sqrt(n) = 0.007; 0.04 is > 5 sigma.
        assert abs(np.corrcoef(a, b)[0, 1]) < 0.04
    # Their mean's spread shrinks as 1/sqrt(3), as FedAvg over independent noise should.
    assert abs(np.mean(noise, axis=0).std() - 1 / np.sqrt(3)) < 0.02


def test_site_seeds_are_reproducible_and_distinct_across_rounds_and_runs():
    assert np.array_equal(_site_noise(7, 2, 3), _site_noise(7, 2, 3))
    seeds = {site_round_seed(run, s, r) for run in (0, 1) for s in range(3) for r in range(1, 6)}
    assert len(seeds) == 2 * 3 * 5
    assert site_round_seed(1, 0, 1) == site_round_seed(1, 0, 1)
