"""The coordinator's `abandon` step: give up a round, re-issue its weights for the next one."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from fedxray.artifact import peek_header
from fedxray.errors import FedxrayError, ProtocolRefusal, VerificationError
from fedxray.filenames import round_file
from fedxray.fsio import input_name, read_input, write_atomic
from fedxray.keys import PrivateIdentity
from fedxray.modelfile import build_model_artifact, load_model_artifact, require_iterate
from fedxray.plan import Plan
from fedxray.secagg.records import CoordinatorRound, RoundStatus, now
from fedxray.steps.protocol_state import coordinator_state
from fedxray.steps.shared import Party, beside, check_output, fields_of


@dataclass(frozen=True)
class AbandonResult:
    model: bytes  # the signed .model file of the next round: the same weights
    abandoned_round: int
    round: int
    reason: str | None
    path: Path | None = None

    def to_dict(self) -> dict:
        return {"model": str(self.path), **fields_of(self, "path")}


def abandon_round(
    global_model_bytes: bytes,
    plan: Plan,
    coordinator_key: PrivateIdentity,
    state_dir: str | os.PathLike,
    *,
    reason: str | None = None,
    what: str = "global model",
) -> AbandonResult:
    """Give up the round of ``global_model_bytes``: return its weights as round r + 1's model.

    For a round that cannot finish: a survivor never returns its reveal, or too few sites
    deliver. Nothing is unmasked and nothing secret is used; the round is recorded as
    abandoned in the coordinator's state first, so it can no longer be aggregated or
    unmasked (that would give two models for round r + 1). A round already unmasked cannot
    be abandoned. The sites' pair masks are per round, so round r + 1 masks afresh; the
    privacy the sites spent training round r stays spent.
    """
    plan.require_coordinator(coordinator_key)
    model = load_model_artifact(global_model_bytes, plan, what=what)
    require_iterate(model, what)
    r = model.header.round
    with coordinator_state(state_dir, coordinator_key.name, plan.federation_id) as st:
        rec = st.get(r) or CoordinatorRound()
        if rec.status is RoundStatus.UNMASKED:
            raise ProtocolRefusal(
                f"round {r} was already unmasked into round {r + 1}'s model; it cannot be "
                "abandoned",
                hint=f"send round {r + 1}'s model (run `fedxray unmask` again if it was lost)",
            )
        if rec.parent not in (None, model.digest):
            raise VerificationError(
                f"round {r} was aggregated from updates of another global model "
                f"({rec.parent[:12]}, given {model.digest[:12]})"
            )
        provenance = {
            "round": r,
            "parent": model.digest,
            "abandoned": True,
            "reason": reason,
            "aggregated": rec.closure is not None,
            "sites": [],
            "dropped": sorted(plan.site_names),
            "epsilon": {},
        }
        data = build_model_artifact(
            plan,
            round_number=r + 1,
            weights=model.tensors,
            parent=model.digest,
            provenance=provenance,
            signer=coordinator_key,
        ).data
        st.put(
            r,
            replace(rec, parent=model.digest, abandoned=True, abandoned_at=now(), reason=reason),
        )
    return AbandonResult(data, r, r + 1, reason)


def abandon_file(
    model: Path, me: Party, *, output: Path | None = None, reason: str | None = None, force=False
) -> AbandonResult:
    """:func:`abandon_round` from a model file to ``output``, by default the next round's
    model beside it."""
    data = read_input(model, "global model")
    header = peek_header(data)
    if header is None:
        raise FedxrayError(f"{model} is not a readable model", hint="check the file")
    r = header.round
    out = output or beside(model, round_file("model", r + 1), Path("."))
    check_output(out, force, model, f"the re-issued model would replace round {r}'s model: {out}")
    result = abandon_round(
        data, me.plan, me.identity, me.state_dir, reason=reason, what=input_name(model)
    )
    write_atomic(out, result.model, force=force)
    return replace(result, path=out)
