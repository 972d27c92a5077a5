"""The audit's statistics on synthetic scores whose answer is known (no model, no torch)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats
from scipy.special import expit

from fedxray.audit import binomial, lira, one_run
from fedxray.audit.hypothesis import epsilon_from_rates, epsilon_lower_bound
from fedxray.audit.roc import attack_auc, tpr_at_fpr
from fedxray.audit.run import membership_report

CONF = 0.95
BETA = 1 - CONF


def allowed_failures(trials: int, rate: float) -> int:
    """Most failures a procedure with failure rate <= ``rate`` shows, except once in 1000."""
    return int(stats.binom.ppf(0.999, trials, rate))


def randomized_response(n: int, eps: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """eps-DP randomised response on fair coins: (scores in {-1, +1}, coins)."""
    coins = rng.random(n) < 0.5
    sign = np.where(coins, 1.0, -1.0)
    return np.where(rng.random(n) < expit(eps), sign, -sign), coins


# -- binomial ------------------------------------------------------------------------------------
def test_binomial_tail_and_pmf_match_scipy():
    k = np.arange(-2, 33)
    for n, p in [(30, 0.3), (30, 0.97), (1, 0.5), (200, 0.01)]:
        np.testing.assert_allclose(binomial.tail(k, n, p), stats.binom.sf(k - 1, n, p),
                                   rtol=1e-10, atol=1e-300)  # fmt: skip
        np.testing.assert_allclose(binomial.pmf(k, n, p), stats.binom.pmf(k, n, p),
                                   rtol=1e-9, atol=1e-300)  # fmt: skip


def test_clopper_pearson_matches_beta_quantiles_and_edges():
    k, n, a = np.array([0, 1, 7, 19, 20]), 20, 0.025
    lo = binomial.clopper_pearson_lower(k, n, a)
    hi = binomial.clopper_pearson_upper(k, n, a)
    want_lo = np.where(k == 0, 0.0, stats.beta.ppf(a, np.maximum(k, 1), n - k + 1))
    want_hi = np.where(k == n, 1.0, stats.beta.ppf(1 - a, k + 1, np.maximum(n - k, 1)))
    np.testing.assert_allclose(lo, want_lo, rtol=1e-10)
    np.testing.assert_allclose(hi, want_hi, rtol=1e-10)
    assert lo[-1] == pytest.approx(a ** (1 / n))  # all successes: the classic closed form
    with pytest.raises(ValueError):
        binomial.clopper_pearson_lower(3, 2, a)


def test_clopper_pearson_covers_at_the_stated_level():
    rng = np.random.default_rng(0)
    p, n, a, trials = 0.3, 40, 0.05, 4000
    k = rng.binomial(n, p, size=trials)
    misses_lo = int((binomial.clopper_pearson_lower(k, n, a) > p).sum())
    misses_hi = int((binomial.clopper_pearson_upper(k, n, a) < p).sum())
    assert misses_lo <= allowed_failures(trials, a)
    assert misses_hi <= allowed_failures(trials, a)
    assert misses_lo > 0 and misses_hi > 0  # exact, not vacuous


# -- ROC ---------------------------------------------------------------------------------------
def test_auc_and_tpr_at_fpr_on_a_known_example():
    member = [0.9, 0.8, 0.7, 0.1]
    non = [0.85, 0.2, 0.15, 0.05]
    # pairs member > non: 0.9 beats 4, 0.8 beats 3, 0.7 beats 3, 0.1 beats 1 -> 11/16
    assert attack_auc(member, non) == pytest.approx(11 / 16)
    rows = tpr_at_fpr(member, non, fprs=(0.1, 0.25, 0.5))
    # FPR 0.1 < 1/4: only the threshold above every non-member qualifies -> TPR 1/4
    assert (rows[0].tpr, rows[0].achieved_fpr, rows[0].resolved) == (0.25, 0.0, False)
    assert (rows[1].tpr, rows[1].achieved_fpr, rows[1].resolved) == (0.75, 0.25, True)
    assert rows[2].tpr == 0.75 and rows[2].achieved_fpr == 0.25  # FPR 0.5 adds no member


def test_identical_distributions_give_auc_near_half():
    rng = np.random.default_rng(1)
    aucs = [attack_auc(rng.normal(size=500), rng.normal(size=500)) for _ in range(20)]
    assert abs(np.mean(aucs) - 0.5) < 0.02


# -- the hypothesis-testing bound ----------------------------------------------------------------
def test_epsilon_from_rates():
    assert epsilon_from_rates(0.5, 0.5, 0.0) == 0.0
    assert epsilon_from_rates(0.2, 0.6, 0.0) == 0.0  # worse than chance proves nothing
    assert epsilon_from_rates(0.8, 0.1, 0.0) == pytest.approx(math.log(8))
    assert epsilon_from_rates(0.99, 0.5, 0.0) == pytest.approx(math.log(0.5 / 0.01))
    assert epsilon_from_rates(0.8, 0.1, 0.05) == pytest.approx(math.log(0.75 / 0.1))
    assert epsilon_from_rates(0.3, 0.0, 0.0) == math.inf


def test_bound_is_zero_on_identical_distributions_often_enough():
    trials, positive = 300, 0
    for seed in range(trials):
        rng = np.random.default_rng(seed)
        b = epsilon_lower_bound(rng.normal(size=100), rng.normal(size=100), delta=1e-5,
                                confidence=CONF, rng=rng)  # fmt: skip
        positive += b.lower > 0
    assert positive <= allowed_failures(trials, BETA)


def test_well_separated_scores_give_a_large_bound():
    rng = np.random.default_rng(2)
    b = epsilon_lower_bound(rng.normal(6, 1, 2000), rng.normal(0, 1, 2000), delta=1e-5,
                            confidence=CONF, rng=rng)  # fmt: skip
    assert b.lower > 4.0
    assert b.members == b.non_members == 1000  # half of each: the other half chose the threshold
    assert b.lower <= b.estimate


@pytest.mark.parametrize("eps", [0.5, 2.0])
def test_bound_on_randomized_response_stays_below_eps_and_approaches_it(eps):
    trials, above = 200, 0
    for seed in range(trials):
        rng = np.random.default_rng(seed)
        scores, coins = randomized_response(400, eps, rng)
        b = epsilon_lower_bound(scores[coins], scores[~coins], delta=1e-5, rng=rng)
        above += b.lower > eps
    assert above <= allowed_failures(trials, BETA)
    rng = np.random.default_rng(99)
    scores, coins = randomized_response(100_000, eps, rng)
    b = epsilon_lower_bound(scores[coins], scores[~coins], delta=1e-5, rng=rng)
    assert abs(b.lower - eps) < 0.1 * eps


def test_report_is_json_ready_and_flags_a_bound_above_the_accountant():
    rng = np.random.default_rng(3)
    rep = membership_report(rng.normal(8, 1, 400), rng.normal(0, 1, 400), attack="loss-threshold",
                            delta=1e-5, rng=rng, accountant_epsilon=1.0)  # fmt: skip
    assert rep.exceeds_accountant
    d = json.loads(json.dumps(rep.to_dict(), allow_nan=False))
    assert d["exceeds_accountant"] is True and d["members"] == 400
    assert [r["fpr"] for r in d["tpr_at_fpr"]] == [0.001, 0.01, 0.1]
    no_dp = membership_report(rng.normal(size=10), rng.normal(size=10), attack="loss-threshold",
                              delta=1e-5, rng=rng, accountant_epsilon=math.inf)  # fmt: skip
    d = json.loads(json.dumps(no_dp.to_dict(), allow_nan=False))
    assert d["accountant_epsilon"] is None and d["accountant_trained_without_dp"] is True
    assert not no_dp.exceeds_accountant and not no_dp.warnings
    few = membership_report(rng.normal(size=10), rng.normal(size=10), attack="loss-threshold",
                            delta=1e-5, rng=rng, accountant_epsilon=8.0)  # fmt: skip
    # 5 per half: even a perfect attack proves at most log(1 / (1 - 0.025^(1/5))) - log(...)
    assert few.epsilon.max_possible == pytest.approx(
        epsilon_from_rates(0.025 ** (1 / 5), 1 - 0.025 ** (1 / 5), 1e-5)
    )
    assert few.epsilon.max_possible < 8.0 and "cannot reach" in few.warnings[0]


# -- one-run audit ------------------------------------------------------------------------------
def test_one_run_p_value_without_delta_is_the_binomial_tail():
    for eps in (0.0, 0.7, 3.0):
        assert one_run.p_value(100, 40, 30, eps, 0.0) == pytest.approx(
            stats.binom.sf(29, 40, expit(eps)), rel=1e-10
        )
    assert one_run.p_value(100, 40, 30, 1.0, 1e-3) > one_run.p_value(100, 40, 30, 1.0, 0.0)


def test_one_run_delta_term_by_hand():
    # m=3 canaries, r=2 guesses, v=2 correct, eps=0: q=1/2, P[B>=2]=1/4,
    # P[1<=B<2]/1 = 1/2, P[0<=B<2]/2 = 3/8 -> alpha = 1/2, p = 1/4 + 2*3*delta*1/2.
    assert one_run.p_value(3, 2, 2, 0.0, 0.01) == pytest.approx(0.25 + 0.03)


def test_one_run_all_correct_closed_form():
    # delta = 0, v = r: P[B >= r] = q^r <= beta  <=>  eps <= logit(beta^(1/r))
    r, beta = 100, 0.05
    q = beta ** (1 / r)
    want = math.log(q / (1 - q))
    got = one_run.epsilon_lower_bound(1000, r, r, delta=0.0, beta=beta)
    assert got == pytest.approx(want, abs=1e-6)
    assert one_run.epsilon_lower_bound(1000, r, r, delta=1e-4, beta=beta) < got
    assert one_run.epsilon_lower_bound(1000, r, r // 2, delta=0.0, beta=beta) == 0.0
    # Scores that give every canary away: every tried count is all right, and the best of
    # them is the ceiling the report gives (tested at beta / 5, so below the single-count one).
    coins = np.arange(200) % 2 == 0
    res = one_run.one_run_audit(coins.astype(float), coins, delta=0.0, confidence=1 - beta)
    assert all(t.correct == t.k_plus + t.k_minus for t in res.tried)
    assert res.epsilon_lower == res.max_possible > 0
    assert res.epsilon_lower < one_run.epsilon_lower_bound(200, 200, 200, delta=0.0, beta=beta)


def test_guesses_take_the_extremes_and_abstain_in_between():
    g = one_run.guesses([0.5, 0.9, 0.1, 0.7, 0.3], k_plus=2, k_minus=1)
    assert g.tolist() == [0, 1, -1, 1, 0]
    with pytest.raises(ValueError):
        one_run.guesses([1.0, 2.0], 2, 1)


def test_one_run_on_randomized_response_stays_below_eps_at_the_stated_confidence():
    eps, trials, above = 1.0, 300, 0
    for seed in range(trials):
        rng = np.random.default_rng(seed)
        scores, coins = randomized_response(400, eps, rng)
        res = one_run.one_run_audit(scores, coins, delta=1e-5, confidence=CONF)
        above += res.epsilon_lower > eps
        assert len(res.tried) == len(one_run.default_guess_counts(400))
    assert above <= allowed_failures(trials, BETA)


def test_one_run_approaches_eps_with_many_canaries():
    rng = np.random.default_rng(5)
    m = 20_000
    scores, coins = randomized_response(m, 1.0, rng)
    res = one_run.one_run_audit(scores, coins, delta=1e-5, guess_counts=[(m // 2, m // 2)])
    assert abs(res.epsilon_lower - 1.0) < 0.1  # below 1 in 95 % of seeds: tested above
    few = one_run.one_run_audit(scores[:200], coins[:200], delta=1e-5, guess_counts=[(100, 100)])
    assert few.epsilon_lower < res.epsilon_lower


def test_one_run_without_signal_proves_nothing_often_enough():
    trials, positive = 300, 0
    for seed in range(trials):
        rng = np.random.default_rng(seed)
        res = one_run.one_run_audit(rng.normal(size=200), rng.random(200) < 0.5, delta=1e-5)
        positive += res.epsilon_lower > 0
    assert positive <= allowed_failures(trials, BETA)


# -- scores ---------------------------------------------------------------------------------------
def test_logit_confidence_and_loss_from_logits():
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 40.0, 0.0]])
    labels = np.array([0, 1])
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(lira.loss_scores(logits, labels), np.log(p[[0, 1], labels]))
    phi = lira.logit_confidence(logits, labels)
    assert phi[0] == pytest.approx(math.log(p[0, 0] / (1 - p[0, 0])))
    assert phi[1] == pytest.approx(40.0 - math.log(2.0))  # p rounds to 1, phi does not


def test_lira_uses_only_out_models_and_per_example_gaussians():
    rng = np.random.default_rng(6)
    n, r = 50, 40
    mu, sd = rng.normal(0, 3, n), rng.uniform(0.5, 2.0, n)
    ref = mu + sd * rng.normal(size=(r, n))
    out = rng.random((r, n)) < 0.5
    ref_in = np.where(out, ref, 1e6)  # IN models' values must not matter
    target = mu + 2.0 * sd
    z = lira.lira_offline_scores(target, ref_in, out, min_per_example=5)
    assert np.median(z) == pytest.approx(2.0, abs=0.4)
    # few OUT values per example: one global variance, so z scales with 1 / pooled sd
    z_global = lira.lira_offline_scores(target, ref_in, out, min_per_example=10_000)
    pooled = np.sqrt(np.mean(sd**2))
    assert np.median(z_global * pooled / sd) == pytest.approx(2.0, abs=0.4)
    with pytest.raises(ValueError):
        lira.lira_offline_scores(target, ref, np.zeros_like(out))


def test_unit_means_average_per_patient():
    uniq, means = lira.unit_means([1.0, 3.0, 10.0], ["b", "b", "a"])
    assert uniq.tolist() == ["a", "b"] and means.tolist() == [10.0, 2.0]
