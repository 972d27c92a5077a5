"""One call per audit: a model and shards in, a typed report out (the CLI only renders it)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from fedxray.audit import lira
from fedxray.audit.canaries import CanarySet
from fedxray.audit.hypothesis import epsilon_lower_bound
from fedxray.audit.models import Progress, Trainer, View, model_logits, reference_logits
from fedxray.audit.one_run import one_run_audit
from fedxray.audit.report import ATTACKS, LIRA, LOSS, AuditReport, CanaryReport
from fedxray.audit.roc import DEFAULT_FPRS, attack_auc, tpr_at_fpr
from fedxray.data.shard import Shard
from fedxray.data.split import patient_keys
from fedxray.errors import FedxrayError
from fedxray.training.accounting import epsilon_text

DEFAULT_REFERENCE_MODELS = 8
DEFAULT_CONFIDENCE = 0.95


def membership_report(
    member_scores,
    non_member_scores,
    *,
    attack: str,
    delta: float,
    rng: np.random.Generator,
    confidence: float = DEFAULT_CONFIDENCE,
    fprs: Sequence[float] = DEFAULT_FPRS,
    accountant_epsilon: float | None = None,
    reference_models: int = 0,
    seconds: float = 0.0,
) -> AuditReport:
    """The report from one score per member and per non-member unit (pure: no model)."""
    member = np.asarray(member_scores, dtype=np.float64)
    non = np.asarray(non_member_scores, dtype=np.float64)
    bound = epsilon_lower_bound(member, non, delta=delta, confidence=confidence, rng=rng)
    warnings = []
    finite = accountant_epsilon is not None and math.isfinite(accountant_epsilon)
    if finite and bound.max_possible < accountant_epsilon:
        warnings.append(
            f"with {bound.members} members and {bound.non_members} non-members in the half the "
            f"bound is computed on, even a perfect attack could only show epsilon >= "
            f"{bound.max_possible:.2f}: this audit cannot reach the accountant's "
            f"{epsilon_text(accountant_epsilon)}"
        )
    return AuditReport(
        attack=attack,
        members=len(member),
        non_members=len(non),
        auc=attack_auc(member, non),
        tpr_at_fpr=tpr_at_fpr(member, non, fprs),
        epsilon=bound,
        accountant_epsilon=accountant_epsilon,
        accountant_delta=delta,
        reference_models=reference_models,
        seconds=seconds,
        warnings=warnings,
    )


def _units(shard: Shard, tag: str) -> np.ndarray:
    keys = patient_keys(shard).astype(str)
    return keys if shard.patients is not None else np.char.add(tag, keys)


def audit_membership(
    model: nn.Module,
    members: Shard,
    non_members: Shard,
    *,
    delta: float,
    attack: str = LIRA,
    trainer: Trainer | None = None,
    reference_models: int = DEFAULT_REFERENCE_MODELS,
    accountant_epsilon: float | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
    fprs: Sequence[float] = DEFAULT_FPRS,
    seed: int | None = None,
    channels: int = 1,
    device: str | torch.device = "cpu",
    view: View | None = None,
    progress: Progress | None = None,
) -> AuditReport:
    """Membership inference on ``model``: members (trained on) against non-members (not).

    Scores are per image, averaged per patient; the patient is the unit tested. LiRA needs
    ``trainer`` (e.g. FedxrayTrainer) to train ``reference_models`` local models on halves of
    the non-members. ``delta`` is the plan's; ``accountant_epsilon`` is shown beside the bound.
    ``view``: the model's input view (default: images scaled, with ``channels`` channels).
    """
    started = time.perf_counter()
    if attack not in ATTACKS:
        raise FedxrayError(f"unknown attack {attack!r}", hint=f"choose {', '.join(ATTACKS)}")
    if attack == LIRA and trainer is None:
        raise FedxrayError("the LiRA attack needs a trainer for its reference models")
    if len(members) == 0 or len(non_members) == 0:
        raise FedxrayError("the audit needs at least one member and one non-member image")
    if list(members.classes) != list(non_members.classes):
        raise FedxrayError("members and non-members have different class lists")
    m_units, n_units = _units(members, "member:"), _units(non_members, "non-member:")
    if members.patients is not None and non_members.patients is not None:
        both = np.intersect1d(m_units, n_units)
        if len(both):
            raise FedxrayError(
                f"{len(both)} patient(s) are among both the members and the non-members",
                hint="split members and non-members by patient",
            )
    rng = np.random.default_rng(seed)
    images = np.concatenate([members.images, non_members.images])
    labels = np.concatenate([members.labels, non_members.labels]).astype(np.int64)
    units = np.concatenate([m_units, n_units])
    target = model_logits(model, images, channels=channels, device=device, view=view)
    if attack == LOSS:
        scores = lira.loss_scores(target, labels)
        n_ref = 0
    else:
        ref, out_mask = reference_logits(
            trainer, non_members, n_units, images, units, n_models=reference_models, rng=rng,
            channels=channels, device=device, view=view, progress=progress,
        )  # fmt: skip
        ref_phi = np.stack([lira.logit_confidence(r, labels) for r in ref])
        scores = lira.lira_offline_scores(lira.logit_confidence(target, labels), ref_phi, out_mask)
        n_ref = reference_models
    uniq, per_unit = lira.unit_means(scores, units)
    is_member = np.isin(uniq, m_units)
    return membership_report(
        per_unit[is_member],
        per_unit[~is_member],
        attack=attack,
        delta=delta,
        rng=rng,
        confidence=confidence,
        fprs=fprs,
        accountant_epsilon=accountant_epsilon,
        reference_models=n_ref,
        seconds=time.perf_counter() - started,
    )


def canary_scores(
    model: nn.Module,
    canary_shard: Shard,
    canaries: CanarySet,
    *,
    channels: int = 1,
    device: str | torch.device = "cpu",
    view: View | None = None,
) -> np.ndarray:
    """One loss score per canary (mean log-probability of its wrong label), in canary order."""
    logits = model_logits(model, canary_shard.images, channels=channels, device=device, view=view)
    scores = lira.loss_scores(logits, canary_shard.labels)
    uniq, per_unit = lira.unit_means(scores, patient_keys(canary_shard).astype(str))
    where = {u: i for i, u in enumerate(uniq.tolist())}
    missing = [p for p in canaries.patients if p not in where]
    if missing:
        raise FedxrayError(f"{len(missing)} canary patient(s) have no image in the canary shard")
    return per_unit[[where[p] for p in canaries.patients]]


def audit_canaries(
    model: nn.Module,
    canary_shard: Shard,
    canaries: CanarySet,
    *,
    delta: float,
    accountant_epsilon: float | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
    guess_counts: Sequence[tuple[int, int]] | None = None,
    channels: int = 1,
    device: str | torch.device = "cpu",
    view: View | None = None,
) -> CanaryReport:
    """The one-run audit of a model trained on ``apply_canaries``' training shard."""
    started = time.perf_counter()
    scores = canary_scores(
        model, canary_shard, canaries, channels=channels, device=device, view=view
    )
    result = one_run_audit(
        scores, canaries.included, delta=delta, confidence=confidence, guess_counts=guess_counts
    )
    return CanaryReport(
        score=LOSS,
        result=result,
        accountant_epsilon=accountant_epsilon,
        seconds=time.perf_counter() - started,
    )
