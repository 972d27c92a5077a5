"""prepare(): labelling, decoding, skipping with reasons, de-identification, pseudonyms."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from fedxray.data.prep import prepare
from fedxray.data.pseudonym import image_id, patient_pseudonym
from fedxray.data.shard_io import read_shard, write_shard
from fedxray.errors import FedxrayError
from fedxray.sampledata import SiteSpec, generate_site, render
from fedxray.sampledata.dicom_writer import STYLES
from tests.conftest import PHI_KEYWORDS

SECRET = b"k" * 32
SIZE = 32


def _png(path: Path, seed: int, label: str = "normal") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    v = render(np.random.default_rng(seed), label, 72, 64)
    Image.fromarray(np.rint(v * 255).astype(np.uint8)).save(path)
    return path


def _tiny_site(folder: Path, styles: dict[str, float], n: int = 2) -> list[Path]:
    folder.mkdir(parents=True)
    spec = SiteSpec(
        {"normal": n, "bacterial": n, "viral": n}, styles, (112, 120), "ZZ", "TEST HOSPITAL X"
    )
    return generate_site(folder, "site-x", spec, seed=5, used_ids=set())


def test_bad_inputs_are_reported_and_the_run_goes_on(tmp_path):
    good = _png(tmp_path / "NORMAL" / "good.png", 1)
    shutil.copy(good, tmp_path / "NORMAL" / "zz-copy-of-good.png")
    (tmp_path / "NORMAL" / "empty.png").write_bytes(b"")
    (tmp_path / "NORMAL" / "notes.txt").write_text("not an image\n")
    (tmp_path / "NORMAL" / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 200)
    (tmp_path / "NORMAL" / ".DS_Store").write_bytes(b"hidden files are not even looked at")
    _png(tmp_path / "PNEUMONIA" / "scan.png", 2)  # ambiguous for three classes
    _png(tmp_path / "bacterial" / "b.png", 3, "bacterial")
    _tiny_site(tmp_path / "viral", {"cr-mono1-12bit-j2k": 1.0}, n=1)
    dcm = sorted((tmp_path / "viral").glob("*.dcm"))
    (tmp_path / "viral" / "labels.csv").unlink()  # folder names are the label source here
    data = dcm[0].read_bytes()
    (tmp_path / "viral" / "truncated.dcm").write_bytes(data[: len(data) // 2])
    ds = pydicom.dcmread(dcm[1])
    ds.Modality = "CT"
    ds.save_as(tmp_path / "viral" / "ct.dcm")

    shard, report = prepare([tmp_path], SIZE, secret=SECRET, workers=1)

    reasons = {Path(s.path).name: s.reason for s in report.skipped}
    assert reasons == {
        "zz-copy-of-good.png": "duplicate",
        "empty.png": "unreadable",
        "notes.txt": "not-an-image",
        "garbage.png": "unreadable",
        "scan.png": "unknown-label",
        "truncated.dcm": "unreadable",
        "ct.dcm": "wrong-modality",
    }
    dup = next(s for s in report.skipped if s.reason == "duplicate")
    assert dup.message == f"same pixels as {good}"
    assert report.files_seen == 6 + 3 + 3  # 6 in NORMAL (hidden one excluded), 1+1, 3 + 2 made
    assert report.kept == {"normal": 1, "bacterial": 1, "viral": 3}
    assert report.total_kept == len(shard) == 5
    assert report.skipped_counts() == {
        "unreadable": 3,
        "not-an-image": 1,
        "wrong-modality": 1,
        "unknown-label": 1,
        "duplicate": 1,
    }
    assert report.sources == {"dicom": 3, "png": 2}
    assert shard.images.shape == (5, SIZE, SIZE) and shard.images.dtype == np.uint8
    assert sorted(shard.labels.tolist()) == [0, 1, 2, 2, 2]


@pytest.mark.shared_data
def test_undecodable_real_file_is_reported(tmp_path, shared_data):
    src = shared_data / "dicom" / "other_cr_not_chest"
    (tmp_path / "normal").mkdir()
    shutil.copy(src / "nema_wg04_RG2_CR_hip_mono2_jpegextended_lossy.dcm", tmp_path / "normal")
    _png(tmp_path / "normal" / "ok.png", 4)
    shard, report = prepare([tmp_path], SIZE, workers=1)
    assert len(shard) == 1
    [skip] = report.skipped
    assert skip.reason == "undecodable" and "1.2.840.10008.1.2.4.51" in skip.message


def test_no_phi_reaches_the_shard(tmp_path):
    styles = {name: 1.0 for name, s in STYLES.items() if s.modality is not None}
    paths = _tiny_site(tmp_path / "site", styles, n=3)
    phi: set[str] = set()
    for p in paths:
        ds = pydicom.dcmread(p, force=True)
        for kw in (*PHI_KEYWORDS, "StudyTime"):
            value = str(ds.get(kw, "") or "")
            if len(value) >= 6:
                phi.add(value)
        phi.update(str(ds.PatientName).split("^"))
        phi.add(p.name)
        phi.add(p.stem)
    assert len(phi) > 40  # the fakes are really there to be found

    shard, report = prepare([tmp_path / "site"], SIZE, secret=SECRET, workers=1)
    assert report.label_sources == {str(tmp_path / "site"): str(tmp_path / "site" / "labels.csv")}
    assert len(shard) == len(paths) == 9
    write_shard(tmp_path / "out.shard", shard)
    blob = (tmp_path / "out.shard").read_bytes()
    for value in phi:
        for encoded in (value.encode(), value.encode("utf-16-le")):
            assert encoded not in blob, value
    # pseudonyms are keyed hashes of the CSV patient column
    rows = (tmp_path / "site" / "labels.csv").read_text().splitlines()[1:]
    ids = {r.split(",")[2] for r in rows}
    assert set(shard.patients) == {patient_pseudonym(SECRET, i) for i in ids}
    assert sum(report.patients.values()) == len(ids)


def test_pseudonyms_stable_with_a_key_and_not_without(tmp_path):
    _tiny_site(tmp_path / "site", {"cr-mono2-8bit-jpeg": 1.0, "png-8bit": 1.0}, n=1)
    a, _ = prepare([tmp_path / "site"], SIZE, secret=SECRET, workers=1)
    b, _ = prepare([tmp_path / "site"], SIZE, secret=SECRET, workers=1)
    c, rep = prepare([tmp_path / "site"], SIZE, workers=1)
    assert list(a.patients) == list(b.patients) and list(a.image_ids) == list(b.image_ids)
    assert not set(a.patients) & set(c.patients)
    assert rep.pseudonyms == "random" and c.meta["pseudonyms"] == "random"
    assert a.meta["pseudonyms"] == "site-key"
    names = sorted(p.name for p in (tmp_path / "site").iterdir() if p.name != "labels.csv")
    assert sorted(a.image_ids) == sorted(image_id(SECRET, n) for n in names)


def test_images_without_patient_tokens(tmp_path):
    _png(tmp_path / "normal" / "a.png", 1)
    _png(tmp_path / "viral" / "b.png", 2, "viral")
    shard, report = prepare([tmp_path], SIZE, workers=1)
    assert shard.patients is None
    assert report.patients == report.kept == {"normal": 1, "bacterial": 0, "viral": 1}
    assert "no images of class 'bacterial'" in report.warnings
    # with one token present, the others stand for themselves
    _png(tmp_path / "normal" / "IM-0042-0001.png", 3)
    _png(tmp_path / "normal" / "IM-0042-0002.png", 4)
    shard, report = prepare([tmp_path], SIZE, secret=SECRET, workers=1)
    assert len(shard) == 4 and shard.num_patients == 3
    assert report.patients == {"normal": 2, "bacterial": 0, "viral": 1}
    assert patient_pseudonym(SECRET, "IM-0042") in set(shard.patients)


@pytest.mark.shared_data
def test_real_kermany_files(shared_data):
    root = shared_data / "kermany-fullres" / "train"
    normal = sorted((root / "NORMAL").iterdir())[:2]
    pneu = sorted((root / "PNEUMONIA").iterdir())
    bact = [p for p in pneu if "bacteria" in p.name][:2]
    vir = [p for p in pneu if "virus" in p.name][:2]
    shard, report = prepare(normal + bact + vir, 64, secret=SECRET, workers=1)
    assert report.kept == {"normal": 2, "bacterial": 2, "viral": 2}
    tokens = [p.name.rsplit("_", 1)[0].rsplit("_", 1)[0] for p in bact + vir]
    expect = {patient_pseudonym(SECRET, t) for t in tokens}
    assert expect <= set(shard.patients)
    assert shard.images.std() > 30


def test_nothing_usable_raises(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FedxrayError, match="no files found"):
        prepare([tmp_path / "empty"], SIZE, workers=1)
    with pytest.raises(FedxrayError, match="input not found"):
        prepare([tmp_path / "nope"], SIZE, workers=1)
    (tmp_path / "text" / "normal").mkdir(parents=True)
    (tmp_path / "text" / "normal" / "a.txt").write_text("x")
    with pytest.raises(FedxrayError, match="no usable image") as ei:
        prepare([tmp_path / "text"], SIZE, workers=1)
    assert "1 not-an-image" in ei.value.message
    _png(tmp_path / "unlabelled" / "misc" / "a.png", 1)
    with pytest.raises(FedxrayError, match="no usable image") as ei:
        prepare([tmp_path / "unlabelled"], SIZE, workers=1)
    assert "unknown-label" in ei.value.message and "labels CSV" in ei.value.hint
    with pytest.raises(FedxrayError, match="image size"):
        prepare([tmp_path / "unlabelled"], 3, workers=1)
    with pytest.raises(FedxrayError, match="label mode"):
        prepare([tmp_path / "unlabelled"], SIZE, label_mode="guess", workers=1)
    assert not list(tmp_path.rglob("*.shard"))


def test_explicit_csv_and_unmatched_rows(tmp_path):
    _png(tmp_path / "imgs" / "a.png", 1)
    _png(tmp_path / "imgs" / "b.png", 2, "bacterial")
    csv = tmp_path / "my-labels.csv"
    csv.write_text(
        "file,label,patient\nimgs/a.png,normal,P1\nimgs/b.png,bacteria,P2\nc.png,viral,P3\n"
    )
    shard, report = prepare([tmp_path / "imgs"], SIZE, secret=SECRET, label_mode=csv, workers=1)
    assert report.kept == {"normal": 1, "bacterial": 1, "viral": 0}
    assert any("1 listed file(s) not found, e.g. c.png" in w for w in report.warnings)
    assert set(shard.patients) == {patient_pseudonym(SECRET, p) for p in ("P1", "P2")}


def test_two_workers_match_one(tmp_path, monkeypatch):
    import fedxray.data.decode as prep_module

    pools = []

    class CountingPool(prep_module.ProcessPoolExecutor):
        def __init__(self, *a, **kw):
            pools.append(kw.get("max_workers"))
            super().__init__(*a, **kw)

    monkeypatch.setattr(prep_module, "ProcessPoolExecutor", CountingPool)
    monkeypatch.setattr(prep_module, "MIN_FILES_PER_WORKER", 1)  # use the pool for 6 files
    _tiny_site(tmp_path / "site", {"cr-mono1-12bit-j2k": 1.0, "png-16bit": 1.0}, n=2)
    seen = []
    one, _ = prepare([tmp_path / "site"], SIZE, secret=SECRET, workers=1)
    two, report = prepare(
        [tmp_path / "site"],
        SIZE,
        secret=SECRET,
        workers=2,
        progress=lambda i, n: seen.append((i, n)),
    )
    assert np.array_equal(one.images, two.images) and np.array_equal(one.labels, two.labels)
    assert list(one.image_ids) == list(two.image_ids)
    assert seen[0] == (0, 6) and seen[-1] == (6, 6) and len(seen) == 7
    assert pools == [2] and report.workers == 2  # the second run really used two processes
    monkeypatch.setattr(prep_module, "MIN_FILES_PER_WORKER", 64)
    _, report = prepare([tmp_path / "site"], SIZE, workers=2)
    assert report.workers == 1 and pools == [2]  # 6 files: not worth starting processes


def test_report_json_and_summary(tmp_path):
    _png(tmp_path / "normal" / "a.png", 1)
    (tmp_path / "normal" / "b.txt").write_text("x")
    shard, report = prepare([tmp_path], SIZE, workers=1)
    d = json.loads(json.dumps(report.to_dict()))
    assert d["images"] == 1 and d["files_seen"] == 2
    assert d["skipped"] == [
        {"path": str(tmp_path / "normal" / "b.txt"), "reason": "not-an-image",
         "message": "not a DICOM, PNG or JPEG image"}
    ]  # fmt: skip
    assert str(tmp_path) not in json.dumps(shard.meta)  # the shard keeps counts only
    write_shard(tmp_path / "s.shard", shard)
    assert read_shard(tmp_path / "s.shard").meta["report"]["skipped"] == {"not-an-image": 1}
