"""Bringing other ledger files into a site's ledger: the per-federation ledgers of fedxray's
first version (SITE-PLAN.ledger), or another site ledger found again.

Their epochs keep counting in full: imported records are finished epochs with no seed (they
are never replayed), so a site that upgrades never starts again from zero.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from fedxray.errors import FedxrayError
from fedxray.training.ledger import DONE, OLD_VERSION, SiteLedger, now, read_document


def import_ledger(site: SiteLedger, other: str | os.PathLike) -> list[str]:
    """Add every federation of the ledger file ``other`` to ``site`` (callers save); the
    federation ids imported. A federation already in ``site`` is refused: counted twice."""
    other = Path(other)
    if other.resolve() == site.path.resolve():
        raise FedxrayError(f"cannot import the ledger {other} into itself")
    doc = read_document(other)
    if doc is None:
        raise FedxrayError(f"privacy ledger to import not found: {other}")
    if doc.get("ledger_id") is not None and doc["ledger_id"] == site.ledger_id:
        raise FedxrayError(f"{other} is a copy of this very ledger (same id): nothing to import")
    federations = doc["federations"]
    mine = site.doc["federations"]
    both = sorted(fid for fid in federations if mine.get(fid, {}).get("history"))
    if both:
        name = mine[both[0]].get("name") or both[0][:12]
        raise FedxrayError(
            f"federation {name} is in both {site.path.name} and {other.name}: importing it "
            "would count its spending twice",
            hint="keep the ledger that holds all of its rounds",
        )
    for fid, entry in federations.items():
        mine[fid] = _upgraded(entry) if doc["version"] == OLD_VERSION else entry
    site.doc.setdefault("imported", []).append(
        {
            "file": str(other),
            "version": doc["version"],
            "ledger_id": doc.get("ledger_id"),
            "federations": sorted(federations),
            "time": now(),
        }
    )
    return sorted(federations)


def _upgraded(entry: dict) -> dict:
    """A first-version federation entry in today's shape: every epoch finished, no seed."""
    out = {
        "name": entry.get("name"),
        "calibration": entry.get("calibration"),
        "rounds": entry.get("rounds", {}),
    }
    out["history"] = [
        {**h, "id": secrets.token_hex(8), "status": DONE, "seed": None, "inputs": {}}
        for h in entry.get("history", [])
    ]
    return out
