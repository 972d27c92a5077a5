"""The `privacy` step: what a site's ledger says it has spent, per federation and round."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

from fedxray.plan import Plan
from fedxray.training.ledger import Ledger, RoundRow, federation_ids


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else round(x, 4)


@dataclass(frozen=True)
class Spending:
    """One federation's entry in the ledger."""

    federation: str
    name: str | None  # known when the plan was given
    budget_epsilon: float | None
    delta: float | None
    unit: str | None
    noise_multiplier: float | None
    rounds: list[RoundRow]

    def to_dict(self) -> dict:
        return {
            **dataclasses.asdict(self),
            "rounds": [
                dataclasses.asdict(r)
                | {"epsilon_spent": _num(r.epsilon_spent), "epsilon_total": _num(r.epsilon_total)}
                for r in self.rounds
            ],
        }


@dataclass(frozen=True)
class PrivacyReport:
    ledger: Path
    federations: list[Spending]
    plan: str | None = None  # the federation asked about, by name

    def to_dict(self) -> dict:
        return {"ledger": str(self.ledger), "federations": [f.to_dict() for f in self.federations]}


def privacy_report(ledger: str | os.PathLike, plan: Plan | None = None) -> PrivacyReport:
    """Every federation the ledger records, or only the plan's (with its budget)."""
    feds = federation_ids(ledger)
    if plan is not None:
        feds = [plan.federation_id] if plan.federation_id in feds else []
    out = []
    for fid in feds:
        led = Ledger.load(ledger, fid)
        mine = plan is not None and fid == plan.federation_id
        out.append(
            Spending(
                federation=fid,
                name=plan.name if mine else None,
                budget_epsilon=plan.settings.dp.epsilon if mine else None,
                delta=led.delta,
                unit=led.unit,
                noise_multiplier=led.noise_multiplier,
                rounds=led.rounds(),
            )
        )
    return PrivacyReport(Path(ledger), out, plan.name if plan is not None else None)
