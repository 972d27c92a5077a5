"""Each party's protocol memory: one small JSON file per party and federation.

A site records which update it masked in each round (and the seeds to redo it), and which
closure it revealed for; the coordinator records the one decision it made per round. The file
is the protocol's memory against double masking and double revealing, so a missing folder or
an unreadable file is an error, never a silent fresh start. A lock file keeps two fedxray
processes from deciding at the same time; every change is written (fsync + rename) before the
step returns.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Generic, TypeVar

from fedxray.errors import FedxrayError
from fedxray.fsio import exclusive_lock, read_state_file, write_atomic
from fedxray.secagg.records import CoordinatorRound, SiteRound

STATE_FORMAT = "fedxray-secagg-state-v1"
R = TypeVar("R", SiteRound, CoordinatorRound)


def state_path(state_dir: str | os.PathLike, party: str, federation_id: str) -> Path:
    tag = hashlib.sha256(federation_id.encode()).hexdigest()[:12]
    return Path(state_dir) / f"{party}.{tag}.secagg.json"


class LocalState(Generic[R]):
    """The rounds one party recorded, as ``record`` instances."""

    def __init__(self, path: Path, party: str, federation_id: str, rounds: dict, record: type[R]):
        self.path, self.party, self.federation_id = path, party, federation_id
        self.rounds, self.record = rounds, record

    def get(self, round_number: int) -> R | None:
        rec = self.rounds.get(str(round_number))
        return self.record.from_dict(rec) if rec is not None else None

    def round_numbers(self) -> list[int]:
        """The rounds recorded, in order."""
        return sorted(int(r) for r in self.rounds)

    def put(self, round_number: int, record: R) -> None:
        """Record a round and write the file before anything is returned."""
        self.rounds[str(round_number)] = record.to_dict()
        doc = {
            "format": STATE_FORMAT,
            "party": self.party,
            "federation": self.federation_id,
            "rounds": self.rounds,
        }
        data = (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()
        write_atomic(self.path, data, force=True, mode=0o600)


def _read(path: Path, party: str, federation_id: str) -> dict:
    doc = read_state_file(
        path,
        lambda d: (
            isinstance(d, dict)
            and d.get("format") == STATE_FORMAT
            and d.get("party") == party
            and d.get("federation") == federation_id
            and isinstance(d.get("rounds"), dict)
        ),
        f"secure-aggregation state file {path} is unreadable or belongs to someone else",
        "restore it from backup; deleting it would let this party mask or reveal twice",
    )
    return {} if doc is None else doc["rounds"]


def read_state(
    state_dir: str | os.PathLike, party: str, federation_id: str, record: type[R] = SiteRound
) -> LocalState[R] | None:
    """The state of ``party`` as it is on disk, to show it (``fedxray status``): no lock is
    taken or created, nothing can be written through it. None when the party has none."""
    path = state_path(state_dir, party, federation_id)
    if not path.exists():
        return None
    return LocalState(path, party, federation_id, _read(path, party, federation_id), record)


def lock_path(state_file: Path) -> Path:
    """The lock file beside a state file (it stays once made; it holds nothing)."""
    return state_file.with_name(state_file.name + ".lock")


@contextlib.contextmanager
def open_state(
    state_dir: str | os.PathLike, party: str, federation_id: str, record: type[R] = SiteRound
) -> Iterator[LocalState[R]]:
    """Lock and load the state of ``party``; the lock is held until the block ends."""
    folder = Path(state_dir)
    if not folder.is_dir():
        raise FedxrayError(f"state folder does not exist: {folder}")
    path = state_path(folder, party, federation_id)
    with exclusive_lock(
        lock_path(path),
        f"another fedxray process is using {path.name}",
        "wait for it to finish, then run the command again",
    ):
        yield LocalState(path, party, federation_id, _read(path, party, federation_id), record)


@contextlib.contextmanager
def coordinator_state(
    state_dir: str | os.PathLike | None, coordinator: str, federation_id: str
) -> Iterator[LocalState[CoordinatorRound] | None]:
    """The coordinator's memory, or None without a folder (library use in tests only)."""
    if state_dir is None:
        yield None
        return
    with open_state(state_dir, coordinator, federation_id, CoordinatorRound) as st:
        yield st
