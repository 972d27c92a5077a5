"""The `privacy` step: what a site's ledger says it has spent, per federation, round and in
total; the site's budget (set only here, by the site); importing older ledgers."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from fedxray.errors import FedxrayError
from fedxray.plan import Plan
from fedxray.training.accounting import epsilon_text
from fedxray.training.accounting import epsilon_value as _num
from fedxray.training.ledger import Ledger, RoundRow, SiteBudget, SiteLedger, ledger_lock
from fedxray.training.ledger_import import import_ledger


@dataclass(frozen=True)
class Spending:
    """One federation's entry in the ledger."""

    federation: str
    name: str | None
    budget_epsilon: float | None  # the plan's target (or the local cap it was calibrated to)
    delta: float | None
    unit: str | None
    noise_multiplier: float | None
    epsilon: float  # this federation's, at its plan's delta (inf: trained without DP)
    rounds: list[RoundRow]

    def to_dict(self) -> dict:
        return {
            **dataclasses.asdict(self),
            "epsilon": _num(self.epsilon),
            "rounds": [
                dataclasses.asdict(r)
                | {"epsilon_spent": _num(r.epsilon_spent), "epsilon_total": _num(r.epsilon_total)}
                for r in self.rounds
            ],
        }


@dataclass(frozen=True)
class PrivacyReport:
    ledger: Path
    ledger_id: str
    federations: list[Spending]
    total_epsilon: float  # over every federation, at the site's delta (inf: one without DP)
    site_delta: float | None
    budget: SiteBudget | None
    plan: str | None = None  # the federation asked about, by name
    changes: list[str] = field(default_factory=list)  # what this call changed
    warnings: list[str] = field(default_factory=list)

    @property
    def remaining(self) -> float | None:
        if self.budget is None:
            return None
        return max(0.0, self.budget.epsilon - self.total_epsilon)

    def to_dict(self) -> dict:
        return {
            "ledger": str(self.ledger),
            "ledger_id": self.ledger_id,
            "total_epsilon": _num(self.total_epsilon),
            "delta": self.site_delta,
            "budget": None if self.budget is None else dataclasses.asdict(self.budget),
            "remaining": _num(self.remaining),
            "federations": [f.to_dict() for f in self.federations],
            "changes": self.changes,
            "warnings": self.warnings,
        }


def privacy_report(
    ledger: str | os.PathLike,
    plan: Plan | None = None,
    *,
    set_budget: float | None = None,
    budget_delta: float | None = None,
    imports: list[str | os.PathLike] = (),
) -> PrivacyReport:
    """Every federation the ledger records (or only the plan's), with the site's total and
    budget. ``set_budget`` (with ``budget_delta``) sets the site's budget, ``imports`` adds
    older ledgers; both create the ledger when it does not exist yet."""
    path = Path(ledger)
    changes: list[str] = []
    warnings: list[str] = []
    if set_budget is None and budget_delta is None and not imports:
        site = SiteLedger.load(path)
        if not site.exists:
            raise FedxrayError(f"privacy ledger not found: {path}")
        total = site.cached_total()
        total = site.total_epsilon() if total is None else total
    else:
        with ledger_lock(path):
            site = SiteLedger.load(path)
            if not site.exists:
                changes.append(f"created a new ledger {path.name} (id {site.ledger_id[:8]})")
            for other in imports:
                feds = import_ledger(site, other)
                changes.append(f"imported {len(feds)} federation(s) from {Path(other).name}")
            if set_budget is not None or budget_delta is not None:
                warnings += _set_budget(site, set_budget, budget_delta, changes)
            total = site.cache_total()
            site.save()
    if site.budget is not None and total > site.budget.epsilon * (1 + 1e-9):
        warnings.append(
            f"the site's total epsilon {epsilon_text(total)} is over its budget "
            f"{site.budget.epsilon:g}: training is refused until the site raises it"
        )
    feds = sorted(site.federation_ids(), key=lambda fid: _first_trained(site.federation(fid)))
    if plan is not None:
        feds = [plan.federation_id] if plan.federation_id in feds else []
    out = [_spending(site.federation(fid), plan) for fid in feds]
    name = plan.name if plan is not None else None
    return PrivacyReport(path, site.ledger_id, out, total, site.site_delta, site.budget, name,
                         changes, warnings)  # fmt: skip


def _set_budget(site: SiteLedger, epsilon, delta, changes: list[str]) -> list[str]:
    old = site.budget
    if epsilon is None:
        if old is None:
            raise FedxrayError("the site has no budget yet: give its epsilon", option="set_budget")
        epsilon = old.epsilon
    site.set_budget(epsilon, delta)
    new = site.budget
    changes.append(f"the site's budget is now epsilon {new.epsilon:g} at delta {new.delta:g}")
    if old is not None and (new.epsilon > old.epsilon or new.delta > old.delta):
        return [
            f"the site's budget was raised from epsilon {old.epsilon:g} (delta {old.delta:g}): "
            "its patients' data may now be used for more training than before"
        ]
    return []


def _first_trained(fed: Ledger) -> str:
    """When a federation was first trained at the site (its order in the report)."""
    return min((e["time"] for e in fed.entries()), default="~")


def _spending(fed: Ledger, plan: Plan | None) -> Spending:
    mine = plan is not None and fed.federation_id == plan.federation_id
    rows = fed.rounds()
    cal = fed.calibration or {}
    target = plan.settings.dp.epsilon if mine else cal.get("target_epsilon")
    return Spending(
        federation=fed.federation_id,
        name=plan.name if mine else fed.name,
        budget_epsilon=target,
        delta=fed.delta,
        unit=fed.unit,
        noise_multiplier=fed.noise_multiplier,
        epsilon=math.inf if fed.non_private else max((r.epsilon_total for r in rows), default=0.0),
        rounds=rows,
    )
