"""`fedxray prep`: plan or --size, --json report, bad inputs, no output on failure, no PHI."""

from __future__ import annotations

import csv
import json
import os
import shutil
import stat
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest

from fedxray.data.pseudonym import image_id, patient_pseudonym, site_secret
from fedxray.data.shard_io import read_shard
from fedxray.errors import EXIT_ERROR
from fedxray.keys import load_private_key
from tests.cli_helpers import run_cli
from tests.conftest import PHI_KEYWORDS, REPO
from tests.images import phantom_png

SAMPLE = REPO / "sample_data"
PER_CLASS = 2
ONE_JSON = ("--workers", "1", "--json")


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    """Three site keys, one outsider key, and a 32 px plan."""
    d = tmp_path_factory.mktemp("fed")
    for s in ("hosp-a", "hosp-b", "hosp-c", "outsider"):
        assert run_cli("keygen", s, "-o", d, "-q").code == 0
    cards = [d / f"hosp-{s}.pub" for s in "abc"]
    r = run_cli("init", "--name", "demo", "-o", d / "coord", "--image-size", "32",
                "--model", "tinycnn", "-q", *cards)  # fmt: skip
    assert r.code == 0, r.err
    return {"dir": d, "plan": d / "coord" / "demo.plan", "key": d / "hosp-a.key"}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A few sample DICOMs of hospital-a (fake PHI in their headers) with their labels.csv."""
    d = tmp_path_factory.mktemp("hospital-a")
    with open(SAMPLE / "hospital-a" / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    picked, per_class = [], Counter()
    for row in rows:
        if per_class[row["label"]] < PER_CLASS:
            per_class[row["label"]] += 1
            picked.append(row)
            shutil.copy(SAMPLE / "hospital-a" / row["file"], d / row["file"])
    with open(d / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["file", "label", "patient"])
        w.writeheader()
        w.writerows(picked)
    assert len(picked) == 3 * PER_CLASS
    return d, picked


def _json(r):
    assert r.code == 0, r.err
    return json.loads(r.out)


def _phi(folder: Path) -> set[str]:
    found: set[str] = set()
    for p in folder.glob("*.dcm"):
        ds = pydicom.dcmread(p, force=True)
        for kw in PHI_KEYWORDS:
            value = str(ds.get(kw, "") or "")
            if len(value) >= 6:
                found.add(value)
        found.update(part for part in str(ds.PatientName).split("^") if len(part) >= 4)
        found.add(p.stem)
    return found


def test_prep_with_plan_and_key(fed, site, tmp_path, monkeypatch):
    folder, rows = site
    out = tmp_path / "a.shard"
    doc = _json(
        run_cli("prep", folder, "--plan", fed["plan"], "--key", fed["key"], "-o", out, *ONE_JSON)
    )
    assert doc["output"] == str(out) and doc["image_size"] == 32
    assert doc["files_seen"] == doc["images"] == len(rows)
    assert doc["kept"] == dict(Counter(r["label"] for r in rows))
    want_patients = {c: len({r["patient"] for r in rows if r["label"] == c}) for c in doc["kept"]}
    assert doc["patients"] == want_patients and doc["skipped"] == []
    assert doc["pseudonyms"] == "site-key"
    assert doc["label_sources"] == {str(folder): str(folder / "labels.csv")}

    shard = read_shard(out)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert shard.classes == ["normal", "bacterial", "viral"] and shard.images.shape[1:] == (32, 32)
    secret = site_secret(load_private_key(fed["key"]))
    assert set(shard.patients) == {patient_pseudonym(secret, r["patient"]) for r in rows}
    assert set(shard.image_ids) == {image_id(secret, r["file"]) for r in rows}

    # Nothing from the headers (nor a file name) reaches the shard.
    phi = _phi(folder)
    assert len(phi) > 30  # the fakes are really there to be found
    blob = out.read_bytes()
    for value in phi:
        for encoded in (value.encode(), value.encode("utf-16-le")):
            assert encoded not in blob, value

    # Without -o, a keyed run writes SITE.shard (the key's site name) in the current folder.
    monkeypatch.chdir(tmp_path)
    r = run_cli("prep", folder, "--plan", fed["plan"], "--key", fed["key"], "-q")
    assert r.code == 0, r.err
    again = read_shard(tmp_path / "hosp-a.shard")
    assert np.array_equal(again.images, shard.images)
    assert list(again.image_ids) == list(shard.image_ids)  # same key, same pseudonyms


def test_size_and_classes_without_plan(site, tmp_path):
    folder, rows = site
    out = tmp_path / "two.shard"
    cls = ("--classes", "normal,pneumonia")
    r = run_cli("prep", folder, "-o", out, "--size", "24", *cls, *ONE_JSON)
    doc = _json(r)
    sick = sum(r["label"] != "normal" for r in rows)
    assert doc["kept"] == {"normal": PER_CLASS, "pneumonia": sick}
    assert doc["pseudonyms"] == "random" and "pseudonyms are random" in r.err
    shard = read_shard(out)
    assert shard.classes == ["normal", "pneumonia"] and shard.image_size == 24
    assert shard.meta["pseudonyms"] == "random"


def test_argument_errors_happen_before_any_work(fed, site, tmp_path):
    folder, _ = site
    out = tmp_path / "x.shard"
    cases = [
        ((folder, "-o", out), "no image size"),
        ((folder, "--size", "32"), "no output file given"),
        ((folder, "-o", out, "--plan", fed["plan"], "--size", "64"), "differs from the image size"),
        (
            (folder, "-o", out, "--plan", fed["plan"], "--classes", "a,b"),
            "differs from the classes",
        ),
        ((folder, "-o", out, "--size", "32", "--labels", tmp_path / "none.csv"), "labels file not"),
        (
            (folder, "-o", out, "--plan", fed["plan"], "--key", fed["dir"] / "outsider.key"),
            "'outsider' is not a site of federation demo",
        ),
    ]
    for args, message in cases:
        r = run_cli("prep", *args)
        assert r.code == EXIT_ERROR, (args, r.err)
        assert r.err.startswith("fedxray: error:") and message in r.err, r.err
        assert "Traceback" not in r.err
    assert not out.exists()
    # Repeating what the plan says is fine.
    doc = _json(
        run_cli(
            *("prep", folder, "-o", out, "--plan", fed["plan"], "--size", "32", *ONE_JSON),
            *("--classes", "normal,bacterial,viral"),
        )
    )
    assert doc["image_size"] == 32 and out.exists()


def _good_png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    src = next(p for p in sorted((SAMPLE / "hospital-c").iterdir()) if p.suffix == ".png")
    shutil.copy(src, path)
    return path


def test_bad_inputs_are_reported_and_the_run_goes_on(tmp_path):
    root = tmp_path / "in"
    good = _good_png(root / "NORMAL" / "good.png")
    data = good.read_bytes()
    (root / "NORMAL" / "empty.png").write_bytes(b"")
    (root / "NORMAL" / "notes.txt").write_text("the scanner is in room 3\n")
    (root / "NORMAL" / "truncated.png").write_bytes(data[: len(data) // 3])
    out = tmp_path / "x.shard"
    r = run_cli("prep", root, "-o", out, "--size", "32", "--workers", "1", "--json")
    doc = _json(r)
    assert doc["files_seen"] == 4 and doc["images"] == 1
    assert doc["kept"] == {"normal": 1, "bacterial": 0, "viral": 0}
    assert {Path(s["path"]).name: s["reason"] for s in doc["skipped"]} == {
        "empty.png": "unreadable",
        "notes.txt": "not-an-image",
        "truncated.png": "unreadable",
    }
    assert doc["skipped_counts"] == {"unreadable": 2, "not-an-image": 1}
    assert all(s["message"] for s in doc["skipped"])
    for s in doc["skipped"]:  # the technician sees each one on screen too
        assert f"{s['path']}: {s['reason']}" in r.err
    assert len(read_shard(out)) == 1


def test_nothing_usable_is_an_error_and_writes_nothing(tmp_path):
    root = tmp_path / "in" / "NORMAL"
    root.mkdir(parents=True)
    (root / "empty.png").write_bytes(b"")
    (root / "notes.txt").write_text("x\n")
    out = tmp_path / "x.shard"
    r = run_cli("prep", tmp_path / "in", "-o", out, "--size", "32", "--workers", "1")
    assert r.code == EXIT_ERROR
    assert r.err.startswith("fedxray: error: no usable image in") and "Traceback" not in r.err
    assert len(r.err.strip().splitlines()) <= 2
    assert not out.exists() and not list(tmp_path.glob(".*"))  # no temporary file left either


def test_existing_output_is_refused_without_force(site, tmp_path):
    folder, rows = site
    out = tmp_path / "x.shard"
    out.write_bytes(b"precious")
    r = run_cli("prep", folder, "-o", out, "--size", "32", "--workers", "1")
    assert r.code == EXIT_ERROR and "output exists" in r.err and "--force" in r.err
    assert out.read_bytes() == b"precious"
    r = run_cli("prep", folder, "-o", out, "--size", "32", "--workers", "1", "--force", "-q")
    assert r.code == 0, r.err
    assert len(read_shard(out)) == len(rows)


def test_same_relative_path_in_two_inputs_gets_two_image_ids(fed, tmp_path):
    from fedxray.steps.evaluate import reads_for_shard

    for seed, name in enumerate(("east", "west")):
        phantom_png(tmp_path / name / "NORMAL" / "x.png", seed)
    _good_png(tmp_path / "east" / "NORMAL" / "only-east.png")
    out = tmp_path / "x.shard"
    inputs = (tmp_path / "east", tmp_path / "west")
    r = run_cli("prep", *inputs, "-o", out, "--plan", fed["plan"], "--key", fed["key"], "-q")
    assert r.code == 0, r.err
    shard = read_shard(out)
    ident = load_private_key(fed["key"])
    secret = site_secret(ident)
    # Clashing paths are keyed by their input folder's name; the others stay plain.
    want = {"east/NORMAL/x.png", "west/NORMAL/x.png", "NORMAL/only-east.png"}
    assert set(shard.image_ids) == {image_id(secret, p) for p in want}
    # A reader's CSV still finds each image, by short or absolute path.
    reads = "file,label\n" + "\n".join(
        [
            f"{tmp_path / 'west' / 'NORMAL' / 'x.png'},viral",
            "east/NORMAL/x.png,bacterial",
            "NORMAL/only-east.png,normal",
        ]
    )
    got = reads_for_shard(reads.encode(), shard, shard.classes, ident).labels
    by_id = dict(zip(shard.image_ids, got, strict=True))
    assert by_id[image_id(secret, "west/NORMAL/x.png")] == 2
    assert by_id[image_id(secret, "east/NORMAL/x.png")] == 1
    assert by_id[image_id(secret, "NORMAL/only-east.png")] == 0


def test_module_entry_with_worker_processes(tmp_path):
    """`python -m fedxray prep --workers 2` really starts (spawned) worker processes."""
    from fedxray.data.decode import MIN_FILES_PER_WORKER

    n = 2 * MIN_FILES_PER_WORKER
    for i in range(n):
        phantom_png(tmp_path / "in" / ("NORMAL" if i % 2 else "viral") / f"{i:03d}.png", i)
    out = tmp_path / "x.shard"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedxray",
            "prep",
            str(tmp_path / "in"),
            "-o",
            str(out),
            "--size",
            "16",
            "--workers",
            "2",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["workers"] == 2 and doc["images"] == n
    assert doc["kept"] == {"normal": n // 2, "bacterial": 0, "viral": n // 2}
    assert len(read_shard(out)) == n
