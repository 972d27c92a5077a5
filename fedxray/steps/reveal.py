"""A site's `reveal` step: the coordinator's closure -> this site's signed reveal."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from fedxray.artifact import build_artifact, peek_header
from fedxray.errors import FedxrayError, ProtocolRefusal, VerificationError
from fedxray.filenames import round_file
from fedxray.fsio import input_name, read_input, write_atomic
from fedxray.keys import PrivateIdentity
from fedxray.plan import Plan
from fedxray.secagg.records import now
from fedxray.secagg.rounds import closure_code, read_cohort, reveal_meta
from fedxray.steps.protocol_state import open_state
from fedxray.steps.shared import Party, beside, check_output, fields_of, plan_params
from fedxray.verification import load_artifact


@dataclass(frozen=True)
class RevealResult:
    data: bytes  # the signed .reveal file
    round: int
    survivors: list[str]
    dropped: list[str]
    site: str
    closure_id: str
    strict: bool
    path: Path | None = None

    @property
    def closure_code(self) -> str:
        return closure_code(self.closure_id)

    def to_dict(self) -> dict:
        doc = fields_of(self, "path")
        return {"reveal": str(self.path), **doc, "closure_code": self.closure_code}


def reveal(
    closure_bytes: bytes,
    plan: Plan,
    key: PrivateIdentity,
    state_dir: str | os.PathLike,
    *,
    what: str = "closure",
) -> RevealResult:
    """Answer the coordinator's closure: release this round's seeds shared with dropped sites
    (and, in strict mode, this site's self-mask seed). Only after masking this round, only
    for the masked update this site sent, and only for one closure per round.
    """
    plan.require_site(key)
    params = plan_params(plan)
    art = load_artifact(
        closure_bytes, plan=plan, kind="closure", sender=plan.coordinator.name, what=what
    )
    r, parent = art.header.round, art.header.parent
    cohort = read_cohort(art.header.meta, plan, params, "the closure")
    closure_id = cohort.closure_id(plan, r, parent)
    if art.header.meta.get("closure") != closure_id:
        raise VerificationError("the closure's id does not match its contents")
    me = key.name
    if me in cohort.dropped:
        raise ProtocolRefusal(
            f"the closure lists {me} as dropped from round {r}; it reveals nothing",
            hint="this site's masked update was not used; it can take part in the next round",
        )
    if not cohort.needs_reveals:
        raise VerificationError("the closure has nothing to reveal (no site dropped out)")
    with open_state(state_dir, me, plan.federation_id) as st:
        rec = st.get(r)
        if rec is None:
            raise ProtocolRefusal(
                f"{me} has not masked an update for round {r}",
                hint="a site reveals only after sending its own masked update for the round",
            )
        if rec.plan != plan.digest or rec.parent != parent:
            raise VerificationError(
                f"the closure of round {r} is about another plan or global model than the "
                f"update {me} masked"
            )
        if cohort.inputs[me] != rec.masked:
            raise VerificationError(
                f"the closure does not list the masked update {me} sent for round {r}"
            )
        if rec.closure not in (None, closure_id):
            raise ProtocolRefusal(
                f"{me} already revealed for a different closure of round {r}",
                hint="a site reveals for one closure per round; two different closures for "
                "one round, both signed by the coordinator, are proof of misbehaviour: keep them",
            )
        if rec.closure is None:
            st.put(r, replace(rec, closure=closure_id, revealed_at=now()))
    data = build_artifact(
        "reveal",
        federation=plan.federation_id,
        round=r,
        sender=me,
        parent=parent,
        meta=reveal_meta(key, plan, r, cohort, closure_id, rec.nonce),
        tensors={},
        signer=key,
    ).data
    return RevealResult(data, r, cohort.survivors, cohort.dropped, me, closure_id, cohort.strict)


def reveal_file(
    closure: Path, me: Party, *, output: Path | None = None, force=False
) -> RevealResult:
    """:func:`reveal` from a file (``-``: standard input) to ``output``, by default
    SITE-round-NNNN.reveal beside the closure."""
    data = read_input(closure, "closure")
    if output is None:
        header = peek_header(data)
        if header is None:
            raise FedxrayError(
                f"{closure} is not a readable closure", hint="check the file, or name the output"
            )
        output = beside(closure, round_file("reveal", header.round, me.identity.name), Path("."))
    check_output(output, force)
    result = reveal(data, me.plan, me.identity, me.state_dir, what=input_name(closure))
    write_atomic(output, result.data, force=force)
    return replace(result, path=output)
