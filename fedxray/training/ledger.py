"""The site's privacy ledger: every DP-SGD epoch ever run, per federation, in one JSON file.

The ledger is the site's memory of what it has spent. It is written (atomically) BEFORE an
epoch's model can be used, so a crash can only over-count, never under-count. A missing file
means nothing was spent yet; an unreadable or corrupt one stops training (starting afresh
would silently forget past spending).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from fedxray.errors import FedxrayError
from fedxray.fsio import exclusive_lock, write_atomic
from fedxray.training import accounting

FORMAT = "fedxray-privacy-ledger"
VERSION = 1


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


class Ledger:
    """One federation's entry in a site ledger file."""

    def __init__(self, path: str | os.PathLike, federation_id: str, document: dict):
        self.path = Path(path)
        self.federation_id = federation_id
        self._doc = document
        self._entry = document["federations"].setdefault(
            federation_id, {"calibration": None, "history": [], "rounds": {}}
        )

    # -- loading and saving ------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike, federation_id: str) -> Ledger:
        if not federation_id:
            raise FedxrayError("federation id is empty")
        p = Path(path)
        doc = _read_document(p)
        if doc is None:
            doc = {"format": FORMAT, "version": VERSION, "federations": {}}
        return cls(p, federation_id, doc)

    def save(self) -> None:
        data = json.dumps(self._doc, indent=1, sort_keys=True, allow_nan=False).encode() + b"\n"
        write_atomic(self.path, data, force=True, mode=0o600)

    def to_dict(self) -> dict:
        """This federation's entry (a copy), as stored."""
        return json.loads(json.dumps(self._entry))

    # -- state ---------------------------------------------------------------------------
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

    def history(self) -> accounting.History:
        """(noise_multiplier, sample_rate, steps) of every DP epoch, oldest first."""
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
        return sum(1 for h in self._entry["history"] if h["round"] == round_number)

    # -- changes (callers save) ------------------------------------------------------------
    def calibrate(self, **calibration) -> None:
        """Store the federation's noise multiplier, delta, unit... once; never replaced."""
        if self.calibration is not None:
            raise FedxrayError(f"federation {self.federation_id} is already calibrated")
        for key in ("noise_multiplier", "delta", "unit", "sample_rate", "total_steps"):
            if key not in calibration:
                raise FedxrayError(f"calibration lacks {key}")
        self._entry["calibration"] = dict(calibration, accountant="rdp", time=_now())

    def record_epoch(
        self,
        *,
        round_number: int,
        epoch: int,
        steps: int,
        noise_multiplier: float | None,
        sample_rate: float,
    ) -> float:
        """Add one epoch (``noise_multiplier`` None: trained without DP); return epsilon after."""
        dp = noise_multiplier is not None
        if dp and self.calibration is None:
            raise FedxrayError("cannot record a DP epoch before calibration")
        self._entry["history"].append(
            {
                "round": int(round_number),
                "epoch": int(epoch),
                "steps": int(steps),
                "dp": dp,
                "noise_multiplier": float(noise_multiplier) if dp else None,
                "sample_rate": float(sample_rate),
                "time": _now(),
            }
        )
        eps = self.epsilon()
        stored = eps if math.isfinite(eps) else None  # JSON has no infinity
        self._entry["history"][-1]["epsilon_after"] = stored
        rec = self._entry["rounds"].setdefault(str(int(round_number)), {"finished": False})
        rec["epochs"] = self.epochs_recorded(round_number)
        rec["epsilon_after"] = stored
        return eps

    def round_finished(self, round_number: int) -> bool:
        return bool(self._entry["rounds"].get(str(int(round_number)), {}).get("finished"))

    def finish_round(self, round_number: int) -> None:
        rec = self._entry["rounds"].get(str(int(round_number)))
        if rec is None:
            raise FedxrayError(f"round {round_number} has no recorded epochs")
        rec["finished"] = True

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
            last = max(i for i, h in enumerate(history) if h["round"] == r)
            stored = history[last].get("epsilon_after")
            total = math.inf if stored is None else float(stored)
            rows.append(
                RoundRow(
                    round=r,
                    epochs=len(mine),
                    steps=sum(h["steps"] for h in mine),
                    dp=all(h["dp"] for h in mine),
                    epsilon_spent=max(0.0, total - last_total),
                    epsilon_total=total,
                    finished=bool(self._entry["rounds"].get(str(r), {}).get("finished")),
                )
            )
            last_total = max(last_total, total)
        return rows


def _read_document(p: Path) -> dict | None:
    """The ledger file's JSON document; None when the file does not exist (nothing spent)."""
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        return None
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
    if doc.get("version") != VERSION:
        raise FedxrayError(f"privacy ledger {p} has unsupported version {doc.get('version')}")
    return doc


def federation_ids(path: str | os.PathLike) -> list[str]:
    """The federations a ledger file records spending for (the file must exist)."""
    doc = _read_document(Path(path))
    if doc is None:
        raise FedxrayError(f"privacy ledger not found: {path}")
    return sorted(doc["federations"])


def privacy_rows(path: str | os.PathLike, federation_id: str) -> list[RoundRow]:
    """Rows for the ``privacy`` command (empty when nothing was spent)."""
    return Ledger.load(path, federation_id).rounds()


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


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
