"""A site's `train-local` step: verified global model + local shard -> signed update."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

from fedxray import distributed
from fedxray.artifact import build_artifact, read_header
from fedxray.data.shard import check_geometry, small_shard_warning
from fedxray.data.shard_io import read_shard
from fedxray.errors import FedxrayError, ProtocolRefusal
from fedxray.filenames import round_file
from fedxray.fsio import check_writable, input_name, read_input, write_atomic
from fedxray.keys import PrivateIdentity
from fedxray.modelfile import load_model_artifact, require_iterate
from fedxray.models.registry import get_spec
from fedxray.plan import Plan
from fedxray.steps.shared import Party
from fedxray.steps.site_memory import SiteFiles, check_ledger, remember
from fedxray.training import ranks
from fedxray.training.accounting import epsilon_value
from fedxray.training.centering import is_statistics_round
from fedxray.training.follow import follow_round
from fedxray.training.ledger import SiteLedger
from fedxray.training.loop import Progress, RoundResult, train_round
from fedxray.training.settings import TrainSettings


def default_ledger_path(key_path: str | os.PathLike) -> Path:
    """Next to the site's key: one ledger per site key, for every federation."""
    return SiteFiles.beside_key(key_path).ledger


SEED_WARNING = (
    "a fixed seed is for reproducible experiments only: it shows in the process list and the "
    "shell history, and anyone who knows it can recompute the noise"
)


@dataclass(frozen=True)
class LocalRound:
    update: bytes  # the signed .update file (it stays at the site)
    result: RoundResult
    round: int
    path: Path | None = None  # where the update was written
    ledger: Path | None = None  # the privacy ledger the round was recorded in
    warnings: tuple[str, ...] = ()  # the site's own (seed on the command line, new ledger)
    centring: bool = False  # round 1 of a centring plan: a release of the mean feature

    def summary(self) -> dict:
        r = self.result
        return {
            "round": self.round,
            "examples": r.num_examples,
            "patients": r.num_patients,
            "loss": r.losses[-1] if r.losses else None,
            "losses": r.losses,
            "epsilon": epsilon_value(r.epsilon),
            "delta": r.privacy_delta,
            "noise_multiplier": r.noise_multiplier,
            "unit": r.privacy_unit,
            "dp": r.dp,
            "seconds": round(r.seconds, 2),
            "resumed_from_epoch": r.resumed_from_epoch,
            "replayed_epochs": r.replayed_epochs,
            "site_epsilon": epsilon_value(r.site_epsilon),
            "warnings": [*self.warnings, *r.warnings],
            "centring": self.centring,
        }


def train_local(
    model_bytes: bytes,
    shard_path: str | os.PathLike,
    plan: Plan,
    key: PrivateIdentity,
    *,
    files: SiteFiles,
    dp: bool = True,
    device: str = "cpu",
    seed: int | None = None,
    local_epsilon_cap: float | None = None,
    new_ledger: bool = False,
    progress: Progress | None = None,
    features_progress: Progress | None = None,
    what: str = "global model",
) -> LocalRound:
    """Verify the round's global model (``what`` names it), train on the shard, return the
    signed update.

    ``files`` say where the site keeps its ledger, site record and checkpoints; a ledger
    that would forget earlier spending is refused unless ``new_ledger`` (site_memory). The
    update is a function of its inputs only: rerunning a finished round (a lost update file)
    gives the same bytes, which ``mask`` accepts.
    """
    plan.require_site(key)
    model = load_model_artifact(model_bytes, plan, what=what)
    require_iterate(model, what)
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
    check_geometry(shard, plan.settings.model.geometry)
    notes = check_ledger(files, key.name, new_ledger)
    settings = TrainSettings.from_plan(plan.settings, local_epsilon_cap)
    result = train_round(
        dict(model.tensors),
        shard,
        settings,
        ledger_path=files.ledger,
        federation_id=plan.federation_id,
        federation_name=plan.name,
        round_number=r,
        device=device,
        seed=seed,
        dp=dp,
        checkpoint_dir=files.checkpoints,
        features_dir=files.features,
        progress=progress,
        features_progress=features_progress,
        before_spending=lambda site: remember(files, site),
    )
    remember(files, SiteLedger.load(files.ledger))
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
        # The parent's time, not the clock: the same round gives the same bytes (Ed25519 is
        # deterministic), and the file does not tell when or how long the site trained.
        created=model.header.created,
    ).data
    centring = is_statistics_round(settings, r)
    return LocalRound(update, result, r, warnings=tuple(notes), centring=centring)


def train_file(
    model: Path,
    shard: Path,
    me: Party,
    *,
    output=None,
    ledger=None,
    force=False,
    seed: int | None = None,
    **options,
) -> LocalRound | None:
    """:func:`train_local` from a model file to ``output`` (mode 0600: it stays at the site),
    by default SITE-round-NNNN.update beside the model; the ledger defaults to SITE.ledger
    beside the key, checkpoints go to a hidden folder beside the key.

    Under torchrun, rank 0 does all of that with the other ranks' help; they read the shard,
    train with it and return None (fedxray.training.ranks)."""
    world = distributed.join(options.get("device", "cpu"))
    if world.distributed:
        check_processes(me.plan, options.get("dp", True), world.size)
        options["device"] = str(world.device)
        if not world.leader:
            follow_round(read_shard(shard), world.device)
            return None
    ranks.reset()
    try:
        return _train_file(model, shard, me, output=output, ledger=ledger, force=force,
                           seed=seed, **options)  # fmt: skip
    except BaseException:
        ranks.abort()  # the other ranks stop with rank 0 (when they wait for it)
        raise


def check_processes(plan: Plan, dp: bool, processes: int) -> None:
    """Refuse what several processes cannot share: training without DP, and a head trained
    on a fixed front end's cached features (a fraction of a second per step in one process,
    where the features are computed and cached)."""
    if processes <= 1:
        return
    if not dp:
        raise FedxrayError("training without DP runs in one process", option="nproc", value=1)
    if get_spec(plan.settings.model.arch).front_end is not None:
        raise FedxrayError(
            f"model {plan.settings.model.arch} trains its head on cached features: it runs in "
            "one process",
            option="nproc",
            value=1,
        )


def _train_file(model: Path, shard: Path, me: Party, *, output, ledger, force, seed, **options):
    plan, key = me.plan, me.identity
    plan.require_site(key)
    model_bytes = read_input(model, "global model")
    r = read_header(model_bytes, str(model)).round
    out = output or model.with_name(round_file("update", r, key.name))
    check_writable(out, force=force)
    files = SiteFiles.beside_key(me.key_path, ledger)
    local = train_local(
        model_bytes, shard, plan, key, files=files, seed=seed, what=input_name(model), **options
    )
    write_atomic(out, local.update, force=force, mode=0o600)
    return replace(local, path=out, ledger=files.ledger)
