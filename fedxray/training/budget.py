"""A round's privacy budget: the noise multiplier, and the checks before anything is trained.

Two caps hold at once. The federation's: its own epsilon (at the plan's delta) may not pass
the plan's target or the site's stricter local cap. The site's: the total over EVERY
federation in the site's ledger (at the site's delta) may not pass the budget the site set,
which defaults to the first plan's target; only the site changes it, never a coordinator.
"""

from __future__ import annotations

import math

from fedxray.errors import BudgetExceededError, FedxrayError
from fedxray.training import accounting, centering
from fedxray.training.ledger import Ledger, SiteLedger
from fedxray.training.sampling import Sampling
from fedxray.training.settings import TrainSettings

RAISE_HINT = "only the site may raise its budget, with the privacy command"
# A federation that would get less than this share of its planned epsilon is refused.
MIN_SHARE = 0.5


def noise_multiplier(
    ledger: Ledger, settings: TrainSettings, sampling: Sampling, round_number: int, dp: bool
) -> float | None:
    """The federation's noise multiplier: from the ledger, or calibrated once (not saved yet)."""
    if ledger.non_private and dp:
        raise BudgetExceededError(
            f"federation {ledger.federation_id} was already trained without DP at this site",
            hint="no privacy guarantee remains for it; use a new federation for DP training",
        )
    if not dp:
        return None
    if ledger.calibration is not None:
        if ledger.unit != sampling.unit:
            raise FedxrayError(
                f"privacy unit changed: the ledger accounts per {ledger.unit}, "
                f"this run would sample per {sampling.unit}"
            )
        if not math.isclose(ledger.delta, settings.delta, rel_tol=1e-12):
            raise FedxrayError(
                f"delta changed: the ledger uses {ledger.delta:g}, the plan says {settings.delta:g}"
            )
        return ledger.noise_multiplier
    site = adopt_site_budget(ledger, settings)
    _refuse_without_guarantee(ledger)
    # Calibrated ONCE, for every round still ahead, to end exactly within both caps; a
    # centring release still to come (round 1) is counted first.
    rounds_ahead = settings.rounds - round_number + 1
    release = centering.release_history(settings, round_number)
    training_rounds = rounds_ahead - (1 if release else 0)
    planned = training_rounds * settings.local_epochs * sampling.steps_per_epoch
    q = sampling.sample_rate
    own = accounting.calibrate_noise(settings.epsilon_budget, settings.delta, q, planned, release)
    # Other federations: what they spent, and what they were calibrated to spend still.
    others = [*site.history(exclude=ledger.federation_id), *site.reserved(ledger.federation_id)]
    budget = site.budget
    try:
        shared = accounting.calibrate_noise(
            budget.epsilon, budget.delta, q, planned, [*others, *release]
        )
    except BudgetExceededError as e:
        raise _no_room(budget.epsilon, e.message) from None
    sigma = max(own, shared)
    ends_at = accounting.epsilon([*release, (sigma, q, planned)], settings.delta)
    if ends_at < MIN_SHARE * settings.epsilon_budget:
        # So much noise would make this site's updates noise, not signal, for the federation.
        raise _no_room(
            budget.epsilon,
            f"it leaves this federation epsilon {ends_at:.3g} of its {settings.epsilon_budget:g}",
        )
    ledger.calibrate(
        noise_multiplier=sigma,
        delta=settings.delta,
        unit=sampling.unit,
        sample_rate=q,
        steps_per_epoch=sampling.steps_per_epoch,
        local_epochs=settings.local_epochs,
        rounds=rounds_ahead,
        centering_release=[list(r) for r in release],
        first_round=int(round_number),
        # With the release's step: what reserved() holds back for this federation (the
        # release counted at the training noise, which is below sigma_m: conservative).
        total_steps=planned + sum(n for _, _, n in release),
        target_epsilon=settings.epsilon_budget,
        max_grad_norm=settings.max_grad_norm,
        bound_by="plan" if own >= shared else "site budget",
        site_budget=budget.epsilon,
        planned_epsilon=ends_at,
    )
    return sigma


def calibration_notes(ledger: Ledger) -> list[str]:
    """What the site should know about its federation's noise (when the site's budget binds)."""
    c = ledger.calibration or {}
    if c.get("bound_by") != "site budget":
        return []
    return [
        f"the site's budget {c['site_budget']:g} (all federations) binds: this federation's "
        f"noise was raised so that its epsilon ends at {c['planned_epsilon']:.3g}, not "
        f"{c['target_epsilon']:g}"
    ]


def _no_room(budget: float, why: str) -> BudgetExceededError:
    return BudgetExceededError(
        f"the site's privacy budget {budget:g} (all federations) has no room for this "
        f"federation: {why}; nothing was trained",
        hint=RAISE_HINT,
        option="set_budget",
    )


def check_budget(
    ledger: Ledger,
    settings: TrainSettings,
    sigma: float,
    sampling: Sampling,
    epochs: int,
    round_number: int,
) -> None:
    """Refuse (before anything is trained or written) ``epochs`` more that would overspend
    the federation's budget or the site's."""
    if epochs <= 0:
        return
    planned = [(sigma, sampling.sample_rate, sampling.steps_per_epoch * epochs)]
    spent, after = ledger.epsilon(), ledger.epsilon(planned=planned)
    budget = settings.epsilon_budget
    if after > budget * (1 + 1e-9):
        which = "local cap" if budget < settings.target_epsilon else "plan's target"
        raise BudgetExceededError(
            f"round {round_number} would raise epsilon from {spent:.3g} to {after:.3g}, "
            f"over the {which} {budget:g}; nothing was trained",
        )
    site = adopt_site_budget(ledger, settings)
    _refuse_without_guarantee(ledger)
    total, total_after = site.total_epsilon(), site.total_epsilon(planned=planned)
    if total_after > site.budget.epsilon * (1 + 1e-9):
        raise BudgetExceededError(
            f"round {round_number} would raise the site's total epsilon (all federations) "
            f"from {total:.3g} to {total_after:.3g}, over the site's budget "
            f"{site.budget.epsilon:g}; nothing was trained",
            hint=RAISE_HINT,
            option="set_budget",
        )


def adopt_site_budget(ledger: Ledger, settings: TrainSettings) -> SiteLedger:
    """The site's budget is the first DP federation's target until the site sets its own
    (also for a ledger imported without one). Saved with the ledger's next write."""
    site = ledger.site
    if site.budget is None:
        site.set_budget(settings.epsilon_budget, settings.delta, f"plan {ledger.name or '?'}")
    return site


def _refuse_without_guarantee(ledger: Ledger) -> None:
    """A federation trained without DP on these patients leaves no finite total."""
    others = [f for f in ledger.site.non_private() if f != ledger.federation_id]
    if others:
        name = ledger.site.federation(others[0]).name or others[0][:12]
        raise BudgetExceededError(
            f"this site trained federation {name} without DP: no privacy guarantee remains "
            "for its patients, so the site's total epsilon is infinite; nothing was trained",
            hint="a site that knowingly starts over names a new ledger file",
            option="new_ledger",
        )
