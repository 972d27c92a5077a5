"""The courier: the only way a file moves between parties in a simulation.

It carries only the kinds of file that travel in a real federation and logs every trip, so a
run folder can be audited: no shard, key, ledger or plaintext update ever leaves its owner.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from fedxray.errors import FedxrayError
from fedxray.fsio import make_folder, output_error

TRAVELLING_SUFFIXES = {".pub", ".plan", ".model", ".masked", ".closure", ".reveal"}
INBOX = "inbox"


@dataclass
class Courier:
    log_path: Path
    trips: list[dict] = field(default_factory=list)

    def carry(self, src: Path, to_party: Path, round_number: int = 0) -> Path:
        """Copy ``src`` into the inbox of the party whose folder is ``to_party``."""
        if src.suffix not in TRAVELLING_SUFFIXES:
            raise FedxrayError(f"the courier refuses to carry {src.name}: it never leaves its site")
        inbox = to_party / INBOX
        make_folder(inbox)
        dst = inbox / src.name
        try:
            shutil.copyfile(src, dst)
        except OSError as e:
            raise output_error(dst, e, src.stat().st_size) from None
        trip = {
            "round": round_number,
            "file": src.name,
            "from": src.parent.name,
            "to": to_party.name,
            "bytes": dst.stat().st_size,
        }
        self.trips.append(trip)
        with self.log_path.open("a") as f:
            f.write(json.dumps(trip) + "\n")
        return dst

    def bytes_carried(self, round_number: int) -> int:
        return sum(t["bytes"] for t in self.trips if t["round"] == round_number)
