"""A site's `train-local` step: verified global model + local shard -> signed update."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

from fedxray.artifact import build_artifact, read_header
from fedxray.data.shard import small_shard_warning
from fedxray.data.shard_io import read_shard
from fedxray.errors import FedxrayError, ProtocolRefusal
from fedxray.filenames import round_file
from fedxray.fsio import check_writable, input_name, read_input, write_atomic
from fedxray.keys import PrivateIdentity
from fedxray.modelfile import load_model_artifact
from fedxray.plan import Plan
from fedxray.steps.shared import Party
from fedxray.training.loop import Progress, RoundResult, train_round
from fedxray.training.settings import TrainSettings


def default_ledger_path(key_path: str | os.PathLike, plan: Plan) -> Path:
    """Next to the site's key: one ledger per site and federation."""
    key_path = Path(key_path)
    return key_path.with_name(f"{key_path.stem}-{plan.name}.ledger")


@dataclass(frozen=True)
class LocalRound:
    update: bytes  # the signed .update file (it stays at the site)
    result: RoundResult
    round: int
    path: Path | None = None  # where the update was written
    ledger: Path | None = None  # the privacy ledger the round was recorded in

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
    what: str = "global model",
) -> LocalRound:
    """Verify the round's global model (``what`` names it), train on the shard, return the
    signed update."""
    plan.require_site(key)
    model = load_model_artifact(model_bytes, plan, what=what)
    r = model.header.round
    rounds = plan.settings.training.rounds
    if not 1 <= r <= rounds:
        raise ProtocolRefusal(f"the global model is for round {r}; the plan has {rounds} rounds")
    if not dp and not plan.settings.dp.allow_no_dp:
        raise ProtocolRefusal(
            "the plan forbids non-private updates",
            hint="the coordinator must create the federation allowing them",
            option="allow_no_dp",
        )
    if local_epsilon_cap is not None and local_epsilon_cap <= 0:
        raise FedxrayError("the local epsilon cap must be positive", option="max_epsilon")
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
    small = small_shard_warning(shard)
    if small is not None:
        result.warnings.insert(0, small)
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


def train_file(
    model: Path, shard: Path, me: Party, *, output=None, ledger=None, force=False, **options
) -> LocalRound:
    """:func:`train_local` from a model file to ``output``, by default SITE-round-NNNN.update
    beside the model; the ledger defaults to KEY-PLAN.ledger beside the key, checkpoints go
    to a hidden folder beside the ledger."""
    plan, key = me.plan, me.identity
    plan.require_site(key)
    model_bytes = read_input(model, "global model")
    r = read_header(model_bytes, str(model)).round
    out = output or model.with_name(round_file("update", r, key.name))
    check_writable(out, force=force)
    ledger_path = ledger or default_ledger_path(me.key_path, plan)
    checkpoints = Path(ledger_path).with_name(f".{key.name}-checkpoints")
    local = train_local(
        model_bytes,
        shard,
        plan,
        key,
        ledger_path=ledger_path,
        checkpoint_dir=checkpoints,
        what=input_name(model),
        **options,
    )
    write_atomic(out, local.update, force=force)
    return replace(local, path=out, ledger=Path(ledger_path))
