"""The `inspect` and `verify` steps: what a file says about itself, and whether it is genuine."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from fedxray.artifact import KINDS, parse_unverified, read_header
from fedxray.cards import card_from_bytes
from fedxray.errors import FedxrayError, VerificationError
from fedxray.fsio import input_name
from fedxray.keys import KEY_FORMAT, PrivateIdentity
from fedxray.modelfile import load_model_artifact
from fedxray.plan import plan_from_bytes
from fedxray.verification import load_artifact

SUFFIX_KIND = {suffix: kind for kind, suffix in KINDS.items()}


def expected_kind(path: str | Path) -> str | None:
    """The kind a file's name promises (``x.model`` must hold a model)."""
    return SUFFIX_KIND.get(Path(str(path)).suffix)


def describe(data: bytes, what: str) -> dict:
    """Header fields of any fedxray file, unverified. Never shows private key material."""
    if data.lstrip().startswith(b"{") and KEY_FORMAT.encode() in data[:200]:
        d = json.loads(data)
        return {"kind": "key", "name": d.get("name"), "note": "private key: contents not shown"}
    art, _ = parse_unverified(data, what)
    h = art.header.to_dict()
    h["file_sha256"] = art.digest
    h["tensors"] = {
        "count": len(art.tensors),
        "elements": int(sum(t.size for t in art.tensors.values())),
        "bytes": int(sum(t.nbytes for t in art.tensors.values())),
    }
    h["signature_checked"] = False
    return h


@dataclass
class Verdict:
    ok: bool
    kind: str | None
    sender: str | None = None
    round: int | None = None
    message: str = ""
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"ok": self.ok, "kind": self.kind, "sender": self.sender, "round": self.round,
                **self.details}  # fmt: skip


def verify_file(
    data: bytes,
    path: str,
    *,
    plan_data: bytes | None,
    kind: str | None = None,
    round_number: int | None = None,
    sender: str | None = None,
    site_key: PrivateIdentity | None = None,
    fingerprint: str | None = None,
) -> Verdict:
    """Check signature and provenance; raises VerificationError with the reason on failure."""
    what = input_name(path)
    kind = kind or expected_kind(path)
    if kind == "card":
        ident = card_from_bytes(data, what)
        return Verdict(
            True, "card", ident.name, 0, "valid site card", {"fingerprint": ident.fingerprint}
        )
    if kind == "plan" or (plan_data is None and kind is None):
        plan = plan_from_bytes(data, what)
        details = {
            "coordinator_fingerprint": plan.coordinator.fingerprint,
            "sites": plan.site_names,
        }
        if fingerprint and fingerprint.lower() != plan.coordinator.fingerprint:
            raise VerificationError(
                f"the plan's coordinator fingerprint is {plan.coordinator.fingerprint}, "
                f"expected {fingerprint}"
            )
        if site_key is not None:
            plan.require_site(site_key)
            details["site"] = site_key.name
        return Verdict(
            True, "plan", plan.coordinator.name, 0, f"valid plan of {plan.name}", details
        )
    if plan_data is None:
        raise FedxrayError(
            f"verifying a {kind or 'fedxray'} file needs the plan", hint="name it", option="plan"
        )
    plan = plan_from_bytes(plan_data, "plan")
    if kind is None:
        kind = read_header(data, what).kind
    if kind == "model":
        art = load_model_artifact(data, plan, round_number=round_number, what=what)
    else:
        art = load_artifact(
            data, plan=plan, kind=kind, round=round_number, sender=sender, what=what
        )
    if sender is not None and art.header.sender != sender:
        raise VerificationError(f"{what} was sent by {art.header.sender!r}, expected {sender!r}")
    return Verdict(
        True,
        art.header.kind,
        art.header.sender,
        art.header.round,
        f"valid {art.header.kind} from {art.header.sender}, round {art.header.round}",
        {"federation": plan.name, "file_sha256": art.digest, "parent": art.header.parent},
    )
