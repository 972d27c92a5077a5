"""What a party's folder holds, for `fedxray status`: its plan and key, and the round files
there or in its inboxes (where files from the other parties arrive: the USB stick).

Round files are looked up by the names `fedxray.filenames` gives them, never by parsing the
names found; every file from elsewhere is verified against the plan before status relies on
it, and one that fails is reported, not used.
"""

from __future__ import annotations

import hashlib
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from fedxray.artifact import Artifact
from fedxray.errors import FedxrayError
from fedxray.filenames import round_file
from fedxray.fsio import read_input
from fedxray.keys import PrivateIdentity, load_private_key
from fedxray.plan import Plan, load_plan
from fedxray.verification import load_artifact

INBOX = "inbox"  # a party's inbox inside its folder (as `fedxray simulate` lays them out)


def shown_path(path: Path) -> str:
    """A path as a command line should name it, run from the current folder: relative below
    it, absolute elsewhere."""
    path = Path(os.path.abspath(path))
    rel = os.path.relpath(path)
    return str(path) if rel.startswith("..") else rel


def command(*words: str | Path, plan: Path | None = None, key: Path | None = None) -> tuple:
    """A complete ``fedxray`` command line, as argv: paths shown from the current folder,
    --plan and --key given, so that it runs as printed whatever the environment holds."""
    argv = ["fedxray"]
    for w in words:
        argv.append(shown_path(w) if isinstance(w, Path) else w)
    if plan is not None:
        argv += ["--plan", shown_path(plan)]
    if key is not None:
        argv += ["--key", shown_path(key)]
    return tuple(argv)


def command_text(argv: tuple | list) -> str:
    return shlex.join(argv)


@dataclass(frozen=True)
class Resident:
    """Who lives in a folder: its plan (None before the coordinator sent one) and key."""

    plan: Plan | None
    plan_file: Path | None  # where the plan is, or will be once copied into the folder
    identity: PrivateIdentity | None
    key_file: Path | None

    @property
    def role(self) -> str | None:
        if self.identity is None:
            return None
        if self.plan is not None and self.identity.public == self.plan.coordinator:
            return "coordinator"
        return "site"


class Files:
    """A party's folder and its inboxes: where each round file is, whether it is valid."""

    def __init__(self, folder: Path, inboxes: list[Path]):
        self.folder = folder
        own = folder / INBOX
        self.inboxes = [p for p in [*inboxes, own] if p.is_dir()]
        self.problems: list[str] = []

    def here(self, name: str) -> Path | None:
        p = self.folder / name
        return p if p.is_file() else None

    def arrived(self, name: str) -> Path | None:
        """The file in the first inbox that holds it."""
        for box in self.inboxes:
            if (box / name).is_file():
                return box / name
        return None

    def find(self, name: str) -> Path | None:
        return self.here(name) or self.arrived(name)

    def on_stick(self, path: Path) -> bool:
        """The same file (same bytes) already lies in an inbox: it has been handed over."""
        other = self.arrived(path.name)
        if other is None or other.resolve() == path.resolve():
            return other is not None
        try:
            return other.stat().st_size == path.stat().st_size and _sha(other) == _sha(path)
        except OSError:
            return False

    def verified(self, path: Path, plan: Plan, kind: str, round_number: int, sender,
                 parent: str | None = None) -> Artifact | None:  # fmt: skip
        """The file's artifact when it passes every check; None (and a problem) otherwise."""
        try:
            return load_artifact(
                read_input(path, kind), plan=plan, kind=kind, round=round_number, sender=sender,
                parent=parent, what=shown_path(path),
            )  # fmt: skip
        except FedxrayError as e:
            self.problems.append(f"{e.message} (not used)")
            return None

    def round_file(self, plan: Plan, kind: str, r: int, sender: str, party: str | None = None,
                   parent: str | None = None) -> tuple[Path | None, Artifact | None]:  # fmt: skip
        """Round ``r``'s file of ``kind`` (``party``'s own when named), here or arrived, and
        its verified artifact."""
        path = self.find(round_file(kind, r, party))
        if path is None:
            return None, None
        return path, self.verified(path, plan, kind, r, sender, parent)

    def rounds_with(self, kind: str, last: int, party: str | None = None) -> list[int]:
        """The rounds 1..last whose file of ``kind`` is here or arrived."""
        return [r for r in range(1, last + 1) if self.find(round_file(kind, r, party))]


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def locate(folder: Path, files: Files, plan_path: Path | None, key_path: Path | None) -> Resident:
    """The plan and key of the party whose folder this is.

    A plan or key given (--plan, --key) is used as given; otherwise the folder's own ``*.plan``
    (or one that arrived, still to be copied in) and the ``*.key`` that belongs to that plan.
    """
    plan, plan_file = None, plan_path
    if plan_path is None:
        plans = sorted(folder.glob("*.plan")) or sorted(
            p for box in files.inboxes for p in box.glob("*.plan")
        )
        if len({p.name for p in plans}) > 1:
            raise FedxrayError(
                f"several plans in {shown_path(folder)} ({', '.join(p.name for p in plans)})",
                hint="name the one to show",
                option="plan",
            )
        plan_path = plans[0] if plans else None
        plan_file = folder / plans[0].name if plans else None
    if plan_path is not None:
        plan = load_plan(plan_path)
    keys = [key_path] if key_path is not None else sorted(folder.glob("*.key"))
    identities = [(k, load_private_key(k)) for k in keys]
    if plan is not None:
        mine = [(k, i) for k, i in identities if _member(plan, i)]
        if key_path is not None and not mine:
            raise FedxrayError(
                f"key {identities[0][1].name!r} is not a member of federation {plan.name}",
                option="key",
            )
        identities = mine
    if len(identities) > 1:
        names = ", ".join(k.name for k, _ in identities)
        raise FedxrayError(f"several keys in {shown_path(folder)} ({names})", option="key",
                           hint="name the one to show")  # fmt: skip
    key_file, ident = identities[0] if identities else (None, None)
    return Resident(plan, plan_file, ident, key_file)


def _member(plan: Plan, ident: PrivateIdentity) -> bool:
    return ident.public == plan.coordinator or plan.site(ident.name) == ident.public
