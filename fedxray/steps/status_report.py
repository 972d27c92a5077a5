"""What `fedxray status` reports: the typed result and its parts (a script reads the same
as JSON: ``Status.to_dict()``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from fedxray.steps.party_files import command_text

STAGES = {
    "new": "no key in the folder: a site starts with keygen, the coordinator with init",
    "plan": "a site with its identity, waiting for the coordinator's plan",
    "prep": "a site without its shard: prepare the images",
    "train": "a site trains this round (again, after an interruption or a lost update)",
    "mask": "a site masks its update",
    "reveal": "a site answers the coordinator's closure",
    "aggregate": "the coordinator sums the masked updates",
    "unmask": "the coordinator unmasks the round and makes the next model",
    "abandon": "the coordinator re-issues an abandoned round's model",
    "wait": "waiting for files from the other parties (see waiting_for)",
    "finished": "the plan's last round is done: the final model is there to evaluate",
}
PLACEHOLDERS = {
    "IMAGE_FOLDER": "the folder of the site's exported images (DICOM, PNG or JPEG)",
    "TEST_IMAGE_FOLDER": "labelled images of patients who are not in the training shard",
    "SITE_NAME": "the site's name, e.g. hospital-a",
    "FEDERATION_NAME": "the federation's name: it names the .plan file",
}


@dataclass(frozen=True)
class NextCommand:
    argv: tuple[str, ...]
    why: str

    @property
    def text(self) -> str:
        return command_text(self.argv)

    def to_dict(self) -> dict:
        holes = [p for p in PLACEHOLDERS if p in self.argv]
        return {"command": self.text, "argv": list(self.argv), "why": self.why,
                "placeholders": {p: PLACEHOLDERS[p] for p in holes}}  # fmt: skip


@dataclass(frozen=True)
class Transfer:
    """A file to carry (put on the USB stick) for other parties."""

    file: Path
    to: tuple[str, ...]
    on_stick: bool  # the same file already lies in an inbox: handed over

    def to_dict(self) -> dict:
        return {"file": str(self.file), "to": list(self.to), "on_stick": self.on_stick}


@dataclass(frozen=True)
class Expected:
    """A file this party waits for, and who sends it."""

    file: str
    sender: str


@dataclass(frozen=True)
class StateFile:
    """A file the party keeps (backs up, never sends), and whether it exists yet."""

    what: str
    path: Path
    present: bool

    @property
    def lock(self) -> bool:
        """A lock file: it holds nothing, losing it costs nothing."""
        return self.path.name.endswith(".lock")

    def to_dict(self) -> dict:
        return {"what": self.what, "path": str(self.path), "present": self.present}


@dataclass
class Status:
    folder: Path
    role: str | None = None  # "site", "coordinator", or None (nobody's folder yet)
    party: str | None = None
    federation: str | None = None
    federation_id: str | None = None
    rounds: int | None = None  # the plan's
    round: int | None = None  # the round the party is in (rounds + 1: finished)
    stage: str = "new"
    summary: str = ""
    done: list[str] = field(default_factory=list)  # this round
    waiting_for: list[Expected] = field(default_factory=list)
    fetch: list[Path] = field(default_factory=list)  # arrived files to copy into the folder
    next: list[NextCommand] = field(default_factory=list)
    send: list[Transfer] = field(default_factory=list)
    arrived: dict[str, dict[str, str]] = field(default_factory=dict)  # kind -> site -> file
    missing: dict[str, list[str]] = field(default_factory=dict)  # kind -> sites
    privacy: dict | None = None
    state_files: list[StateFile] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        doc = dataclasses.asdict(self)
        doc.update(
            folder=str(self.folder),
            fetch=[str(p) for p in self.fetch],
            next=[c.to_dict() for c in self.next],
            send=[t.to_dict() for t in self.send],
            state_files=[s.to_dict() for s in self.state_files],
        )
        return doc
