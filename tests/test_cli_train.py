"""`fedxray train-local` and `fedxray privacy` through the CLI: update, budget, ledger."""

from __future__ import annotations

import json
import shutil

import pytest

from fedxray.errors import EXIT_BUDGET, EXIT_REFUSED, EXIT_VERIFY
from tests.cli_helpers import make_federation, run_cli
from tests.conftest import REPO


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    d = tmp_path_factory.mktemp("fed")
    make_federation(d, "demo", "-o", d / "coord", "--model", "tinycnn", "--image-size", "16",
                    "--rounds", "2", "--local-epochs", "1", "--epsilon", "4")  # fmt: skip
    plan, key = d / "coord" / "demo.plan", d / "hosp-a.key"
    r = run_cli("prep", REPO / "sample_data" / "hospital-c", "-o", d / "a.shard", "--plan", plan,
                "--key", key, "-q")  # fmt: skip
    assert r.code == 0, r.err
    return d, plan, key


def _train(d, plan, key, out, *extra):
    return run_cli(
        "train-local", d / "coord" / "round-0001.model", "--data", d / "a.shard", "--plan", plan,
        "--key", key, "-o", out, "--json", *extra,
    )  # fmt: skip


def _new_site_folder(key, folder):
    """A copy of the site's key in a folder of its own: a site that never trained."""
    shutil.copy2(key, folder / key.name)
    return folder / key.name


def test_update_verifies_and_ledger_records_it(site):
    d, plan, key = site
    r = _train(d, plan, key, d / "a.update")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert doc["dp"] is True and doc["unit"] == "patient" and 0 < doc["epsilon"] <= 4
    assert doc["centring"] is False  # tinycnn: every round trains
    v = run_cli("verify", d / "a.update", "--plan", plan, "--sender", "hosp-a", "--round", "1")
    assert v.code == 0, v.err
    info = json.loads(run_cli("inspect", d / "a.update", "--json").out)
    assert (
        info["parent"]
        == json.loads(
            run_cli("verify", d / "coord" / "round-0001.model", "--plan", plan, "--json").out
        )["file_sha256"]
    )
    assert info["meta"]["num_examples"] == doc["examples"] and "losses" not in info["meta"]
    p = run_cli("privacy", doc["ledger"], "--plan", plan, "--json")
    assert p.code == 0, p.err
    rows = json.loads(p.out)["federations"][0]["rounds"]
    assert [r["round"] for r in rows] == [1] and rows[0]["epsilon_total"] == doc["epsilon"]
    # Someone else's site name on the update is caught.
    assert run_cli("verify", d / "a.update", "--plan", plan, "--sender", "hosp-b").code == (
        EXIT_VERIFY
    )


def test_budget_refusal_writes_nothing(site, tmp_path):
    d, plan, key = site
    key = _new_site_folder(key, tmp_path)
    r = _train(d, plan, key, tmp_path / "x.update", "--max-epsilon", "0.01")
    assert r.code == EXIT_BUDGET, r.err
    assert r.err.startswith("fedxray: error:") and "Traceback" not in r.err
    assert not (tmp_path / "x.update").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hosp-a.key"]  # no ledger, no record


def test_no_dp_refused_when_plan_forbids(site, tmp_path):
    d, plan, key = site
    r = _train(d, plan, key, tmp_path / "x.update", "--no-dp", "--ledger", tmp_path / "l.ledger")
    assert r.code == EXIT_REFUSED and "--allow-no-dp" in r.err
    assert not (tmp_path / "x.update").exists()


def test_wrong_model_is_rejected(site, tmp_path):
    d, plan, key = site
    fake = tmp_path / "round-0001.model"
    fake.write_bytes((d / "hosp-b.pub").read_bytes())  # a valid file of the wrong kind
    r = run_cli("train-local", fake, "--data", d / "a.shard", "--plan", plan, "--key", key,
                "-o", tmp_path / "y.update")  # fmt: skip
    assert r.code == EXIT_VERIFY and not (tmp_path / "y.update").exists()


def test_the_centring_round_says_it_releases_a_mean_not_a_loss(tmp_path):
    """Round 1 of the default model trains nothing: the report says so instead of 'loss 0'."""
    make_federation(tmp_path, "centred", "--image-size", "32", "--epsilon", "4")
    plan, key = tmp_path / "coordinator" / "centred.plan", tmp_path / "hosp-a.key"
    r = run_cli("prep", REPO / "sample_data" / "hospital-c", "-o", tmp_path / "a.shard",
                "--plan", plan, "--key", key, "-q")  # fmt: skip
    assert r.code == 0, r.err
    r = run_cli("train-local", tmp_path / "coordinator" / "round-0001.model", "--data",
                tmp_path / "a.shard", "--plan", plan, "--key", key, "-o", tmp_path / "a.update",
                "--json")  # fmt: skip
    assert r.code == 0, r.err
    assert json.loads(r.out)["centring"] is True
    assert "none: this round releases the mean feature (centring)" in r.err
    assert "0.0000" not in r.err
