"""A small real federation for the fault tests, and faults to inject into it.

Two sites (the plan allows two, and non-private baselines, so that a round trains in
seconds), one finished round: every kind of file exists, and round 2's model has learnt
enough to be confident on the sample phantoms.
"""

from __future__ import annotations

import contextlib
import errno
import os
from dataclasses import dataclass
from pathlib import Path

from tests.cli_helpers import Result, assert_clean_error, run_cli
from tests.conftest import REPO

SITES = ("hosp-a", "hosp-b")
DATA = {"hosp-a": "hospital-a", "hosp-b": "hospital-b"}


@dataclass(frozen=True)
class Federation:
    root: Path
    coord: Path

    @property
    def plan(self) -> Path:
        return self.coord / "demo.plan"

    def key(self, site: str) -> Path:
        return self.root / f"{site}.key"

    def shard(self, site: str) -> Path:
        return self.root / f"{site}.shard"

    def model(self, r: int) -> Path:
        return self.coord / f"round-{r:04d}.model"

    def update(self, site: str) -> Path:
        return self.root / f"{site}-round-0001.update"

    def masked(self, site: str) -> Path:
        return self.root / f"{site}-round-0001.masked"

    @property
    def sum(self) -> Path:
        return self.coord / "round-0001.sum"

    def cli(self, *args, site: str | None = None, coordinator: bool = False) -> Result:
        """Run a command as a site (``site``) or as the coordinator, with -q."""
        key = self.coord / "coordinator.key" if coordinator else self.key(site) if site else None
        party = ("--plan", self.plan, "--key", key) if key else ()
        return run_cli(*args, *party, "-q")


def build(root: Path) -> Federation:
    fed = Federation(root, root / "coord")
    for s in SITES:
        _ok(run_cli("keygen", s, "-o", root, "-q"))
    _ok(run_cli(
        "init", "--name", "demo", "-o", fed.coord, "--model", "tinycnn", "--image-size", "32",
        "--rounds", "3", "--local-epochs", "5", "--min-sites", "2", "--allow-no-dp", "-q",
        *(root / f"{s}.pub" for s in SITES),
    ))  # fmt: skip
    for s in SITES:
        _ok(fed.cli("prep", REPO / "sample_data" / DATA[s], "-o", fed.shard(s), "--workers", "1",
                    site=s))  # fmt: skip
        _ok(fed.cli("train-local", fed.model(1), "--data", fed.shard(s), "--no-dp", "--seed", "1",
                    "-o", fed.update(s), site=s))  # fmt: skip
        _ok(fed.cli("mask", fed.update(s), "-o", fed.masked(s), site=s))
    _ok(fed.cli("aggregate", *(fed.masked(s) for s in SITES), "-o", fed.sum, coordinator=True))
    _ok(fed.cli("unmask", fed.sum, "--model", fed.model(1), "-o", fed.model(2),
                coordinator=True))  # fmt: skip
    return fed


def _ok(r: Result) -> None:
    assert r.code == 0, r.err


@contextlib.contextmanager
def disk_full(monkeypatch, name_part: str, code: int = errno.ENOSPC):
    """Writes of files whose name contains ``name_part`` fail as on a full disk (``code``
    ENOSPC) or an exhausted quota (EDQUOT): at the fsync that makes them durable, where a
    full disk (or a network file system) reports it at the latest."""
    real = os.fsync

    def fsync(fd: int) -> None:
        try:
            name = Path(os.readlink(f"/proc/self/fd/{fd}")).name
        except OSError:
            name = ""
        if name_part in name:
            raise OSError(code, os.strerror(code))
        real(fd)

    with monkeypatch.context() as m:
        m.setattr(os, "fsync", fsync)
        yield


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")}


def assert_fault(r: Result, code: int, *words: str, left: set[Path] | None = None,
                 folder: Path | None = None) -> None:  # fmt: skip
    """A clean failure (see assert_clean_error) that left nothing behind: ``folder`` holds
    exactly ``left``, the files it held before (no output, no temporary file)."""
    assert_clean_error(r, code, *words)
    if folder is not None:
        assert files_under(folder) == left, files_under(folder) ^ (left or set())
