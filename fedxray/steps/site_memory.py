"""What a site keeps beside its key to remember its training, and the check that its privacy
ledger is the one it has always used.

* ``SITE.ledger``: the privacy ledger (every federation, every epoch);
* ``SITE.record``: the site record, a small 0600 file listing the ids of the ledgers this key
  trained with, and how many epoch records each held when last seen;
* ``.SITE-checkpoints/``: the checkpoints of unfinished and finished rounds;
* ``SITE.*.secagg.json``: the secure-aggregation state of each federation (steps/protocol_state).

Training refuses when these show earlier training but the ledger is missing, another one, or
an older copy: starting again from zero would silently forget what the patients have spent.
A site that knowingly starts over says so (``new_ledger``) and is told what is forgotten.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from fedxray.errors import ProtocolRefusal
from fedxray.fsio import read_state_file, write_atomic
from fedxray.steps.shared import key_folder
from fedxray.training.ledger import FORMAT, SiteLedger, now, read_document

RECORD_FORMAT = "fedxray-site-record"
RESTORE_HINT = "restore it from backup, or give its path; a site that knowingly starts over"


@dataclass(frozen=True)
class SiteFiles:
    """Where a site keeps its memory: by default beside its key (``key`` is its path)."""

    key: Path
    ledger: Path
    record: Path
    checkpoints: Path
    features: Path | None = None  # cached features of a fixed front end (private, 0600)

    @classmethod
    def beside_key(cls, key: str | os.PathLike, ledger: str | os.PathLike | None = None):
        key = Path(key)
        stem = site_stem(key)
        return cls(
            key=key,
            ledger=Path(ledger) if ledger is not None else key.with_name(f"{stem}.ledger"),
            record=key.with_name(f"{stem}.record"),
            checkpoints=key.with_name(f".{stem}-checkpoints"),
            features=key.with_name(f".{stem}-features"),
        )

    @property
    def state_dir(self) -> Path:
        return key_folder(self.key)


def site_stem(key: Path) -> str:
    """The key file's name without .key: what the site's other files are named after."""
    return key.name.removesuffix(".key")


def read_record(path: Path) -> dict:
    """The site record's ledgers (id -> what was last seen); empty when there is none."""
    doc = read_state_file(
        path,
        lambda d: (
            isinstance(d, dict)
            and d.get("format") == RECORD_FORMAT
            and isinstance(d.get("ledgers"), dict)
        ),
        f"site record {path} is unreadable",
        "restore it from backup with the ledger; it lists the ledgers this site used",
    )
    return {} if doc is None else doc["ledgers"]


def remember(files: SiteFiles, site: SiteLedger) -> None:
    """Note in the site record that this key trains with ``site`` (and how far it got)."""
    ledgers = read_record(files.record)
    seen = ledgers.setdefault(site.ledger_id, {"first_used": now()})
    seen.update(path=str(files.ledger), entries=site.entry_count(), last_used=now())
    doc = {"format": RECORD_FORMAT, "ledgers": ledgers}
    data = json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"
    write_atomic(files.record, data, force=True, mode=0o600)


def check_ledger(files: SiteFiles, site_name: str, new_ledger: bool = False) -> list[str]:
    """Refuse (ProtocolRefusal) a ledger that would forget earlier spending; the warnings of a
    site that knowingly starts over (``new_ledger``)."""
    ledgers = read_record(files.record)
    doc = read_document(files.ledger)
    if doc is None:
        traces = _traces(files, site_name, ledgers)
        if not traces:
            return []
        if not new_ledger:
            old = _other_ledgers(files)
            raise ProtocolRefusal(
                f"privacy ledger {files.ledger} is missing, but this site has trained before "
                f"({'; '.join(traces)})",
                hint=f"import {old[0].name} with the privacy command"
                if old and not ledgers
                else f"{RESTORE_HINT} forgets that spending",
                option="import" if old and not ledgers else "new_ledger",
            )
        return [
            f"starting a new privacy ledger: the spending in {'; '.join(traces)} is forgotten, "
            "and the epsilon shown from now on does not include it"
        ]
    if doc.get("version") != 2 or not ledgers:
        return []  # an old ledger is refused when loaded; a first run records this one
    lid = doc["ledger_id"]
    if lid not in ledgers:
        known = ", ".join(i[:8] for i in sorted(ledgers))
        if not new_ledger:
            raise ProtocolRefusal(
                f"privacy ledger {files.ledger} (id {lid[:8]}) is not the one this site trained "
                f"with (id {known}): a copy from elsewhere, or a new file?",
                hint=f"{RESTORE_HINT} adopts this one",
                option="new_ledger",
            )
        return [f"adopting ledger {lid[:8]}: the spending in ledger {known} is not in it"]
    entries = SiteLedger(files.ledger, doc, True).entry_count()
    seen = int(ledgers[lid].get("entries", 0))
    if entries < seen:
        if not new_ledger:
            raise ProtocolRefusal(
                f"privacy ledger {files.ledger} holds {entries} epoch records, fewer than the "
                f"{seen} this site saw in it: an older copy?",
                hint="restore the newest backup; a site that knowingly accepts the loss",
                option="new_ledger",
            )
        return [f"accepting an older ledger: {seen - entries} epoch records are forgotten"]
    return []


def _traces(files: SiteFiles, site_name: str, ledgers: dict) -> list[str]:
    """What shows that this site has trained before (without the ledger)."""
    out = []
    if ledgers:
        out.append(f"the site record lists ledger {', '.join(i[:8] for i in sorted(ledgers))}")
    checkpoints = sorted(files.checkpoints.glob("*.ckpt.safetensors"))
    if checkpoints:
        out.append(f"{len(checkpoints)} training checkpoint(s) in {files.checkpoints}")
    states = sorted(files.state_dir.glob(f"{site_name}.*.secagg.json"))
    if states:
        out.append(f"secure-aggregation state of {len(states)} federation(s)")
    old = _other_ledgers(files)
    if old:
        out.append(f"older ledgers beside the key: {', '.join(p.name for p in old)}")
    return out


def _other_ledgers(files: SiteFiles) -> list[Path]:
    """The site's first-version ledgers beside its key (SITE-PLAN.ledger)."""
    out = []
    for p in sorted(files.state_dir.glob(f"{site_stem(files.key)}-*.ledger")):
        if p.resolve() == files.ledger.resolve():
            continue
        try:
            if json.loads(p.read_bytes()).get("format") == FORMAT:
                out.append(p)
        except (OSError, ValueError, AttributeError):
            continue
    return out
