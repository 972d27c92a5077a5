"""Accounting: cross-checked against Google's independent dp_accounting package."""

from __future__ import annotations

import math

import pytest

from fedxray.errors import FedxrayError
from fedxray.training import accounting

dp_accounting = pytest.importorskip("dp_accounting")

CASES = [  # (noise multiplier, sample rate, steps, delta)
    (1.1, 0.4, 18, 1e-3),
    (1.0, 0.02, 1000, 1e-5),
    (0.8, 0.1, 200, 1e-5),
    (2.0, 1.0, 10, 1e-5),
    (1.5, 0.005, 5000, 1e-6),
]


def _event(sigma, q, steps):
    gaussian = dp_accounting.GaussianDpEvent(sigma)
    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, gaussian), steps
    )


@pytest.mark.parametrize(("sigma", "q", "steps", "delta"), CASES)
def test_epsilon_matches_independent_rdp_accountant(sigma, q, steps, delta):
    ours = accounting.epsilon([(sigma, q, steps)], delta)
    acc = dp_accounting.rdp.RdpAccountant()
    acc.compose(_event(sigma, q, steps))
    theirs = acc.get_epsilon(delta)
    assert ours == pytest.approx(theirs, rel=0.03)


@pytest.mark.parametrize(("sigma", "q", "steps", "delta"), CASES[:3])
def test_epsilon_is_an_upper_bound_of_the_tight_pld_value(sigma, q, steps, delta):
    # PLD accounting is (near) exact; an RDP bound must never be below it.
    acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-3)
    acc.compose(_event(sigma, q, steps))
    tight = acc.get_epsilon(delta)
    ours = accounting.epsilon([(sigma, q, steps)], delta)
    assert tight <= ours <= 2 * tight


def test_composition_is_additive_in_steps():
    split = accounting.epsilon([(1.0, 0.05, 300), (1.0, 0.05, 700)], 1e-5)
    whole = accounting.epsilon([(1.0, 0.05, 1000)], 1e-5)
    assert split == pytest.approx(whole, rel=1e-12)
    assert accounting.epsilon([(1.0, 0.05, 300)], 1e-5) < whole


def test_empty_history_costs_nothing_and_zero_noise_is_infinite():
    assert accounting.epsilon([], 1e-5) == 0.0
    assert accounting.epsilon([(0.0, 0.1, 10)], 1e-5) == math.inf


@pytest.mark.parametrize(("target", "q", "steps"), [(8.0, 0.4, 18), (3.0, 0.02, 3000)])
def test_calibration_hits_the_target_from_below(target, q, steps):
    sigma = accounting.calibrate_noise(target, 1e-5, q, steps)
    eps = accounting.epsilon([(sigma, q, steps)], 1e-5)
    # Within 0.1% of the budget, from below, as docs/privacy.md promises.
    assert eps <= target
    assert eps > target * (1 - 1e-3)
    # A noticeably smaller noise multiplier would overspend.
    assert accounting.epsilon([(sigma * 0.99, q, steps)], 1e-5) > target


def test_calibration_accounts_for_prior_spending():
    prior = [(2.0, 0.1, 100)]
    spent = accounting.epsilon(prior, 1e-5)
    sigma = accounting.calibrate_noise(2 * spent, 1e-5, 0.1, 100, prior=prior)
    assert spent < accounting.epsilon([*prior, (sigma, 0.1, 100)], 1e-5) <= 2 * spent
    assert sigma > accounting.calibrate_noise(2 * spent, 1e-5, 0.1, 100)
    with pytest.raises(FedxrayError, match="already spent"):
        accounting.calibrate_noise(spent, 1e-5, 0.1, 100, prior=prior)


def test_calibration_refuses_impossible_budgets():
    with pytest.raises(FedxrayError, match="too small"):
        accounting.calibrate_noise(1e-4, 1e-5, 1.0, 1_000_000)
    with pytest.raises(FedxrayError):
        accounting.calibrate_noise(-1.0, 1e-5, 0.1, 10)
    with pytest.raises(FedxrayError):
        accounting.calibrate_noise(1.0, 1.5, 0.1, 10)


def test_steps_per_epoch():
    assert accounting.steps_per_epoch(100, 10) == (0.1, 10)
    assert accounting.steps_per_epoch(95, 10) == (10 / 95, 10)
    assert accounting.steps_per_epoch(5, 10) == (1.0, 1)
    with pytest.raises(FedxrayError, match="empty"):
        accounting.steps_per_epoch(0, 10)


@pytest.mark.parametrize("raw", [6.13649, 3.66549, 3.6655, 0.0004, 7.9995, 5.09, 8.0])
def test_epsilon_shown_one_way_and_what_remains_adds_up(raw):
    # A raw value and the same value read back from a JSON document show the same text.
    shown = accounting.epsilon_text(raw)
    assert accounting.epsilon_text(accounting.epsilon_value(raw)) == shown
    assert shown == f"{float(shown):.3f}"
    # The spent and the remaining shown add up to the budget people read.
    left = accounting.epsilon_left_text(8, raw)
    assert round(float(shown) + float(left), 3) == 8.0, (shown, left)


def test_epsilon_text_without_dp():
    assert accounting.epsilon_text(math.inf) == "inf"
    assert accounting.epsilon_text(None, "inf (no DP)") == "inf (no DP)"
