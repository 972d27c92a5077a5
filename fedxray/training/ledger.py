"""The site's privacy ledger: one JSON file per site key, every epoch of every federation.

The budget belongs to the patients, not to one federation: the file holds all federations
the site trained in, their epsilon composes into one site total (RDP curves add), and the
site's own cap on that total lives here too. Each epoch is written (atomically) BEFORE it
runs, with the seed of all its randomness, and marked done once its checkpoint is safe; a
rerun replays an unfinished epoch with the same seed instead of counting it again
(fedxray.training.replay). A missing file is a new ledger (the steps refuse one when the
site's records show earlier training); an unreadable or corrupt one stops training.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from fedxray.errors import FedxrayError
from fedxray.fsio import exclusive_lock, write_atomic
from fedxray.settings_options import option_default
from fedxray.training import accounting

FORMAT = "fedxray-privacy-ledger"
VERSION = 2
OLD_VERSION = 1  # one file per site and federation, no ids or seeds: imported, never trained on
STARTED, DONE, ABANDONED = "started", "done", "abandoned"


@dataclass(frozen=True)
class RoundRow:
    """One line of the per-round spending table (``fedxray privacy``)."""

    round: int
    epochs: int
    steps: int
    dp: bool
    epsilon_spent: float  # increase of the running epsilon during this round
    epsilon_total: float  # running epsilon after this round
    finished: bool


@dataclass(frozen=True)
class SiteBudget:
    """The site's cap on its total epsilon over all federations, at the site's delta."""

    epsilon: float
    delta: float
    source: str  # "site" (set by the site) or "plan NAME" (adopted from the first plan)


class SiteLedger:
    """A site's whole ledger file."""

    def __init__(self, path: str | os.PathLike, document: dict, exists: bool):
        self.path = Path(path)
        self.doc = document
        self.exists = exists  # the file was there when loaded (or has been saved since)

    @classmethod
    def load(cls, path: str | os.PathLike) -> SiteLedger:
        """The ledger at ``path``; a new, empty one (unsaved, with a fresh id) when absent."""
        doc = read_document(Path(path))
        if doc is None:
            return cls(path, new_document(), exists=False)
        if doc.get("version") == OLD_VERSION:
            raise FedxrayError(
                f"{path} is an old per-federation privacy ledger",
                hint="import it into the site's ledger (SITE.ledger) with the privacy command",
                option="import",
            )
        return cls(path, doc, exists=True)

    def save(self) -> None:
        data = json.dumps(self.doc, indent=1, sort_keys=True, allow_nan=False).encode() + b"\n"
        write_atomic(self.path, data, force=True, mode=0o600)
        self.exists = True

    @property
    def ledger_id(self) -> str:
        return self.doc["ledger_id"]

    def federation(self, federation_id: str) -> Ledger:
        return Ledger(self, federation_id)

    def federation_ids(self) -> list[str]:
        return sorted(self.doc["federations"])

    def entry_count(self) -> int:
        """Epoch records in the file: never decreases (the site record's watermark)."""
        return sum(len(f["history"]) for f in self.doc["federations"].values())

    # -- the site's budget ------------------------------------------------------------------
    @property
    def budget(self) -> SiteBudget | None:
        b = self.doc.get("budget")
        if b is None:
            return None
        return SiteBudget(float(b["epsilon"]), float(b["delta"]), b["source"])

    def set_budget(self, epsilon: float, delta: float | None = None, source: str = "site") -> None:
        """Set the site's cap (the site's decision; every change is kept in the file)."""
        if not (math.isfinite(epsilon) and epsilon > 0):
            raise FedxrayError(f"the site's budget must be a positive epsilon, got {epsilon}")
        if delta is None:  # the site's delta so far, else the plans' default
            delta = self.site_delta if self.site_delta is not None else option_default("delta")
        if not 0 < delta < 1:
            raise FedxrayError(
                f"the site's budget needs a delta in (0, 1), got {delta:g}", option="budget_delta"
            )
        b = {"epsilon": float(epsilon), "delta": delta, "source": source, "time": now()}
        self.doc["budget"] = b
        self.doc.setdefault("budget_changes", []).append(b)

    @property
    def site_delta(self) -> float | None:
        """The delta of the site's total: its budget's, else the smallest any plan used."""
        if self.budget is not None:
            return self.budget.delta
        deltas = [f.delta for f in map(self.federation, self.doc["federations"]) if f.delta]
        return min(deltas) if deltas else None

    # -- the total over every federation ------------------------------------------------------
    def non_private(self) -> list[str]:
        """Federations trained without DP at this site (the total is then infinite)."""
        return [fid for fid in self.federation_ids() if self.federation(fid).non_private]

    def history(self, exclude: str | None = None) -> accounting.History:
        """Every DP epoch of every federation (but ``exclude``): the site's composition."""
        out: accounting.History = []
        for fid in self.federation_ids():
            if fid != exclude:
                out += self.federation(fid).history()
        return out

    def reserved(self, exclude: str | None = None) -> accounting.History:
        """The steps other federations were calibrated for and have not trained yet."""
        out: accounting.History = []
        for fid in self.federation_ids():
            fed = self.federation(fid)
            if fid == exclude or fed.calibration is None or fed.non_private:
                continue
            c = fed.calibration
            live = sum(h["steps"] for h in fed.entries() if h["status"] != ABANDONED)
            left = int(c.get("total_steps", 0)) - live
            if left > 0:
                out.append((float(c["noise_multiplier"]), float(c["sample_rate"]), left))
        return out

    def total_epsilon(self, planned: accounting.History = (), delta: float | None = None) -> float:
        """The site's epsilon over all federations (plus ``planned``), at the site's delta."""
        if self.non_private():
            return math.inf
        d = self.site_delta if delta is None else delta
        history = [*self.history(), *planned]
        if d is None:
            return 0.0 if not history else math.inf
        return accounting.epsilon(history, d)

    def cache_total(self) -> float:
        """Compute the site total and keep it in the file, so showing it needs no accountant."""
        total = self.total_epsilon()
        self.doc["total"] = {
            "epsilon": total if math.isfinite(total) else None,
            "delta": self.site_delta,
            "entries": self.entry_count(),
        }
        return total

    def cached_total(self) -> float | None:
        """The stored site total when it is current (else None: compute it)."""
        t = self.doc.get("total")
        if not t or t.get("entries") != self.entry_count() or t.get("delta") != self.site_delta:
            return None
        return math.inf if t["epsilon"] is None else float(t["epsilon"])


class Ledger:
    """One federation's entry in a site ledger file (with the file as ``site``)."""

    def __init__(self, site: SiteLedger, federation_id: str):
        if not federation_id:
            raise FedxrayError("federation id is empty")
        self.site = site
        self.path = site.path
        self.federation_id = federation_id
        self._entry = site.doc["federations"].setdefault(
            federation_id, {"name": None, "calibration": None, "history": [], "rounds": {}}
        )

    @classmethod
    def load(cls, path: str | os.PathLike, federation_id: str) -> Ledger:
        return SiteLedger.load(path).federation(federation_id)

    def save(self) -> None:
        self.site.save()

    def to_dict(self) -> dict:
        """This federation's entry (a copy), as stored."""
        return json.loads(json.dumps(self._entry))

    # -- state ---------------------------------------------------------------------------
    @property
    def name(self) -> str | None:
        return self._entry.get("name")

    @name.setter
    def name(self, value: str | None) -> None:
        self._entry["name"] = value

    @property
    def calibration(self) -> dict | None:
        return self._entry["calibration"]

    @property
    def noise_multiplier(self) -> float | None:
        c = self.calibration
        return None if c is None else float(c["noise_multiplier"])

    @property
    def delta(self) -> float | None:
        c = self.calibration
        return None if c is None else float(c["delta"])

    @property
    def unit(self) -> str | None:
        c = self.calibration
        return None if c is None else c["unit"]

    @property
    def non_private(self) -> bool:
        return any(not h["dp"] for h in self._entry["history"])

    def entries(self, round_number: int | None = None) -> list[dict]:
        """The epoch records (live: change them through the methods below), oldest first."""
        h = self._entry["history"]
        return h if round_number is None else [e for e in h if e["round"] == round_number]

    def history(self) -> accounting.History:
        """(noise_multiplier, sample_rate, steps) of every DP epoch ever run, oldest first:
        done, unfinished and abandoned attempts alike."""
        return [
            (h["noise_multiplier"], h["sample_rate"], h["steps"])
            for h in self._entry["history"]
            if h["dp"]
        ]

    def epsilon(self, delta: float | None = None, planned: accounting.History = ()) -> float:
        """Epsilon spent so far (plus ``planned`` entries); infinite after a non-DP run."""
        if self.non_private:
            return math.inf
        d = self.delta if delta is None else delta
        if d is None:
            return 0.0 if not planned else math.inf
        return accounting.epsilon([*self.history(), *planned], d)

    def epochs_recorded(self, round_number: int) -> int:
        """Epochs counted in a round (a replayed epoch counts once)."""
        return len(self.entries(round_number))

    # -- changes (callers save) ------------------------------------------------------------
    def calibrate(self, **calibration) -> None:
        """Store the federation's noise multiplier, delta, unit... once; never replaced."""
        if self.calibration is not None:
            raise FedxrayError(f"federation {self.federation_id} is already calibrated")
        for key in ("noise_multiplier", "delta", "unit", "sample_rate", "total_steps"):
            if key not in calibration:
                raise FedxrayError(f"calibration lacks {key}")
        self._entry["calibration"] = dict(calibration, accountant="rdp", time=now())

    def record_epoch(
        self,
        *,
        round_number: int,
        epoch: int,
        steps: int,
        noise_multiplier: float | None,
        sample_rate: float,
        seed: str | None = None,
        inputs: dict | None = None,
    ) -> dict:
        """Count one epoch before it runs (``noise_multiplier`` None: without DP); the new
        record, status "started", holding the epoch's ``seed`` and the hashes of its inputs."""
        dp = noise_multiplier is not None
        if dp and self.calibration is None:
            raise FedxrayError("cannot record a DP epoch before calibration")
        entry = {
            "id": secrets.token_hex(8),
            "round": int(round_number),
            "epoch": int(epoch),
            "steps": int(steps),
            "dp": dp,
            "noise_multiplier": float(noise_multiplier) if dp else None,
            "sample_rate": float(sample_rate),
            "time": now(),
            "status": STARTED,
            "seed": seed,
            "inputs": dict(inputs or {}),
        }
        self._entry["history"].append(entry)
        eps = self.epsilon()
        entry["epsilon_after"] = eps if math.isfinite(eps) else None  # JSON has no infinity
        rec = self._entry["rounds"].setdefault(str(int(round_number)), {"finished": False})
        rec["epochs"] = self.epochs_recorded(round_number)
        rec["epsilon_after"] = entry["epsilon_after"]
        return entry

    def mark_done(self, entry: dict, result_sha256: str | None) -> None:
        """The epoch's result is safely stored (its checkpoint written)."""
        entry["status"] = DONE
        entry["result_sha256"] = result_sha256

    def abandon(self, entry: dict, reason: str) -> None:
        """An epoch that cannot be replayed: it stays counted; its seed is never used again."""
        entry["status"] = ABANDONED
        entry["reason"] = reason
        entry["seed"] = None

    def round_finished(self, round_number: int) -> bool:
        return bool(self._entry["rounds"].get(str(int(round_number)), {}).get("finished"))

    def finish_round(self, round_number: int) -> None:
        """Mark a round finished and erase its seeds: its result is in the final checkpoint,
        and a seed kept longer could only leak the noise."""
        rec = self._entry["rounds"].get(str(int(round_number)))
        if rec is None:
            raise FedxrayError(f"round {round_number} has no recorded epochs")
        rec["finished"] = True
        for e in self.entries(round_number):
            e["seed"] = None

    def rounds(self) -> list[RoundRow]:
        """Per-round spending, in the order rounds were first trained.

        Uses the running epsilon stored with each epoch (computed when it was recorded), so
        displaying the ledger needs no accountant.
        """
        history = self._entry["history"]
        order: list[int] = []
        for h in history:
            if h["round"] not in order:
                order.append(h["round"])
        rows: list[RoundRow] = []
        last_total = 0.0
        for r in order:
            mine = [h for h in history if h["round"] == r]
            stored = mine[-1].get("epsilon_after")
            total = math.inf if stored is None else float(stored)
            rows.append(
                RoundRow(
                    round=r,
                    epochs=len(mine),
                    steps=sum(h["steps"] for h in mine),
                    dp=all(h["dp"] for h in mine),
                    epsilon_spent=max(0.0, total - last_total),
                    epsilon_total=total,
                    finished=self.round_finished(r),
                )
            )
            last_total = max(last_total, total)
        return rows


def new_document() -> dict:
    return {
        "format": FORMAT,
        "version": VERSION,
        "ledger_id": secrets.token_hex(16),
        "created": now(),
        "budget": None,
        "federations": {},
    }


def read_document(p: Path) -> dict | None:
    """A ledger file's JSON document (either version); None when the file does not exist."""
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise FedxrayError(f"privacy ledger is a directory, expected a file: {p}") from None
    except OSError as e:
        raise FedxrayError(f"cannot read privacy ledger {p}: {e.strerror}") from None
    try:
        doc = json.loads(raw)
        ok = doc.get("format") == FORMAT and isinstance(doc.get("federations"), dict)
    except (ValueError, AttributeError):
        ok = False
    if not ok:
        raise FedxrayError(
            f"privacy ledger is corrupt or not a ledger: {p}",
            hint="restore it from backup; training without it would forget past spending",
        )
    if doc.get("version") not in (VERSION, OLD_VERSION):
        raise FedxrayError(f"privacy ledger {p} has unsupported version {doc.get('version')}")
    if doc.get("version") == VERSION and not isinstance(doc.get("ledger_id"), str):
        raise FedxrayError(f"privacy ledger is corrupt (no ledger id): {p}")
    return doc


def ledger_lock(path: str | os.PathLike):
    """Hold an exclusive lock on the ledger's folder: one training run per site at a time.

    The folder (not a lock file) is locked so that a refused run leaves no file behind.
    """
    folder = Path(path).parent if str(Path(path).parent) else Path(".")
    return exclusive_lock(
        folder,
        f"another training run is using the privacy ledger in {folder}",
        "wait for it to finish; runs at one site must not overlap",
    )


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
