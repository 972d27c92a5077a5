"""The audits of a DP federation of images stay below the accountant's epsilon.

`fedxray simulate` with tinycnn at 32 px, 5 local epochs, epsilon 8 at delta 1e-5 (the
sample federation before scatter-linear became the default), 2 rounds for speed (the noise
is calibrated so that the site reaches epsilon 8 at the plan's last round either way), on
sample_data/hospital-a given as a plain folder: simulate holds 15 % of its patients out for
evaluation (never trained on by anyone: the non-members) and splits the rest over three
sites by patient; site-1 trains with 30 canaries. A lower bound above the accountant's
epsilon would mean a bug in DP training or in the accounting, and fails these tests. (At
these sizes no audit can show more than about 2.6, see the warnings; tests/test_cli_audit.py
shows the same comparison failing for a model that breaks its claim.)
"""

from __future__ import annotations

import json

import pytest

from tests.cli_helpers import run_cli
from tests.conftest import REPO

CANARIES = 30


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dpfed") / "run"
    r = run_cli(
        "simulate", "-o", out, "--data", REPO / "sample_data" / "hospital-a", "--rounds", "2",
        "--model", "tinycnn", "--image-size", "32", "--local-epochs", "5",
        "--audit-canaries", str(CANARIES), "--seed", "0", "--bootstrap", "0", "--workers", "1",
        "--json", "-q",
    )  # fmt: skip
    assert r.code == 0, r.err
    return out, json.loads(r.out)


def test_membership_inference_stays_below_the_accountant(run):
    out, doc = run
    site = out / "sites" / "site-2"
    r = run_cli(
        "audit", doc["final_model"], "--members", site / "site-2.shard",
        "--non-members", out / "evaluation" / "test.shard", "--ledger", site / "site-2.ledger",
        "--plan", out / "coordinator" / "simulation.plan", "--json",
    )  # fmt: skip
    assert r.code == 0, r.err
    audit = json.loads(r.out)
    spent = audit["accountant_epsilon"]
    assert audit["accountant"]["source"] == "ledger" and audit["accountant"]["rounds"] == 2
    assert spent == pytest.approx(8.0, rel=0.01)
    assert audit["members"] > 100 and audit["non_members"] > 50
    assert audit["epsilon_lower_bound"]["lower"] < spent
    assert not audit["exceeds_accountant"] and "ALERT" not in r.err
    assert any("cannot reach the accountant" in w for w in audit["warnings"])


def test_canary_audit_stays_below_the_accountant(run):
    _, doc = run
    audit = doc["canary_audit"]
    assert audit["site"] == "site-1" and audit["canaries"] == CANARIES
    assert audit["accountant_epsilon"] == pytest.approx(8.0, rel=0.01)
    assert audit["epsilon_lower"] < audit["accountant_epsilon"]
    assert not audit["exceeds_accountant"]
    assert doc["settings"]["audit_canaries"] == CANARIES and doc["settings"]["canary_seed"] == 0
