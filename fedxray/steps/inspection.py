"""The `inspect` and `verify` steps: what a file says about itself, and whether it is genuine."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedxray.artifact import KINDS, parse_unverified, read_header
from fedxray.cards import card_from_bytes
from fedxray.data.shard import Shard
from fedxray.data.shard_io import is_shard, shard_from_bytes
from fedxray.errors import FedxrayError, VerificationError
from fedxray.fsio import input_name
from fedxray.keys import KEY_FORMAT, PrivateIdentity, key_file_error
from fedxray.modelfile import averaged_rounds, load_model_artifact
from fedxray.plan import plan_from_bytes
from fedxray.training.ledger import FORMAT as LEDGER_FORMAT
from fedxray.verification import load_artifact

SUFFIX_KIND = {suffix: kind for kind, suffix in KINDS.items()}


def expected_kind(path: str | Path) -> str | None:
    """The kind a file's name promises (``x.model`` must hold a model)."""
    return SUFFIX_KIND.get(Path(str(path)).suffix)


def describe(data: bytes, what: str) -> dict:
    """What any fedxray file says about itself, unverified (a shard's checksum is checked).

    Never shows a secret: no private key material, no ledger seeds or noise draws (only the
    spending), no pseudonyms or images of a shard (only counts).
    """
    doc = _json_document(data)
    if data.lstrip()[:1] == b"{" and KEY_FORMAT.encode() in data[:200]:
        return _describe_key(doc, data, what)
    if isinstance(doc, dict) and doc.get("format") == LEDGER_FORMAT:
        return describe_ledger(doc)
    if is_shard(data):
        return describe_shard(shard_from_bytes(data, what), len(data))
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


def _json_document(data: bytes):
    if data.lstrip()[:1] != b"{":
        return None
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def _describe_key(doc, data: bytes, what: str) -> dict:
    if not isinstance(doc, dict) or not isinstance(doc.get("name"), str):
        raise key_file_error(what, data)
    return {"kind": "key", "name": doc["name"], "note": "private key: contents not shown"}


# Ledger fields shown by inspect: the spending, nothing that could replay a site's noise.
_CALIBRATION = ("accountant", "target_epsilon", "delta", "unit", "noise_multiplier", "rounds",
                "local_epochs", "first_round", "time")  # fmt: skip
_ROUND = ("epochs", "epsilon_after", "finished")
_BUDGET = ("epsilon", "delta", "source")
_TOTAL = ("epsilon", "delta")


def describe_ledger(doc: dict) -> dict:
    """A privacy ledger's summary: the site's budget and total, and per federation its
    calibration and spending by round."""
    federations = doc.get("federations")
    out = []
    for fid, entry in sorted(federations.items() if isinstance(federations, dict) else ()):
        entry = entry if isinstance(entry, dict) else {}
        calibration = entry.get("calibration") or {}
        rounds = entry.get("rounds") or {}
        history = entry.get("history") or []
        out.append(
            {
                "federation": fid,
                "name": entry.get("name"),
                "calibration": {k: calibration[k] for k in _CALIBRATION if k in calibration},
                "epochs_recorded": len(history) if isinstance(history, list) else None,
                "rounds": {
                    str(r): {k: row[k] for k in _ROUND if k in row}
                    for r, row in sorted(rounds.items(), key=lambda kv: _round_key(kv[0]))
                    if isinstance(row, dict)
                },
            }
        )
    return {
        "kind": "ledger",
        "format": doc.get("format"),
        "version": doc.get("version"),
        "ledger_id": doc.get("ledger_id"),
        "budget": _pick(doc.get("budget"), _BUDGET),
        "total": _pick(doc.get("total"), _TOTAL),
        "federations": out,
        "note": "a site's privacy ledger: it never leaves the site (see: fedxray privacy)",
    }


def _pick(value, keys: tuple[str, ...]) -> dict | None:
    return {k: value[k] for k in keys if k in value} if isinstance(value, dict) else None


def _round_key(r) -> tuple[int, str]:
    return (int(r), "") if str(r).isdigit() else (1 << 62, str(r))


def describe_shard(shard: Shard, size: int) -> dict:
    """A shard's summary: counts, classes and size; never a pseudonym or a pixel."""
    per_class = np.bincount(shard.labels, minlength=len(shard.classes))
    meta = shard.meta
    return {
        "kind": "shard",
        "format": meta.get("format"),
        "created": meta.get("created"),
        "image_size": shard.image_size,
        "geometry": shard.geometry,
        "classes": list(shard.classes),
        "images": len(shard),
        "images_per_class": dict(zip(shard.classes, map(int, per_class), strict=True)),
        "patients": shard.num_patients if shard.patients is not None else None,
        "duplicates_left_out": 0 if shard.duplicate_ids is None else len(shard.duplicate_ids),
        "pseudonyms": meta.get("pseudonyms"),
        "bytes": size,
        "checksum_checked": True,
        "note": "a site's images: the shard never leaves the site",
    }


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
            "settings": plan.settings.flat(),  # what every site trains with
            **_backbone_details(plan),
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
    details = {"federation": plan.name, "file_sha256": art.digest, "parent": art.header.parent,
               **_backbone_details(plan)}  # fmt: skip
    averaged = averaged_rounds(art) if kind == "model" else None
    if averaged is not None:  # a published average: its parent is the model sites train from
        details["averages_rounds"] = averaged
    return Verdict(
        True,
        art.header.kind,
        art.header.sender,
        art.header.round,
        f"valid {art.header.kind} from {art.header.sender}, round {art.header.round}",
        details,
    )


def _backbone_details(plan) -> dict:
    """A frozen-backbone plan names its pretrained weights (verified with the plan)."""
    m = plan.settings.model
    if not m.backbone_sha256:
        return {}
    return {"backbone": m.arch, "backbone_sha256": m.backbone_sha256,
            "backbone_file_sha256": m.backbone_file_sha256}  # fmt: skip
