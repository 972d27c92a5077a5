"""A round's privacy bookkeeping: the noise multiplier, the budget check before training, and
the write-ahead record of every epoch in the site's ledger.

Order, chosen so that a crash can only over-count spending: each epoch is recorded (and the
ledger saved) before any of its results exist; the round is marked finished after its last.
"""

from __future__ import annotations

import math

from fedxray.errors import BudgetExceededError, FedxrayError
from fedxray.training import accounting
from fedxray.training.ledger import Ledger
from fedxray.training.sampling import Sampling
from fedxray.training.settings import TrainSettings


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
    # Calibrated ONCE, for every round still ahead, to end exactly within the budget.
    rounds_ahead = settings.rounds - round_number + 1
    planned = rounds_ahead * settings.local_epochs * sampling.steps_per_epoch
    q = sampling.sample_rate
    sigma = accounting.calibrate_noise(settings.epsilon_budget, settings.delta, q, planned)
    ledger.calibrate(
        noise_multiplier=sigma,
        delta=settings.delta,
        unit=sampling.unit,
        sample_rate=q,
        steps_per_epoch=sampling.steps_per_epoch,
        local_epochs=settings.local_epochs,
        rounds=rounds_ahead,
        first_round=int(round_number),
        total_steps=planned,
        target_epsilon=settings.epsilon_budget,
        max_grad_norm=settings.max_grad_norm,
    )
    return sigma


def check_budget(
    ledger: Ledger,
    settings: TrainSettings,
    sigma: float,
    sampling: Sampling,
    epochs: int,
    round_number: int,
) -> None:
    """Refuse (before anything is trained or written) ``epochs`` more that would overspend."""
    spent = ledger.epsilon()
    steps = sampling.steps_per_epoch * epochs
    after = ledger.epsilon(planned=[(sigma, sampling.sample_rate, steps)])
    budget = settings.epsilon_budget
    if after > budget * (1 + 1e-9):
        which = "local cap" if budget < settings.target_epsilon else "plan's target"
        raise BudgetExceededError(
            f"round {round_number} would raise epsilon from {spent:.3g} to {after:.3g}, "
            f"over the {which} {budget:g}; nothing was trained",
        )


def record_epoch(
    ledger: Ledger, round_number: int, epoch: int, sigma: float | None, sampling: Sampling
) -> int:
    """Count an epoch before it runs (write-ahead); return how often it was tried before."""
    attempt = sum(
        1 for h in ledger.to_dict()["history"] if h["round"] == round_number and h["epoch"] == epoch
    )
    ledger.record_epoch(
        round_number=round_number,
        epoch=epoch,
        steps=sampling.steps_per_epoch,
        noise_multiplier=sigma,
        sample_rate=sampling.sample_rate,
    )
    ledger.save()
    return attempt


def finish_round(ledger: Ledger, round_number: int) -> None:
    """Mark the round finished (also when a crash hit between its checkpoint and the ledger)."""
    if not ledger.round_finished(round_number):
        ledger.finish_round(round_number)
        ledger.save()
