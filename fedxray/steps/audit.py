"""The `audit` step: what a verified global model leaks about this site's patients, next to
what the accountant promises (the site's privacy ledger, else the plan's target).

Everything runs at the site: the model, the members (patients it was trained on) and the
non-members (patients it never saw) are read here, nothing is written and nothing is sent.
"""

from __future__ import annotations

import dataclasses
import math
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from fedxray.audit.models import FedxrayTrainer, Progress
from fedxray.audit.report import LIRA, LOSS, AuditReport
from fedxray.audit.run import DEFAULT_REFERENCE_MODELS, audit_membership
from fedxray.data.shard import Shard
from fedxray.data.shard_io import read_shard
from fedxray.errors import FedxrayError
from fedxray.models.registry import build_model, state_to_numpy
from fedxray.plan import Plan
from fedxray.steps.evaluate import shard_labels
from fedxray.steps.model import LoadedModel, load_model
from fedxray.steps.shared import ShardFile
from fedxray.training.ledger import SiteLedger
from fedxray.training.settings import TrainSettings

ATTACKS = {"loss": LOSS, "lira": LIRA}  # the command's names -> the library's
LEDGER = "ledger"
PLAN = "plan"


@dataclass(frozen=True)
class AccountantEpsilon:
    """The accountant's epsilon for a model, and where it comes from.

    From a site's ledger: the privacy that site spent in the rounds before the model (the
    model of round R was trained in rounds 1 to R-1); infinite when a round ran without DP.
    From the plan: the federation's target, which binds every site that trained with DP.
    """

    epsilon: float
    source: str  # LEDGER or PLAN
    ledger: Path | None = None
    rounds: int = 0  # training rounds the ledger counts for the model
    note: str | None = None

    def describe(self) -> str:
        if self.source == LEDGER:
            what = "rounds" if self.rounds != 1 else "round"
            return f"spent in {self.rounds} {what}, from the ledger {self.ledger}"
        return "the plan's target"

    def to_dict(self) -> dict:
        return {
            "epsilon": self.epsilon if math.isfinite(self.epsilon) else None,
            "trained_without_dp": self.epsilon == math.inf,
            "source": self.source,
            "ledger": None if self.ledger is None else str(self.ledger),
            "rounds": self.rounds,
            "note": self.note,
        }


def accountant_epsilon(
    plan: Plan, model_round: int, ledger: str | os.PathLike | None = None
) -> AccountantEpsilon:
    """The epsilon the audit is compared with: from ``ledger`` when given, else the plan's."""
    if ledger is None:
        dp = plan.settings.dp
        note = None
        if dp.allow_no_dp or not dp.enabled:
            note = (
                "the plan accepts updates trained without DP, so its target binds only the "
                "sites that used DP; the site's ledger says what it spent"
            )
        return AccountantEpsilon(dp.epsilon if dp.enabled else math.inf, PLAN, note=note)
    site = SiteLedger.load(ledger)
    if not site.exists:
        raise FedxrayError(f"privacy ledger not found: {ledger}", option="ledger")
    if plan.federation_id not in site.federation_ids():
        raise FedxrayError(
            f"the privacy ledger {ledger} records nothing for federation {plan.name}",
            hint="name this site's ledger of the model's federation",
            option="ledger",
        )
    rows = site.federation(plan.federation_id).rounds()
    before = [r for r in rows if r.round < model_round]
    epsilon = max((r.epsilon_total for r in before), default=0.0)
    return AccountantEpsilon(epsilon, LEDGER, Path(ledger), len({r.round for r in before}))


@dataclass(frozen=True)
class Audit:
    """What `fedxray audit` found: the attack's report, about which model and patients."""

    report: AuditReport
    model: LoadedModel
    members: ShardFile
    non_members: ShardFile
    accountant: AccountantEpsilon
    seed: int
    warnings: list[str]

    def to_dict(self) -> dict:
        doc = self.report.to_dict()
        return {
            "model": self.model.describe(),
            "shards": {
                "members": self.members.to_dict(),
                "non_members": self.non_members.to_dict(),
            },
            "accountant": self.accountant.to_dict(),
            "seed": self.seed,
            **doc,
            "warnings": [*self.warnings, *doc["warnings"]],
        }


def _model_shard(shard: Shard, plan: Plan, name: str) -> Shard:
    """The shard with its labels in the plan's class order (it must fit the model)."""
    labels = shard_labels(shard, plan, name)
    return dataclasses.replace(shard, labels=labels, classes=list(plan.settings.classes))


def reference_trainer(plan: Plan, seed: int, device: str = "cpu") -> FedxrayTrainer:
    """LiRA's reference models: trained here, without DP, with the plan's settings, for as
    many epochs as the federation's model had, from a fresh initialisation."""
    s = plan.settings
    model = build_model(
        s.model.model_id, s.model.image_size, len(s.classes), s.model.in_channels, seed=seed
    )
    return FedxrayTrainer(TrainSettings.from_plan(s), state_to_numpy(model), device=device)


def audit_files(
    model_path: str | os.PathLike,
    members_path: Path,
    non_members_path: Path,
    *,
    plan_path: str | os.PathLike | None = None,
    ledger: str | os.PathLike | None = None,
    attack: str = "loss",
    reference_models: int = DEFAULT_REFERENCE_MODELS,
    seed: int | None = None,
    device: str = "cpu",
    progress: Progress | None = None,
) -> Audit:
    """Membership inference against a verified model: ``members`` are patients of this site
    it was trained on, ``non_members`` patients it never saw (e.g. `prep --holdout`)."""
    if attack not in ATTACKS:
        raise FedxrayError(f"unknown attack {attack!r}", hint=f"choose {', '.join(ATTACKS)}")
    if reference_models < 1:
        raise FedxrayError("at least one reference model is needed", option="reference_models")
    if Path(members_path).resolve() == Path(non_members_path).resolve():
        raise FedxrayError(
            "the members and the non-members are the same file",
            hint="non-members are patients the model never saw, e.g. from prep's holdout",
        )
    loaded = load_model(model_path, plan_path)
    plan = loaded.plan
    accountant = accountant_epsilon(plan, loaded.round, ledger)
    members = _model_shard(read_shard(members_path), plan, Path(members_path).name)
    non_members = _model_shard(read_shard(non_members_path), plan, Path(non_members_path).name)
    warnings = [] if accountant.note is None else [accountant.note]
    if members.patients is None or non_members.patients is None:
        warnings.append(
            "a shard has no patient ids: images are tested one by one, and an image in both "
            "shards cannot be detected"
        )
    seed = secrets.randbits(63) if seed is None else seed
    trainer = reference_trainer(plan, seed, device) if attack == "lira" else None
    report = audit_membership(
        loaded.module,
        members,
        non_members,
        delta=plan.settings.dp.delta,
        attack=ATTACKS[attack],
        trainer=trainer,
        reference_models=reference_models,
        accountant_epsilon=accountant.epsilon,
        seed=seed,
        device=device,
        view=loaded.view,
        progress=progress,
    )
    return Audit(
        report,
        loaded,
        ShardFile.of(members_path, members),
        ShardFile.of(non_members_path, non_members),
        accountant,
        seed,
        warnings,
    )
