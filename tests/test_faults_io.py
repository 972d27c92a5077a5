"""Faults of the machine, not of the input: a full disk, an exhausted quota, a closed pipe.

Issue 13, "internal error ... please report" for foreseeable conditions:
- a full disk, in train-local and aggregate, and wherever else an output is written:
  test_disk_full_is_one_line_and_leaves_nothing (keygen, init, prep, train-local's update
  and its ledger, mask, aggregate, unmask, predict -o), test_quota_exceeded_says_so,
  test_disk_full_mid_simulation_removes_the_run_folder,
  test_disk_full_in_a_library_write_is_still_one_line;
- standard output closed early (`fedxray predict ... | head -1`):
  test_broken_pipe_stops_quietly_with_141.
Each: the exit code, one line and a hint, no traceback, nothing on stdout (one JSON error
document with --json), and no output or temporary file left behind.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys

import pytest

from fedxray.errors import EXIT_BROKEN_PIPE, EXIT_ERROR
from tests.cli_helpers import assert_clean_error, run_cli
from tests.conftest import REPO
from tests.faultfed import assert_fault, disk_full

pytestmark = pytest.mark.skipif(
    not os.path.isdir("/proc/self/fd"), reason="the fault injection reads /proc/self/fd"
)


def _commands(fed, out):
    """(name part of the file that fails, command line) per output; the outputs go to
    ``out``, the site's ledger (its memory, which a failed write must not lose) beside it."""
    a = ("--plan", fed.plan, "--key", fed.key("hosp-a"))
    state = out.parent / "state"
    # train-local with a copy of the key in a folder of its own: the site's record of earlier
    # training lives beside the key, and a --no-dp round must not touch the shared site's.
    t = ("--plan", fed.plan, "--key", _own_key(fed.key("hosp-a"), out.parent / "site"))
    coord = ("--plan", fed.plan, "--key", fed.coord / "coordinator.key")
    return {
        "keygen": (".pub", ("keygen", "hosp-x", "-o", out)),
        "init": (".plan", ("init", "--name", "x", "-o", out / "coord", "--min-sites", "2",
                           "--image-size", "16", "--model", "tinycnn", fed.root / "hosp-a.pub",
                           fed.root / "hosp-b.pub")),
        "prep": (".shard", ("prep", REPO / "sample_data" / "hospital-c", "-o", out / "c.shard",
                            "--workers", "1", *a)),
        "train-local": (".update", ("train-local", fed.model(2), "--data", fed.shard("hosp-a"),
                                    "--no-dp", "-o", out / "a.update",
                                    "--ledger", state / "a.ledger", *t)),
        "train-local ledger": (".ledger", ("train-local", fed.model(2), "--data",
                                           fed.shard("hosp-a"), "--no-dp",
                                           "-o", out / "a.update",
                                           "--ledger", out / "a.ledger", *t)),
        "mask": (".masked", ("mask", fed.update("hosp-a"), "-o", out / "a.masked", *a)),
        "aggregate": (".sum", ("aggregate", *(fed.masked(s) for s in ("hosp-a", "hosp-b")),
                               "-o", out / "r1.sum", *coord)),
        "unmask": (".model", ("unmask", fed.sum, "--model", fed.model(1), "-o",
                              out / "r2.model", *coord)),
        "predict": (".csv", ("predict", fed.model(2), REPO / "sample_data" / "test" /
                             "img0001.dcm", "--plan", fed.plan, "-o", out / "p.csv")),
    }  # fmt: skip


def _own_key(key, folder):
    folder.mkdir(exist_ok=True)
    shutil.copy2(key, folder / key.name)
    return folder / key.name


COMMANDS = ["keygen", "init", "prep", "train-local", "train-local ledger", "mask", "aggregate",
            "unmask", "predict"]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS)
def test_disk_full_is_one_line_and_leaves_nothing(fault_fed, tmp_path, monkeypatch, command):
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "state").mkdir()
    part, args = _commands(fault_fed, out)[command]
    with disk_full(monkeypatch, part):
        r = run_cli(*args)
    assert_clean_error(r, EXIT_ERROR, "no space left on the device", "needs", "free)",
                       "free some space")  # fmt: skip
    # No output, no temporary file (train-local may leave its empty checkpoint folder).
    assert [p.name for p in out.rglob("*") if p.is_file()] == []
    # The message names the path as the command line gave it, not only its base name.
    assert str(out) in r.err
    # Once there is space again, the same command simply works.
    again = run_cli(*args, "-q")
    assert again.code == 0, again.err


def test_quota_exceeded_says_so(fault_fed, tmp_path, monkeypatch):
    part, args = _commands(fault_fed, tmp_path)["aggregate"]
    with disk_full(monkeypatch, part, errno.EDQUOT):
        r = run_cli(*args, "--json")
    assert r.code == EXIT_ERROR and "disk quota exceeded" in r.err
    doc = json.loads(r.out)  # with --json: one error document on stdout
    assert doc == {"ok": False, "error": r.err.splitlines()[0].removeprefix("fedxray: error: "),
                   "hint": "free some space, or write elsewhere, and run again",
                   "exit_code": EXIT_ERROR}  # fmt: skip
    assert not (tmp_path / "r1.sum").exists()


def test_disk_full_in_a_library_write_is_still_one_line(fault_fed, tmp_path, monkeypatch):
    """An OSError for a full disk outside fedxray.fsio (a library writing its own file) is
    a condition to fix, not a bug to report."""
    from fedxray.steps import inspection

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "x.bin"))

    monkeypatch.setattr(inspection, "describe", full)
    r = run_cli("inspect", fault_fed.plan)
    assert_fault(r, EXIT_ERROR, f"cannot write {tmp_path / 'x.bin'}: no space left")


def test_disk_full_mid_simulation_removes_the_run_folder(tmp_path, monkeypatch):
    from tests.images import phantom_png

    data = tmp_path / "images"
    for i in range(24):
        folder = ("NORMAL", "PNEUMONIA")[i % 2]
        kind = "" if folder == "NORMAL" else ("bacteria_" if i % 4 == 1 else "virus_")
        phantom_png(data / folder / f"person{i}_{kind}{i}.png", i)
    run = tmp_path / "run"
    with disk_full(monkeypatch, ".sum"):  # after both sites trained and masked round 1
        r = run_cli("simulate", "-o", run, "--data", data, "--sites", "2", "--min-sites", "2",
                    "--rounds", "1", "--local-epochs", "1", "--image-size", "16",
                    "--model", "tinycnn", "--workers", "1", "--bootstrap", "0", "-q")  # fmt: skip
    assert_fault(r, EXIT_ERROR, "no space left on the device", "round-0001.sum")
    assert not run.exists()  # the rerun is not blocked by a half-made run folder


def test_broken_pipe_stops_quietly_with_141(fault_fed):
    """`fedxray predict ... | head -1`: like cat or git, stop without a word; the shell
    reports 141 (killed by SIGPIPE)."""
    line = (
        f"{sys.executable} -m fedxray predict {fault_fed.model(2)} {REPO / 'sample_data' / 'test'}"
        f" --plan {fault_fed.plan} --batch-size 1 -q 2>err.txt | head -1;"
        ' echo "status=${PIPESTATUS[0]}"; cat err.txt'
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(["bash", "-c", line], capture_output=True, text=True, env=env,
                       cwd=fault_fed.root, timeout=300)  # fmt: skip
    lines = r.stdout.splitlines()
    assert lines[0].startswith("path,predicted,")
    assert lines[1] == f"status={EXIT_BROKEN_PIPE}", r.stdout
    assert lines[2:] == [], r.stdout  # nothing on stderr: no traceback, no "Exception ignored"
