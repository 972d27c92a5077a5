"""A site's `train-local` step: verified global model + local shard -> signed update."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from fedxray.artifact import build_artifact
from fedxray.data.shard_io import read_shard
from fedxray.errors import FedxrayError, ProtocolRefusal
from fedxray.keys import PrivateIdentity
from fedxray.modelfile import load_model_artifact
from fedxray.plan import Plan
from fedxray.training.loop import Progress, RoundResult, train_round
from fedxray.training.settings import TrainSettings


def default_ledger_path(key_path: str | os.PathLike, plan: Plan) -> Path:
    """Next to the site's key: one ledger per site and federation."""
    key_path = Path(key_path)
    return key_path.with_name(f"{key_path.stem}-{plan.name}.ledger")


@dataclass
class LocalRound:
    update: bytes
    result: RoundResult
    round: int

    def summary(self) -> dict:
        r = self.result
        return {
            "round": self.round,
            "examples": r.num_examples,
            "patients": r.num_patients,
            "loss": r.losses[-1] if r.losses else None,
            "losses": r.losses,
            "epsilon": None if math.isinf(r.epsilon) else round(r.epsilon, 4),
            "delta": r.privacy_delta,
            "noise_multiplier": r.noise_multiplier,
            "unit": r.privacy_unit,
            "dp": r.dp,
            "seconds": round(r.seconds, 2),
            "resumed_from_epoch": r.resumed_from_epoch,
            "warnings": r.warnings,
        }


def train_local(
    model_bytes: bytes,
    shard_path: str | os.PathLike,
    plan: Plan,
    key: PrivateIdentity,
    *,
    ledger_path: str | os.PathLike,
    checkpoint_dir: str | os.PathLike | None = None,
    dp: bool = True,
    device: str = "cpu",
    seed: int | None = None,
    local_epsilon_cap: float | None = None,
    progress: Progress | None = None,
) -> LocalRound:
    """Verify the round's global model, train on the shard, return the signed update."""
    plan.require_site(key)
    model = load_model_artifact(model_bytes, plan, what="global model")
    r = model.header.round
    rounds = plan.settings.training.rounds
    if not 1 <= r <= rounds:
        raise ProtocolRefusal(f"the global model is for round {r}; the plan has {rounds} rounds")
    if not dp and not plan.settings.dp.allow_no_dp:
        raise ProtocolRefusal(
            "the plan forbids non-private updates (--no-dp)",
            hint="the coordinator must create the federation with --allow-no-dp",
        )
    if local_epsilon_cap is not None and local_epsilon_cap <= 0:
        raise FedxrayError("the local epsilon cap must be positive")
    shard = read_shard(shard_path)
    if checkpoint_dir is not None:
        Path(checkpoint_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
    settings = TrainSettings.from_plan(plan.settings, local_epsilon_cap)
    result = train_round(
        dict(model.tensors),
        shard,
        settings,
        ledger_path=ledger_path,
        federation_id=plan.federation_id,
        round_number=r,
        device=device,
        seed=seed,
        dp=dp,
        checkpoint_dir=checkpoint_dir,
        progress=progress,
    )
    # Only what the protocol needs: losses are statistics of local data and stay in the summary.
    meta = {
        "num_examples": int(result.num_examples),
        "num_patients": int(result.num_patients),
        "epsilon": None if math.isinf(result.epsilon) else float(result.epsilon),
        "delta": result.privacy_delta,
        "dp": bool(result.dp),
        "unit": result.privacy_unit,
        "noise_multiplier": result.noise_multiplier,
        "local_epochs": settings.local_epochs,
    }
    update = build_artifact(
        "update",
        federation=plan.federation_id,
        round=r,
        sender=key.name,
        parent=model.digest,
        meta=meta,
        tensors=result.delta,
        signer=key,
    ).data
    return LocalRound(update, result, r)
