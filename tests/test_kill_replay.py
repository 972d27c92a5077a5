"""Issue 12's "done when": kill train-local (SIGKILL) at many points, rerun it, and every
rerun ends with the epsilon of an uninterrupted run and an update bit-identical to it.

Each scenario is a fresh site folder (key, plan, shard, round-1 model) whose train-local
runs are killed one after another at the scenario's points, then run to the end. The points
cover a kill during every kind of write (ledger, checkpoint, site record, update; before and
after the rename), in the middle of epochs, during recovery runs themselves, and at random
moments. The children come from a fork server with torch and fedxray loaded, so that some
thirty processes fit in well under a minute on one thread.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import shutil
import time

import pytest

from fedxray.training.ledger import DONE, SiteLedger
from tests.cli_helpers import make_federation, run_cli
from tests.conftest import REPO

SEED = "7"
EPOCHS = 3
PRELOAD = ["torch", "torch._dynamo", "numpy", "opacus.accountants.analysis.rdp", "fedxray.cli.main",
           "fedxray.steps.train_local", "fedxray.training.loop", "tests.crashing"]  # fmt: skip
# One scenario per line: the points at which its successive runs are killed.
SCENARIOS = {
    "creating the ledger": [("ledger", "before", 1)],
    "writing the site record": [("record", "before", 1)],
    "recording epoch 1 (write-ahead)": [("ledger", "before", 2)],
    "in epoch 1": [("step", "after", 2)],
    "writing checkpoint 2": [("checkpoint", "before", 2)],
    "between checkpoint 2 and the ledger": [("ledger", "before", 5)],
    "just after checkpoint 3": [("checkpoint", "after", 3)],
    "in epoch 3": [("step", "after", 8)],
    "finishing the round": [("ledger", "before", 8)],
    "writing the update": [("update", "before", 1)],
    "again and again while recovering": [
        ("step", "after", 2),  # in epoch 1
        ("checkpoint", "before", 1),  # the replay of epoch 1, writing its checkpoint
        ("ledger", "before", 2),  # recording epoch 2
        ("step", "after", 5),  # in epoch 3
    ],
    **{f"at a random moment ({i})": ["random"] for i in range(1, 5)},
}


@pytest.fixture(scope="module")
def forks():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")  # the fork server (and its children) inherit it
        mp.setenv("NO_COLOR", "1")
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        yield ctx


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    d = tmp_path_factory.mktemp("kill")
    make_federation(d, "pneumo", "-o", d / "coord", "--model", "tinycnn", "--image-size", "16",
                    "--rounds", "2", "--local-epochs", str(EPOCHS), "--epsilon", "4")  # fmt: skip
    r = run_cli("prep", REPO / "sample_data" / "hospital-c", "-o", d / "hosp-a.shard",
                "--plan", d / "coord" / "pneumo.plan", "--key", d / "hosp-a.key", "-q")  # fmt: skip
    assert r.code == 0, r.err
    return d


def site_folder(federation, folder):
    """A site that never trained: its key, the plan, its shard and the round-1 model."""
    folder.mkdir()
    for f in ("hosp-a.key", "hosp-a.shard", "coord/pneumo.plan", "coord/round-0001.model"):
        shutil.copy2(federation / f, folder / os.path.basename(f))
    return folder


def argv(folder, *extra):
    """The same command every time (--force: a run killed after its update was in place has
    left a complete file behind)."""
    return [str(folder / "round-0001.model"), "--data", str(folder / "hosp-a.shard"),
            "--plan", str(folder / "pneumo.plan"), "--key", str(folder / "hosp-a.key"),
            "-o", str(folder / "hosp-a-round-0001.update"), "--seed", SEED, "-q", "--force",
            *extra]  # fmt: skip


def run_child(forks, folder, point, delay=None) -> tuple[int, float]:
    """One train-local process: (exit code, -9 when killed; seconds it ran)."""
    ready = forks.Event()
    from tests.crashing import train_local

    p = forks.Process(
        target=train_local, args=(argv(folder), point, str(folder / "log.txt"), ready)
    )
    p.start()
    assert ready.wait(120), "the child never started"
    t0 = time.perf_counter()
    if delay is not None:
        p.join(delay)
        if p.exitcode is None:
            p.kill()
    p.join(120)
    return p.exitcode, time.perf_counter() - t0


def spent(folder) -> tuple[float, list[str], bool]:
    ledger = SiteLedger.load(folder / "hosp-a.ledger")
    (fid,) = ledger.federation_ids()
    fed = ledger.federation(fid)
    return fed.epsilon(), [e["status"] for e in fed.entries()], fed.round_finished(1)


def test_killed_runs_end_as_an_uninterrupted_run(forks, federation, tmp_path):
    ref = site_folder(federation, tmp_path / "reference")
    code, seconds = run_child(forks, ref, None)
    assert code == 0, (ref / "log.txt").read_text()
    reference = (ref / "hosp-a-round-0001.update").read_bytes()
    ref_eps, ref_status, finished = spent(ref)
    assert ref_status == [DONE] * EPOCHS and finished and 0 < ref_eps < 4
    rng = random.Random(os.environ.get("FEDXRAY_KILL_SEED", "12"))
    kills, report = 0, []
    for i, (name, points) in enumerate(SCENARIOS.items()):
        folder = site_folder(federation, tmp_path / f"scenario-{i}")
        for point in points:
            delay = rng.uniform(0, seconds) if point == "random" else None
            code, _ = run_child(forks, folder, None if point == "random" else point, delay)
            assert code in (-9, 0), (name, point, code, (folder / "log.txt").read_text())
            kills += code == -9
            report.append((name, point, delay, code))
        # The rerun: the technician runs the same command again.
        code, _ = run_child(forks, folder, None)
        log = (folder / "log.txt").read_text()
        assert code == 0, (name, log)
        assert spent(folder) == (ref_eps, [DONE] * EPOCHS, True), (name, log)
        assert (folder / "hosp-a-round-0001.update").read_bytes() == reference, (name, log)
    print(f"\n{kills} kills (reference run {seconds:.2f} s):")
    for row in report:
        print("  ", *row)
    assert kills >= 10
