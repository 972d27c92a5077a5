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


def test_the_same_seed_gives_the_same_federation_and_model(tmp_path):
    """--seed reproduces a whole simulated DP federation: the plan's id is derived from the
    seed (the noise is drawn from the seed and that id), so the final model is the same up to
    the rounding of sums taken in another order (each run makes new site keys, hence other
    patient pseudonyms: measured 1e-7); another seed draws other noise (0.05-0.4)."""
    from fedxray.fsio import read_input
    from fedxray.modelfile import load_model_artifact
    from fedxray.plan import load_plan
    from fedxray.simulation.runner import simulation_federation_id
    from tests.cli_helpers import run_cli

    def final_weights(name: str, seed: int) -> dict:
        out = tmp_path / name
        options = ("--rounds", "3", "--local-epochs", "2", "--image-size", "32", "--bootstrap", "0",
                   "--workers", "1")  # fmt: skip
        r = run_cli("simulate", "-o", out, *options, "--seed", str(seed), "-q")
        assert r.code == 0, r.err
        coordinator = out / "coordinator"
        plan = load_plan(coordinator / "simulation.plan")
        model = read_input(coordinator / "round-0004.model")
        return dict(load_model_artifact(model, plan).tensors)

    assert simulation_federation_id(3) == simulation_federation_id(3)
    assert simulation_federation_id(3) != simulation_federation_id(4)
    first, again, other = final_weights("a", 3), final_weights("b", 3), final_weights("c", 4)
    assert first.keys() == again.keys()
    assert all(np.allclose(first[k], again[k], rtol=0, atol=1e-5) for k in first)
    assert max(float(np.abs(first[k] - other[k]).max()) for k in first) > 1e-2
