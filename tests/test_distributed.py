"""train-local, evaluate and predict in two processes (torch.distributed, gloo on the CPU).

Each test starts real processes (``fedxray ... --nproc 2``, torch.distributed's launcher),
so the federation is tiny: 16 px images, one epoch of a few steps.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from fedxray.artifact import parse_unverified
from fedxray.errors import EXIT_BUDGET, EXIT_WORKER
from tests.cli_helpers import make_federation, run_cli
from tests.conftest import REPO

# A rank other than 0 notes every file it opens for writing, renames, creates or removes
# under WATCH (Python's audit hooks), in WATCH_LOG.rankN at exit.
SITECUSTOMIZE = textwrap.dedent(
    """
    import atexit, os, sys
    _watch, _rank = os.environ.get("WATCH"), os.environ.get("RANK", "0")
    if _watch and _rank != "0":
        _seen = []
        _writes = ("os.rename", "os.replace", "os.mkdir", "os.remove", "os.unlink",
                   "os.rmdir", "os.chmod", "os.link", "os.symlink", "os.truncate")

        def _hook(event, args):
            if event == "open":
                path, mode, flags = args
                writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                    isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
                if writing and str(path).startswith(_watch):
                    _seen.append(f"{event} {path}")
            elif event in _writes and any(str(a).startswith(_watch) for a in args):
                _seen.append(f"{event} {args}")

        sys.addaudithook(_hook)
        atexit.register(lambda: open(os.environ["WATCH_LOG"] + ".rank" + _rank, "w").write(
            "\\n".join(_seen)))
    """
)


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    d = tmp_path_factory.mktemp("dist")
    make_federation(d, "dist", "-o", d / "dist", "--model", "tinycnn", "--image-size", "16",
                    "--rounds", "2", "--local-epochs", "1", "--batch-size", "8",
                    "--epsilon", "8")  # fmt: skip
    plan, key = d / "dist" / "dist.plan", d / "hosp-a.key"
    r = run_cli("prep", REPO / "sample_data" / "hospital-c", "-o", d / "a.shard", "--plan", plan,
                "--key", key, "-q")  # fmt: skip
    assert r.code == 0, r.err
    # A second federation whose rounds last 2 epochs: time to kill a rank while it trains.
    make_federation(d, "long", "-o", d / "long", "--model", "tinycnn", "--image-size", "16",
                    "--rounds", "2", "--local-epochs", "2", "--batch-size", "8",
                    "--epsilon", "8")  # fmt: skip
    # A federation whose sites keep an average of their iterates (the optimiser's state).
    make_federation(d, "ema", "-o", d / "ema", "--model", "tinycnn", "--image-size", "16",
                    "--rounds", "2", "--local-epochs", "2", "--batch-size", "8", "--epsilon", "8",
                    "--ema", "0.5")  # fmt: skip
    hooks = d / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return d, plan, key


def _site(fed, name: str) -> Path:
    """A folder of its own with the site's key: its ledger and checkpoints start empty."""
    d, _, key = fed
    folder = d / name
    folder.mkdir()
    shutil.copy2(key, folder / key.name)
    (d / f"{name}-tmp").mkdir()  # its TMPDIR (_env)
    return folder


def _train_args(fed, site: Path, *extra, federation: str = "dist") -> list[str]:
    d, _, key = fed
    folder = d / federation
    return ["train-local", str(folder / "round-0001.model"), "--data", str(d / "a.shard"),
            "--plan", str(folder / f"{federation}.plan"), "--key", str(site / key.name),
            "-o", str(site / "a.update"),
            "--json", "--seed", "7", *extra]  # fmt: skip


def _env(fed, site: Path) -> dict:
    d = fed[0]
    env = dict(os.environ, OMP_NUM_THREADS="1", NO_COLOR="1", WATCH=str(site) + os.sep,
               WATCH_LOG=str(d / f"{site.name}-writes"), TMPDIR=str(_tmp(fed, site)))  # fmt: skip
    env["PYTHONPATH"] = os.pathsep.join([str(d / "hooks"), str(REPO)])
    return env


def _tmp(fed, site: Path) -> Path:
    """The temporary folder of the processes run for ``site``: left empty after a run."""
    return fed[0] / f"{site.name}-tmp"


def _fedxray(fed, site: Path, args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedxray", *args], env=_env(fed, site),
                          capture_output=True, text=True, timeout=300, **kw)  # fmt: skip


def _tensors(path: Path) -> dict[str, np.ndarray]:
    return parse_unverified(path.read_bytes())[0].tensors


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_two_processes_give_the_single_process_update(fed):
    one, two = _site(fed, "one"), _site(fed, "two")
    r1 = run_cli(*_train_args(fed, one))
    assert r1.code == 0, r1.err
    r2 = _fedxray(fed, two, _train_args(fed, two, "--nproc", "2"))
    assert r2.returncode == 0, r2.stderr
    doc1, doc2 = json.loads(r1.out), json.loads(r2.stdout)  # rank 0 alone printed
    assert (
        doc2["epsilon"] == doc1["epsilon"] and doc2["noise_multiplier"] == doc1["noise_multiplier"]
    )
    assert doc2["losses"] == pytest.approx(doc1["losses"], rel=1e-5)
    u1, u2 = _tensors(one / "a.update"), _tensors(two / "a.update")
    assert u1.keys() == u2.keys()
    for name in u1:
        np.testing.assert_allclose(u2[name], u1[name], rtol=1e-4, atol=1e-6, err_msg=name)
    assert any(np.abs(u).max() > 1e-4 for u in u1.values())  # it did train
    # The same files as one process wrote, and none of them by rank 1.
    assert _listing(two) == _listing(one)
    log = fed[0] / "two-writes.rank1"
    assert log.exists() and log.read_text() == ""
    assert not (fed[0] / "two-writes.rank0").exists()  # the hook watches ranks 1.. only
    assert list(_tmp(fed, two).iterdir()) == []  # the launcher's folder is gone too


def test_two_processes_keep_the_same_site_average(fed):
    """With --ema the update is the average of the site's iterates, kept in the optimiser's
    state that process 0 hands the others each epoch: the same with two processes."""
    one, two = _site(fed, "ema-one"), _site(fed, "ema-two")
    r1 = run_cli(*_train_args(fed, one, federation="ema"))
    assert r1.code == 0, r1.err
    r2 = _fedxray(fed, two, _train_args(fed, two, "--nproc", "2", federation="ema"))
    assert r2.returncode == 0, r2.stderr
    # Epoch by epoch first: a difference from epoch 2 on is in what process 0 hands over.
    assert json.loads(r2.stdout)["losses"] == pytest.approx(json.loads(r1.out)["losses"], rel=1e-5)
    u1, u2 = _tensors(one / "a.update"), _tensors(two / "a.update")
    for name in u1:
        np.testing.assert_allclose(u2[name], u1[name], rtol=1e-4, atol=1e-6, err_msg=name)


def test_budget_refusal_stops_every_process_with_its_code(fed):
    site = _site(fed, "poor")
    r = _fedxray(fed, site, _train_args(fed, site, "--nproc", "2", "--max-epsilon", "0.01"))
    assert r.returncode == EXIT_BUDGET, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("fedxray: error:")]
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr  # rank 0's alone
    assert _listing(site) == ["hosp-a.key"]
    assert list(_tmp(fed, site).iterdir()) == []


def _rank_pid(parent: int, rank: str) -> int | None:
    """The pid of the child of ``parent`` that torchrun started as ``rank``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent and f"RANK={rank}".encode() in env:
            return int(entry.name)
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_a_killed_rank_stops_the_run_and_a_rerun_resumes(fed):
    site = _site(fed, "killed")
    args = _train_args(fed, site, "--nproc", "2", federation="long")
    proc = subprocess.Popen([sys.executable, "-m", "fedxray", *args], env=_env(fed, site),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline, victim = time.monotonic() + 120, None
    while time.monotonic() < deadline and proc.poll() is None:
        victim = victim or _rank_pid(proc.pid, "1")
        if victim and any(site.rglob("*.ckpt.safetensors")):
            break
        time.sleep(0.02)
    assert victim is not None and proc.poll() is None, proc.communicate()
    os.kill(victim, signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_WORKER, err
    lines = [line for line in err.splitlines() if not line.startswith("warning: a fixed seed")]
    assert len(lines) == 2 and "Traceback" not in err, err
    assert lines[0].startswith("fedxray: error: process 1 of 2 was killed (SIGKILL)"), err
    assert lines[1].startswith("hint: run the same command again"), err
    assert not (site / "a.update").exists()
    again = _fedxray(fed, site, args)
    assert again.returncode == 0, again.stderr
    doc = json.loads(again.stdout)
    assert doc["resumed_from_epoch"] >= 1 or doc["replayed_epochs"] >= 1, doc
    assert (site / "a.update").exists()


def test_evaluate_and_predict_in_two_processes_match_one(fed):
    d, plan, _ = fed
    model = d / "dist" / "round-0001.model"
    site = _site(fed, "eval")
    args = ["evaluate", str(model), str(d / "a.shard"), "--plan", str(plan), "--bootstrap", "20",
            "--json", "--batch-size", "16"]  # fmt: skip
    one = run_cli(*args)
    two = _fedxray(fed, site, [*args, "--nproc", "2"])
    assert one.code == 0 and two.returncode == 0, two.stderr
    assert json.loads(two.stdout) == json.loads(one.out)
    images = sorted(str(p) for p in (REPO / "sample_data" / "hospital-c").glob("img00[0-2]*.png"))
    args = ["predict", str(model), *images, "--plan", str(plan), "--batch-size", "8"]
    one = run_cli(*args, "-o", site / "one.csv")
    two = _fedxray(fed, site, [*args, "-o", str(site / "two.csv"), "--nproc", "2"])
    assert one.code == 0 and two.returncode == 0, two.stderr
    rows = (site / "one.csv").read_text().splitlines()
    assert len(rows) == len(images) + 1  # the header, then the images in their order
    assert (site / "two.csv").read_text().splitlines() == rows
    assert (d / "eval-writes.rank1").read_text() == ""  # rank 1 wrote nothing


def test_share_splits_whole_items_in_order():
    from fedxray.distributed import World

    for count in (0, 1, 5, 8):
        parts = [World(rank, 3).share(count) for rank in range(3)]
        assert [i for p in parts for i in range(count)[p]] == list(range(count))
        assert max(p.stop - p.start for p in parts) - min(p.stop - p.start for p in parts) <= 1


def test_the_launcher_blames_the_process_that_stopped_first():
    from types import SimpleNamespace as F

    from fedxray.distributed import WorkerLost, failure_code

    def fail(**codes):
        return {i: F(local_rank=int(r[1:]), exitcode=c) for i, (r, c) in enumerate(codes.items())}

    assert failure_code(fail(r0=EXIT_BUDGET, r1=-signal.SIGTERM), 2) == EXIT_BUDGET
    for codes, words in [
        (fail(r0=EXIT_WORKER, r1=-signal.SIGKILL), "process 1 of 2 was killed (SIGKILL)"),
        (fail(r0=-signal.SIGKILL, r1=EXIT_WORKER), "process 0 of 2 was killed (SIGKILL)"),
        (fail(r0=-signal.SIGTERM, r2=1, r1=EXIT_WORKER), "process 2 of 3 failed (exit code 1)"),
    ]:
        with pytest.raises(WorkerLost) as e:
            failure_code(codes, len(codes))
        assert e.value.message.startswith(words) and e.value.exit_code == EXIT_WORKER
        # Killed: rerun and resume. Failed on its own: its error is shown by one process.
        own_error = "failed (exit code" in words
        assert ("--nproc 1" in e.value.hint) == own_error and (
            "resumes" in e.value.hint
        ) != own_error


def test_a_missing_input_is_reported_before_the_processes_start(fed):
    site = _site(fed, "missing")
    args = _train_args(fed, site, "--nproc", "2")
    args[args.index("--data") + 1] = str(site / "nothing.shard")
    r = run_cli(*args)
    assert r.code == 1 and r.err.strip().endswith(f"shard not found: {site / 'nothing.shard'}")
    assert _listing(site) == ["hosp-a.key"]


def test_no_dp_is_refused_with_several_processes(fed):
    site = _site(fed, "nodp")
    r = run_cli(*_train_args(fed, site, "--nproc", "2", "--no-dp"))
    assert r.code == 1 and "one process" in r.err and "--nproc 1" in r.err, r.err
    assert _listing(site) == ["hosp-a.key"]


def test_a_head_on_cached_features_is_refused_with_several_processes(fed):
    """scatter-linear trains its head on features cached per image, in one process."""
    d = fed[0]
    make_federation(d, "scat", "-o", d / "scat", "--image-size", "32")
    site = _site(fed, "scat-site")
    r = run_cli(*_train_args(fed, site, "--nproc", "2", federation="scat"))
    assert r.code == 1 and "cached features" in r.err and "--nproc 1" in r.err, r.err
    assert _listing(site) == ["hosp-a.key"]
