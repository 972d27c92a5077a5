"""The budget belongs to the patients: one ledger per site key, composed over every federation,
capped by the site; a missing, foreign or older ledger is refused; a lost update is re-made
byte for byte; interruptions (Ctrl-C, a full disk) cost nothing extra (issue 12)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat

import pytest

from fedxray.errors import EXIT_BUDGET, EXIT_REFUSED
from fedxray.training import accounting
from fedxray.training.dp_engine import PrivateOptimizer
from fedxray.training.ledger import SiteLedger
from tests.cli_helpers import assert_clean_error, make_federation, run_cli
from tests.conftest import REPO


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    """Two federations (pneumo, second) over the same three sites; hosp-a's shard."""
    d = tmp_path_factory.mktemp("feds")
    for name in ("pneumo", "second"):
        make_federation(d, name, "-o", d / name, "--model", "tinycnn", "--image-size", "16",
                        "--rounds", "1", "--local-epochs", "2", "--epsilon", "4")  # fmt: skip
    plan = d / "pneumo" / "pneumo.plan"
    r = run_cli("prep", REPO / "sample_data" / "hospital-c", "-o", d / "hosp-a.shard",
                "--plan", plan, "--key", d / "hosp-a.key", "-q")  # fmt: skip
    assert r.code == 0, r.err
    return d


def new_site(fed, folder):
    """hosp-a's key and shard in a folder of their own: a site that never trained."""
    folder.mkdir(exist_ok=True)
    for name in ("hosp-a.key", "hosp-a.shard"):
        shutil.copy2(fed / name, folder / name)
    return folder


def train(fed, site, federation="pneumo", *extra, out=None, seed="3"):
    """train-local at ``site`` (a fixed seed, so that runs can be compared byte for byte)."""
    out = out or site / f"{federation}.update"
    return run_cli(
        "train-local", fed / federation / "round-0001.model", "--data", site / "hosp-a.shard",
        "--plan", fed / federation / f"{federation}.plan", "--key", site / "hosp-a.key",
        "-o", out, "--json", *(("--seed", seed) if seed else ()), *extra,
    )  # fmt: skip


def privacy(ledger, *extra):
    r = run_cli("privacy", ledger, "--json", *extra)
    assert r.code == 0, r.err
    return json.loads(r.out)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_update_ledger_and_site_record_are_private(fed, tmp_path):
    site = new_site(fed, tmp_path / "a")
    r = train(fed, site)
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert doc["ledger"] == str(site / "hosp-a.ledger")  # one ledger per site key
    for f in ("pneumo.update", "hosp-a.ledger", "hosp-a.record"):
        assert mode(site / f) == 0o600, f
    assert mode(site / ".hosp-a-checkpoints") == 0o700
    ledger_id = SiteLedger.load(site / "hosp-a.ledger").ledger_id
    record = json.loads((site / "hosp-a.record").read_text())
    assert list(record["ledgers"]) == [ledger_id]
    assert any("fixed seed is for reproducible experiments" in w for w in doc["warnings"])
    assert "warning: a fixed seed" in r.err


def test_moved_ledger_is_refused_and_starting_over_is_loud(fed, tmp_path):
    site = new_site(fed, tmp_path / "a")
    assert train(fed, site).code == 0
    moved = tmp_path / "elsewhere.ledger"
    (site / "hosp-a.ledger").rename(moved)
    r = train(fed, site, "pneumo", "--force", seed=None)
    assert_clean_error(r, EXIT_REFUSED, "hosp-a.ledger is missing", "trained before",
                       "--new-ledger")  # fmt: skip
    assert not (site / "hosp-a.ledger").exists()
    # The same ledger where it now is: accepted, and the finished round's update comes back.
    again = train(fed, site, "pneumo", "--force", "--ledger", moved, out=site / "again.update")
    assert again.code == 0, again.err
    assert (site / "again.update").read_bytes() == (site / "pneumo.update").read_bytes()
    # A different ledger (another site's, or a fresh file) is refused ...
    other = new_site(fed, tmp_path / "b")
    assert train(fed, other).code == 0
    r = train(fed, site, "pneumo", "--force", "--ledger", other / "hosp-a.ledger", seed=None)
    assert_clean_error(r, EXIT_REFUSED, "is not the one this site trained with", "--new-ledger")
    # ... unless the site knowingly starts over: a warning names what is forgotten.
    r = train(fed, site, "pneumo", "--force", "--new-ledger")
    assert r.code == 0, r.err
    assert "warning: starting a new privacy ledger" in r.err and "forgotten" in r.err
    assert len(json.loads((site / "hosp-a.record").read_text())["ledgers"]) == 2


def test_second_federation_composes_with_the_first_and_is_capped(fed, tmp_path):
    site = new_site(fed, tmp_path / "a")
    first = json.loads(train(fed, site).out)
    after_first = tmp_path / "after-first.ledger"
    shutil.copy2(site / "hosp-a.ledger", after_first)
    # The site's budget is the first plan's epsilon until the site decides: no room left.
    r = train(fed, site, "second", seed=None)
    assert_clean_error(r, EXIT_BUDGET, "site's privacy budget 4", "no room", "--set-budget")
    assert not (site / "second.update").exists()
    doc = privacy(site / "hosp-a.ledger")
    assert doc["budget"]["epsilon"] == 4 and doc["budget"]["source"] == "plan pneumo"
    assert doc["total_epsilon"] == pytest.approx(first["epsilon"], abs=1e-4)
    # Only the site raises it; the second federation is then calibrated to end within it.
    raised = run_cli("privacy", site / "hosp-a.ledger", "--set-budget", "5")
    assert raised.code == 0 and "warning: the site's budget was raised" in raised.err
    second = json.loads(train(fed, site, "second").out)
    assert 2 <= second["epsilon"] <= 4
    assert any("the site's budget 5 (all federations) binds" in w for w in second["warnings"])
    doc = privacy(site / "hosp-a.ledger")
    eps = {f["name"]: f["epsilon"] for f in doc["federations"]}
    assert eps == {"pneumo": first["epsilon"], "second": second["epsilon"]}
    total = doc["total_epsilon"]
    assert max(eps.values()) < total < sum(eps.values())  # composed, not merely added
    assert 5 * (1 - 1e-3) < total <= 5 and doc["remaining"] == pytest.approx(5 - total, abs=1e-3)
    site_ledger = SiteLedger.load(site / "hosp-a.ledger")
    assert total == pytest.approx(accounting.epsilon(site_ledger.history(), 1e-5), abs=1e-4)
    assert second["site_epsilon"] == pytest.approx(total, abs=1e-4)
    table = run_cli("privacy", site / "hosp-a.ledger")
    assert "site total" in table.err and "remaining" in table.err and "set by the site" in table.err
    # An older copy of the ledger (from before the second federation) is refused.
    shutil.copy2(after_first, site / "hosp-a.ledger")
    r = train(fed, site, "second", "--force", seed=None)
    assert_clean_error(r, EXIT_REFUSED, "fewer than the", "--new-ledger")


def test_lost_update_is_remade_byte_for_byte_and_mask_accepts_it(fed, tmp_path):
    site = new_site(fed, tmp_path / "a")
    assert train(fed, site).code == 0
    plan = fed / "pneumo" / "pneumo.plan"
    update, masked = site / "pneumo.update", site / "pneumo.masked"
    r = run_cli("mask", update, "--plan", plan, "--key", site / "hosp-a.key", "-o", masked)
    assert r.code == 0, r.err
    first = update.read_bytes()
    update.unlink()  # lost
    r = train(fed, site)
    assert r.code == 0, r.err
    assert json.loads(r.out)["resumed_from_epoch"] == 2  # nothing trained, nothing spent
    assert update.read_bytes() == first
    r = run_cli("mask", update, "--plan", plan, "--key", site / "hosp-a.key", "-o",
                site / "again.masked")  # fmt: skip
    assert r.code == 0, r.err


def _reference(fed, tmp_path):
    site = new_site(fed, tmp_path / "reference")
    r = train(fed, site)
    assert r.code == 0, r.err
    return json.loads(r.out)["epsilon"], (site / "pneumo.update").read_bytes()


def test_ctrl_c_then_rerun_spends_what_an_uninterrupted_run_spends(fed, tmp_path, monkeypatch):
    eps, update = _reference(fed, tmp_path)
    site = new_site(fed, tmp_path / "a")
    steps, step = [], PrivateOptimizer.step

    def interrupted(self):
        step(self)
        steps.append(1)
        if len(steps) == 4:  # in epoch 2
            raise KeyboardInterrupt

    monkeypatch.setattr(PrivateOptimizer, "step", interrupted)
    assert train(fed, site).code == 130
    monkeypatch.setattr(PrivateOptimizer, "step", step)
    (fid,) = SiteLedger.load(site / "hosp-a.ledger").federation_ids()
    entries = SiteLedger.load(site / "hosp-a.ledger").federation(fid).entries()
    assert [e["status"] for e in entries] == ["done", "started"]
    shown = run_cli("privacy", site / "hosp-a.ledger", "--json")
    assert entries[1]["seed"] not in shown.out + shown.err  # the seed never leaves the ledger
    r = train(fed, site)
    assert r.code == 0, r.err
    assert json.loads(r.out)["epsilon"] == eps
    assert (site / "pneumo.update").read_bytes() == update


@pytest.mark.parametrize("full", ["checkpoint", "ledger"])
def test_disk_full_then_rerun_spends_what_an_uninterrupted_run_spends(
    fed, tmp_path, monkeypatch, full
):
    eps, update = _reference(fed, tmp_path)
    site = new_site(fed, tmp_path / "a")
    # Epoch 2's checkpoint; the ledger's fifth write (new, 1 started, 1 done, 2 started, 2 done).
    pattern, fail_at = {"checkpoint": (".ckpt.safetensors.", 2), "ledger": (".hosp-a.ledger.", 5)}[
        full
    ]
    hits, fsync = [], os.fsync

    def disk_full(fd):
        if pattern in os.readlink(f"/proc/self/fd/{fd}"):
            hits.append(1)
            if len(hits) == fail_at:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", disk_full)
    r = train(fed, site)
    assert r.code != 0 and not (site / "pneumo.update").exists()
    monkeypatch.setattr(os, "fsync", fsync)
    assert not list(site.glob(".*.tmp")) and not list(site.glob(".*/.*.tmp"))  # cleaned up
    r = train(fed, site)
    assert r.code == 0, r.err
    assert json.loads(r.out)["epsilon"] == eps
    assert (site / "pneumo.update").read_bytes() == update


def test_an_old_per_federation_ledger_is_imported_not_forgotten(fed, tmp_path):
    site = new_site(fed, tmp_path / "a")
    history = [{"round": 1, "epoch": 1, "steps": 30, "dp": True, "noise_multiplier": 2.0,
                "sample_rate": 0.1, "time": "2026-01-01", "epsilon_after": 1.47}]  # fmt: skip
    old = {"format": "fedxray-privacy-ledger", "version": 1, "federations": {"f" * 32: {
        "calibration": {"noise_multiplier": 2.0, "delta": 1e-5, "unit": "patient",
                        "sample_rate": 0.1, "total_steps": 30, "target_epsilon": 3.0},
        "history": history, "rounds": {"1": {"finished": True, "epochs": 1}}}}}  # fmt: skip
    (site / "hosp-a-older.ledger").write_text(json.dumps(old))
    r = train(fed, site, seed=None)
    assert_clean_error(r, EXIT_REFUSED, "hosp-a-older.ledger", "--import")
    doc = privacy(site / "hosp-a.ledger", "--import", site / "hosp-a-older.ledger")
    spent = accounting.epsilon([(2.0, 0.1, 30)], 1e-5)
    assert doc["total_epsilon"] == pytest.approx(spent, abs=1e-4) and doc["budget"] is None
    # Its spending counts from now on: the site's budget (the new plan's 4) is already
    # partly used, so this federation is calibrated to end within what remains.
    r = train(fed, site)
    assert r.code == 0, r.err
    total = privacy(site / "hosp-a.ledger")["total_epsilon"]
    assert spent < total <= 4
