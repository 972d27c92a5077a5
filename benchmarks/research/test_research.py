"""Checks of the research prototype (not part of the product suite; no data needed).

.venv/bin/python -m pytest -q benchmarks/research/test_research.py
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dp_step import (
    DPSettings,
    SiteData,
    _linear_clipped_sum,
    dp_gradient,
    per_patient_gradients,
)
from federation import Recipe, averaged, calibrated_sigma, site_generator, train
from heads import LinearHead, ScatterCNN, num_parameters
from scatter import ScatterFrontEnd, ScatterSettings, orientation_groups
from views import SHIFTS, augmented_view, shifted_view

from fedxray.training.accounting import epsilon


def _site(n=40, patients=15, views=2, shape=(28, 4, 4), seed=0):
    g = torch.Generator().manual_seed(seed)
    patient = torch.randint(0, patients, (n,), generator=g)
    patient[:patients] = torch.arange(patients)  # every patient has at least one image
    return SiteData(
        features=torch.randn(views, n, *shape, generator=g),
        labels=torch.randint(0, 3, (n,), generator=g),
        patient=patient,
        n_patients=patients,
    )


@pytest.mark.parametrize("orientations", ["all", "relative"])
def test_front_end_is_fixed_and_has_the_documented_shape(orientations):
    s = ScatterSettings(image_size=32, J=2, L=4, pool=2, orientations=orientations)
    front = ScatterFrontEnd(s)
    assert num_parameters(front) == 0
    out = front(torch.rand(3, 1, 32, 32))
    assert tuple(out.shape) == (3, *s.output_shape)
    assert s.channels == (1 + 2 * 4 + 4 * 4 * 1 if orientations == "all" else 1 + 2 + 4)


def test_orientation_groups_partition_every_channel():
    groups = orientation_groups(3, 8)
    flat = sorted(c for g in groups for c in g)
    assert flat == list(range(ScatterSettings(J=3, L=8).channels))
    assert len(groups) == ScatterSettings(J=3, L=8, orientations="relative").channels


def test_linear_ghost_clipped_sum_matches_per_patient_gradients():
    site = _site()
    model = LinearHead(site.features.shape[2:])
    torch.nn.init.normal_(model.linear.weight)
    model.center.normal_(0, 0.05)
    chosen = torch.rand(site.n_patients, generator=torch.Generator().manual_seed(1)) < 0.7
    images = torch.nonzero(chosen[site.patient]).flatten()
    weights = torch.tensor([1.0, 2.0, 0.5])
    per_patient = per_patient_gradients(model, site, images, weights)[chosen]
    norms = per_patient.norm(dim=1)
    expected = (per_patient * (0.3 / norms).clamp(max=1)[:, None]).sum(0)
    got, got_norms = _linear_clipped_sum(model, site, chosen, 0.3, weights)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got_norms, norms, atol=1e-5, rtol=1e-4)


def test_one_patient_moves_the_clipped_sum_by_at_most_the_clip_norm():
    site = _site(views=3)
    model = ScatterCNN(site.features.shape[2:], width=4, depth=1)
    dp = DPSettings(clip=0.5, sigma=0.0, sample_rate=1.0)
    full, _ = dp_gradient(model, site, dp, torch.Generator().manual_seed(0))
    keep = site.patient != 0  # remove patient 0 and all of its images and views
    pid = torch.unique(site.patient[keep], return_inverse=True)[1]
    smaller = SiteData(site.features[:, keep], site.labels[keep], pid, site.n_patients - 1)
    part, _ = dp_gradient(model, smaller, dp, torch.Generator().manual_seed(0))
    # dp_gradient divides by q * P: undo it to compare the sums.
    diff = full * site.n_patients - part * smaller.n_patients
    assert float(diff.norm()) <= 0.5 + 1e-5


def test_sites_and_rounds_draw_independent_noise():
    draws = {
        (s, r): torch.randn(2000, generator=site_generator(7, s, r))
        for s in range(3)
        for r in (0, 1)
    }
    keys = list(draws)
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            corr = float(torch.corrcoef(torch.stack([draws[a], draws[b]]))[0, 1])
            assert abs(corr) < 0.1, (a, b, corr)
    again = torch.randn(2000, generator=site_generator(7, 1, 1))
    assert torch.equal(again, draws[(1, 1)])


def test_calibrated_sigma_meets_the_budget_including_the_centring_release():
    recipe = Recipe(rounds=2, local_steps=3, center_sigma=5.0)
    sigma, spent = calibrated_sigma(recipe)
    assert spent <= recipe.target_epsilon
    history = [(5.0, 1.0, 1), (sigma, 1.0, 6)]
    assert epsilon(history, recipe.delta) == pytest.approx(spent)
    assert epsilon([(sigma * 0.98, 1.0, 6), (5.0, 1.0, 1)], recipe.delta) > recipe.target_epsilon


def test_federated_dp_training_runs_and_averages():
    sites = [_site(seed=s, views=1) for s in range(3)]
    model = LinearHead(sites[0].features.shape[2:])
    recipe = Recipe(rounds=3, local_steps=2, lr=1.0, momentum=0.5, center_sigma=5.0)
    log = train(model, sites, recipe, private=True, run_seed=0)
    assert len(log.globals_) == recipe.rounds + 1
    assert log.epsilon <= recipe.target_epsilon
    mean = averaged(log.globals_, "mean2")
    torch.testing.assert_close(mean, (log.globals_[-1] + log.globals_[-2]) / 2)


def test_views_are_reproducible_and_in_range():
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32), dtype=np.uint8)
    a, b = augmented_view(images, 1, seed=3), augmented_view(images, 1, seed=3)
    assert torch.equal(a, b)
    assert not torch.equal(a, augmented_view(images, 2, seed=3))
    for kind in SHIFTS:
        x = shifted_view(images, kind)
        assert x.shape == (4, 1, 32, 32) and float(x.min()) >= 0 and float(x.max()) <= 1


def test_the_recommended_recipe_spends_at_most_epsilon_8_per_site():
    from recipe import FRONT, RECIPE

    sigma, spent = calibrated_sigma(RECIPE)
    assert spent <= 8.0 and RECIPE.sample_rate == 1.0 and RECIPE.steps == 50
    assert sigma == pytest.approx(4.55, abs=0.01)
    assert FRONT.output_shape == (217, 8, 8)


def test_the_linear_head_runs_through_the_products_dp_engine():
    """fedxray's DPEngine (per-image clipping) accepts the head unchanged: with one image per
    patient its clipped sum is ours."""
    import torch.nn.functional as F

    from fedxray.training.dp_engine import DPEngine

    site = _site(n=6, patients=6, views=1)
    site.patient = torch.arange(6)
    model = LinearHead(site.features.shape[2:])
    torch.nn.init.normal_(model.linear.weight, std=0.5)
    model.center.normal_(0, 0.05)
    engine = DPEngine(model, 0.5)
    x, y = site.features[0], site.labels
    engine.clipped_backward(lambda: F.cross_entropy(model(x), y, reduction="none"))
    theirs = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    ours, _ = _linear_clipped_sum(model, site, torch.ones(6, dtype=torch.bool), 0.5, None)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-4)
