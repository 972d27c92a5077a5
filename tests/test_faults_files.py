"""Files that stay at a site, shown and used with care (issue 13; the case list is in
test_faults_cli.py):

- inspect shows a healthy ledger or shard, without a secret: test_inspect_shows_a_ledger,
  test_inspect_shows_a_shard;
- train-local warns on a shard too small to be useful: test_train_local_warns_on_a_small_shard;
- predict says that it is no diagnosis, and flags images out of distribution:
  test_predict_says_it_is_no_diagnosis, test_predict_flags_noise_and_not_phantoms.
"""

from __future__ import annotations

import csv
import io
import json
import shutil

import numpy as np
from PIL import Image

from fedxray.cli.cmd_evaluate import NOT_A_DIAGNOSIS
from fedxray.data.shard import MIN_USEFUL_PATIENTS
from fedxray.data.shard_io import read_shard
from fedxray.evaluation.confidence import MIN_CONFIDENCE
from tests.cli_helpers import run_cli
from tests.conftest import REPO
from tests.images import phantom_png


def test_inspect_shows_a_ledger(fault_fed):
    ledger = fault_fed.root / "hosp-a.ledger"
    r = run_cli("inspect", ledger, "--json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert doc["kind"] == "ledger" and doc["format"] == "fedxray-privacy-ledger"
    assert len(doc["ledger_id"]) == 32 and "budget" in doc and "total" in doc
    (fed,) = doc["federations"]
    assert fed["rounds"]["1"]["finished"] is True and fed["epochs_recorded"] == 5
    # Spending only: nothing a replay of the site's noise could start from.
    assert "seed" not in r.out.lower() and "history" not in doc
    human = run_cli("inspect", ledger)
    assert human.code == 0 and "privacy ledger" in human.err and "epsilon after" in human.err


def test_inspect_shows_a_shard(fault_fed):
    path = fault_fed.shard("hosp-a")
    r = run_cli("inspect", path, "--json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    shard = read_shard(path)
    assert doc["kind"] == "shard" and doc["images"] == len(shard)
    assert doc["classes"] == list(shard.classes) and doc["image_size"] == 32
    assert sum(doc["images_per_class"].values()) == len(shard)
    assert doc["patients"] == shard.num_patients and doc["bytes"] == path.stat().st_size
    human = run_cli("inspect", path)
    for text in (r.out, human.err):  # never a pseudonym
        assert not any(p in text for p in set(shard.patients) | set(shard.image_ids))
    damaged = bytearray(path.read_bytes())
    damaged[-1] ^= 1
    (fault_fed.root / "damaged.shard").write_bytes(bytes(damaged))
    r = run_cli("inspect", fault_fed.root / "damaged.shard")
    assert r.code == 3 and "checksum" in r.err


def test_train_local_warns_on_a_small_shard(fault_fed, tmp_path):
    images = tmp_path / "few"
    for i in range(12):
        folder = ("NORMAL", "PNEUMONIA")[i % 2]
        kind = "" if folder == "NORMAL" else "virus_"
        phantom_png(images / folder / f"person{i}_{kind}{i}.png", i)
    # A copy of the key in a folder of its own: the site's record of earlier training (and its
    # checkpoints) live beside the key, and this test must not add to the shared site's.
    key = tmp_path / "keys" / "hosp-a.key"
    key.parent.mkdir()
    shutil.copy2(fault_fed.key("hosp-a"), key)
    site = ("--plan", fault_fed.plan, "--key", key)
    small = tmp_path / "small.shard"
    assert run_cli("prep", images, "-o", small, "--workers", "1", "-q", *site).code == 0
    r = run_cli("train-local", fault_fed.model(2), "--data", small, "--no-dp", "--json",
                "-o", tmp_path / "u.update", "--ledger", tmp_path / "x.ledger", *site)  # fmt: skip
    assert r.code == 0, r.err
    warning = f"only 12 patients, fewer than {MIN_USEFUL_PATIENTS}"
    assert warning in r.err and any(warning in w for w in json.loads(r.out)["warnings"])
    big = run_cli("train-local", fault_fed.model(2), "--data", fault_fed.shard("hosp-a"),
                  "--no-dp", "-o", tmp_path / "v.update", "--ledger", tmp_path / "x.ledger",
                  *site)  # fmt: skip
    assert big.code == 0 and "fewer than" not in big.err


def test_predict_says_it_is_no_diagnosis(fault_fed):
    image = REPO / "sample_data" / "test" / "img0001.dcm"
    r = run_cli("predict", fault_fed.model(2), image, "--plan", fault_fed.plan)
    assert r.code == 0 and NOT_A_DIAGNOSIS in r.err.splitlines()
    quiet = run_cli("predict", fault_fed.model(2), image, "--plan", fault_fed.plan, "-q")
    assert quiet.code == 0 and quiet.err == "" and quiet.out == r.out


def test_predict_flags_noise_and_not_phantoms(fault_fed, tmp_path):
    rng = np.random.default_rng(0)
    noise = tmp_path / "noise"
    noise.mkdir()
    for i in range(10):
        size = (256, 256) if i % 2 else (300, 240)
        Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(noise / f"n{i}.png")
    phantoms = REPO / "sample_data" / "test"
    # The plausibility checks alone (--min-confidence 0): this small test model is barely
    # above chance, so its confidence says little (benchmarks/bench_ood.py measures the
    # default threshold on real radiographs).
    r = run_cli("predict", fault_fed.model(2), phantoms, noise, "--plan", fault_fed.plan,
                "--min-confidence", "0")  # fmt: skip
    assert r.code == 0, r.err
    rows = [row for row in csv.DictReader(io.StringIO(r.out)) if not row["error"]]
    flagged = {row["path"] for row in rows if row["ood"] == "yes"}
    real = [row for row in rows if row["path"].startswith(str(phantoms))]
    assert len(real) == 120 and not flagged & {row["path"] for row in real}
    assert flagged == {str(noise / f"n{i}.png") for i in range(10)}
    assert all("noise" in row["ood_reasons"].split(";") for row in rows if row["ood"] == "yes")
    assert all(0 <= float(row["confidence"]) <= 1 for row in rows)
    assert "warning: 10 of 130 image(s) look out of distribution" in r.err
    # At the default threshold, "low-confidence" is exactly a confidence below it.
    d = run_cli("predict", fault_fed.model(2), phantoms, "--plan", fault_fed.plan)
    for row in (row for row in csv.DictReader(io.StringIO(d.out)) if not row["error"]):
        low = float(row["confidence"]) < MIN_CONFIDENCE
        assert ("low-confidence" in row["ood_reasons"].split(";")) == low
        assert (row["ood"] == "yes") == low  # phantoms pass every plausibility check
    # JSON lines carry the same flag; a threshold above every confidence flags every image.
    j = run_cli("predict", fault_fed.model(2), noise / "n0.png", "--plan", fault_fed.plan,
                "--json", "--min-confidence", "1")  # fmt: skip
    (doc,) = [json.loads(line) for line in j.out.splitlines()]
    assert doc["ood"] is True and doc["ood_reasons"] == ["noise", "low-confidence"]
    assert 0 <= doc["confidence"] < 1
