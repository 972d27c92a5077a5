"""`fedxray audit` on a model that leaks on purpose, through the commands a federation runs.

hospital-a holds 70% of its patients out with `prep --holdout` (the non-members). The
coordinator starts the federation (`init --init`) from weights trained without DP, without
augmentation, for many epochs, on hospital-a's training shard: a non-private, overfitted model,
and a privacy bug on purpose (fedxray's own training always augments; a non-private round of
it on this small shard gave a loss-attack AUC of only 0.57-0.65). The plan claims epsilon 0.1
and allows --no-dp updates; both sites then run round 1 with --no-dp, so hospital-a's ledger
says that round had no DP.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest
from safetensors.numpy import save_file

from fedxray.audit import FedxrayTrainer
from fedxray.data.shard_io import read_shard
from fedxray.errors import EXIT_ALERT
from fedxray.models.registry import build_model, state_to_numpy
from fedxray.settings import DEFAULT_CLASSES
from fedxray.training.ledger import Ledger
from fedxray.training.settings import TrainSettings
from tests.cli_helpers import assert_clean_error, run_cli
from tests.conftest import REPO

CLAIMED_EPSILON = 0.1  # the plan's target: the leaking model breaks it
EPOCHS = 200
PATIENTS_A, PATIENTS_B, HOLDOUT = 200, 10, 0.7


def copy_patients(site: str, n: int, dest: Path) -> None:
    """The first ``n`` patients of a sample site, with their labels.csv, into ``dest``."""
    rows = list(csv.DictReader((REPO / "sample_data" / site / "labels.csv").open()))
    chosen = set(list(dict.fromkeys(r["patient"] for r in rows))[:n])
    keep = [r for r in rows if r["patient"] in chosen]
    dest.mkdir(parents=True)
    for r in keep:
        shutil.copy(REPO / "sample_data" / site / r["file"], dest / r["file"])
    with (dest / "labels.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file", "label", "patient"])
        writer.writeheader()
        writer.writerows(keep)


def ok(*args):
    r = run_cli(*args)
    assert r.code == 0, (args, r.err)
    return r


def overfit_weights(shard_path: Path, out: Path) -> None:
    """Deliberately overfitted: Adam, 100 epochs, no augmentation, no DP."""
    settings = TrainSettings(
        arch="tinycnn", image_size=32, classes=DEFAULT_CLASSES, local_epochs=EPOCHS, rounds=1,
        batch_size=32, lr=0.003, optimizer="adam", augment=False, target_epsilon=1.0,
        delta=1e-5, max_grad_norm=1.0,
    )  # fmt: skip
    init = state_to_numpy(build_model("tinycnn", 32, 3, seed=0))
    model = FedxrayTrainer(settings, init)(read_shard(shard_path), 0)
    save_file(state_to_numpy(model), str(out))


@dataclasses.dataclass
class Federation:
    root: Path
    plan: Path
    model: Path  # round 1: the imported, overfitted weights
    after_round: Path  # round 2: after one --no-dp round
    members: Path
    non_members: Path
    ledger: Path

    def audit(self, *extra, model: Path | None = None):
        return run_cli(
            "audit", model or self.model, "--members", self.members, "--non-members",
            self.non_members, "--plan", self.plan, "--seed", "0", *extra,
        )  # fmt: skip


@pytest.fixture(scope="module")
def fed(tmp_path_factory) -> Federation:
    root = tmp_path_factory.mktemp("audit")
    a, b, coord = root / "hospital-a", root / "hospital-b", root / "coordinator"
    copy_patients("hospital-a", PATIENTS_A, root / "export-a")
    copy_patients("hospital-b", PATIENTS_B, root / "export-b")
    for site, folder in (("hospital-a", a), ("hospital-b", b)):
        folder.mkdir()
        ok("keygen", site, "-o", folder)
    ok("prep", root / "export-a", "--key", a / "hospital-a.key", "--size", "32",
       "--holdout", str(HOLDOUT), "-o", a / "hospital-a.shard", "--workers", "1")  # fmt: skip
    overfit_weights(a / "hospital-a.shard", root / "leaky.safetensors")
    ok("init", "--name", "leaky", "-o", coord, a / "hospital-a.pub", b / "hospital-b.pub",
       "--model", "tinycnn", "--image-size", "32", "--rounds", "2", "--local-epochs", "1",
       "--lr", "0.001", "--epsilon", str(CLAIMED_EPSILON), "--allow-no-dp", "--min-sites", "2",
       "--init", root / "leaky.safetensors")  # fmt: skip
    plan, model = coord / "leaky.plan", coord / "round-0001.model"
    ok("prep", root / "export-b", "--key", b / "hospital-b.key", "--plan", plan,
       "-o", b / "hospital-b.shard", "--workers", "1")  # fmt: skip
    masked = []
    for site, folder in (("hospital-a", a), ("hospital-b", b)):
        key = folder / f"{site}.key"
        ok("train-local", model, "--data", folder / f"{site}.shard", "--plan", plan,
           "--key", key, "--no-dp", "-o", folder / f"{site}.update")  # fmt: skip
        ok("mask", folder / f"{site}.update", "--plan", plan, "--key", key,
           "-o", folder / f"{site}.masked")  # fmt: skip
        masked.append(folder / f"{site}.masked")
    key = coord / "coordinator.key"
    ok("aggregate", *masked, "--plan", plan, "--key", key, "-o", coord / "round-0001.sum")
    ok("unmask", coord / "round-0001.sum", "--plan", plan, "--key", key, "--model", model,
       "-o", coord / "round-0002.model")  # fmt: skip
    return Federation(root, plan, model, coord / "round-0002.model", a / "hospital-a.shard",
                      a / "hospital-a.holdout.shard", a / "hospital-a.ledger")  # fmt: skip


def test_overfitted_non_private_model_shows_clear_leakage(fed):
    r = fed.audit("--json")
    doc = json.loads(r.out)
    # The plan claims epsilon 0.1, which this non-private model breaks: exit status 7.
    assert r.code == EXIT_ALERT and doc["exceeds_accountant"], r.err
    assert doc["attack"] == "loss-threshold" and doc["reference_models"] == 0
    assert doc["auc"] >= 0.6
    assert doc["epsilon_lower_bound"]["lower"] > 0
    members = read_shard(fed.members)
    assert doc["shards"]["members"]["patients"] == members.num_patients == doc["members"]
    assert doc["model"]["round"] == 1 and doc["seed"] == 0


def test_a_claim_the_model_breaks_is_caught(fed):
    """The comparison is not vacuous: against the plan's target the bound objects."""
    r = fed.audit()
    assert r.code == EXIT_ALERT, r.err  # a script or cron job notices without the JSON
    assert r.out == ""  # without --json, the report is on standard error only
    assert "ALERT: the lower bound exceeds the accountant's epsilon" in r.err
    assert "the plan's target" in r.err and "its target binds only the sites" in r.err
    assert "nothing was written or sent" in r.err  # the report is complete all the same
    r = fed.audit("--json", "-q")
    assert r.code == EXIT_ALERT and r.err == ""
    doc = json.loads(r.out)
    assert doc["accountant"]["source"] == "plan"
    assert doc["accountant_epsilon"] == CLAIMED_EPSILON
    assert doc["epsilon_lower_bound"]["lower"] > CLAIMED_EPSILON and doc["exceeds_accountant"]


def test_the_ledger_says_what_the_site_spent_on_the_model(fed):
    """Round 2's model had one round of training at hospital-a, without DP: no guarantee is
    left to exceed. Round 1's model had no training at this site in this federation:
    epsilon 0."""
    r = fed.audit("--ledger", fed.ledger, "--json", model=fed.after_round)
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    acc = doc["accountant"]
    assert acc["source"] == "ledger" and acc["rounds"] == 1 and acc["trained_without_dp"]
    assert doc["accountant_epsilon"] is None and not doc["exceeds_accountant"]
    assert "infinite: trained without DP" in r.err and "ALERT" not in r.err
    # Round 1's weights came from outside the ledger, and leak: the audit says so.
    r = fed.audit("--ledger", fed.ledger, "--json", "-q")
    assert r.code == EXIT_ALERT
    doc = json.loads(r.out)
    assert doc["accountant"]["rounds"] == 0 and doc["accountant_epsilon"] == 0
    assert doc["exceeds_accountant"]


def test_the_same_seed_gives_the_same_audit(fed):
    first, second = (json.loads(fed.audit("--json", "-q").out) for _ in range(2))
    for doc in (first, second):
        doc.pop("seconds")
    assert first == second


def test_lira_trains_reference_models_here(fed):
    r = fed.audit("--attack", "lira", "--reference-models", "2", "--json", "-q")
    doc = json.loads(r.out)
    assert r.code == (EXIT_ALERT if doc["exceeds_accountant"] else 0), r.err
    assert doc["attack"] == "lira-offline" and doc["reference_models"] == 2
    assert 0 <= doc["auc"] <= 1 and math.isfinite(doc["epsilon_lower_bound"]["lower"])
    assert not list(fed.root.rglob("fedxray-audit-*"))  # the reference models' folders


def test_audit_writes_nothing(fed):
    before = sorted(p for p in fed.root.rglob("*"))
    assert fed.audit("-q").code == EXIT_ALERT  # the leaky model's report, nothing else
    assert sorted(p for p in fed.root.rglob("*")) == before


def test_refuses_a_patient_among_both(fed, tmp_path):
    again = tmp_path / "copy.shard"
    shutil.copy(fed.members, again)
    r = run_cli("audit", fed.model, "--members", fed.members, "--non-members", again,
                "--plan", fed.plan)  # fmt: skip
    assert_clean_error(r, 1, "among both the members and the non-members")


def test_refuses_the_same_file_twice(fed):
    r = run_cli("audit", fed.model, "--members", fed.members, "--non-members", fed.members,
                "--plan", fed.plan)  # fmt: skip
    assert_clean_error(r, 1, "same file")


def test_refuses_a_ledger_without_the_federation(fed, tmp_path):
    other = Ledger.load(tmp_path / "other.ledger", "another-federation")
    other.record_epoch(round_number=1, epoch=1, steps=3, noise_multiplier=None, sample_rate=1.0)
    other.save()
    r = fed.audit("--ledger", tmp_path / "other.ledger")
    assert_clean_error(r, 1, "records nothing for federation leaky", "--ledger")
    assert_clean_error(fed.audit("--ledger", tmp_path / "missing.ledger"), 1, "not found")


def test_refuses_a_model_of_another_plan(fed, tmp_path):
    r = run_cli("keygen", "x", "-o", tmp_path)
    assert r.code == 0
    r = run_cli("init", "--name", "other", "-o", tmp_path, tmp_path / "x.pub",
                fed.root / "hospital-b" / "hospital-b.pub", "--min-sites", "2")  # fmt: skip
    assert r.code == 0, r.err
    r = run_cli("audit", fed.model, "--members", fed.members, "--non-members",
                fed.non_members, "--plan", tmp_path / "other.plan")  # fmt: skip
    assert_clean_error(r, 3)
