"""`fedxray evaluate` and `fedxray predict` end to end, on a tiny federation and PNG files."""

from __future__ import annotations

import csv
import io
import json
import shutil
import stat
import sys

import numpy as np
import pytest

from fedxray import keys
from fedxray.data.prep import prepare
from fedxray.data.pseudonym import image_id, site_secret
from fedxray.data.shard import Shard
from fedxray.data.shard_io import read_shard, write_shard
from fedxray.errors import EXIT_ERROR, EXIT_VERIFY
from fedxray.evaluation import evaluate
from fedxray.evaluation.inference import predict_proba
from fedxray.modelfile import build_model_artifact
from fedxray.models.registry import build_model, load_numpy_state, state_to_numpy
from fedxray.plan import create_plan, plan_from_bytes
from fedxray.settings import make_settings
from tests.cli_helpers import assert_clean_error, run_cli
from tests.images import phantom_png

CLASSES = ["normal", "bacterial", "viral"]
SIZE = 32


def _png(path, rng, shape):
    phantom_png(path, int(rng.integers(1 << 30)), shape)


def _federation(folder, seed=0):
    """(plan, plan bytes, model bytes, site-a identity) of a fresh 3-site federation."""
    coord = keys.generate("coordinator")
    sites = [keys.generate(f"hosp-{s}") for s in "abc"]
    settings = make_settings({"model": {"arch": "smallcnn", "image_size": SIZE}})
    plan_bytes = create_plan("demo", coord, [s.public for s in sites], settings)
    plan = plan_from_bytes(plan_bytes)
    weights = state_to_numpy(build_model("smallcnn", SIZE, len(CLASSES), seed=seed))
    model_bytes = build_model_artifact(
        plan, round_number=1, weights=weights, parent=plan.digest, provenance={}, signer=coord
    ).data
    return plan, plan_bytes, model_bytes, sites[0]


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    d = tmp_path_factory.mktemp("evalfed")
    plan, plan_bytes, model_bytes, site = _federation(d)
    (d / "demo.plan").write_bytes(plan_bytes)
    (d / "round-0001.model").write_bytes(model_bytes)
    keys.save_private_key(site, d / "hosp-a.key")
    rng = np.random.default_rng(7)
    images = d / "test-images"
    # Kermany-style names: patients come from the file names, several images per patient.
    for p in range(4):
        for j in range(2):
            _png(images / "NORMAL" / f"IM-{p:04d}-{j:04d}.png", rng, (70 + 3 * p, 66))
    for p in range(6):
        kind = "bacteria" if p % 2 else "virus"
        for j in range(2):
            _png(images / "PNEUMONIA" / f"person{p}_{kind}_{j}.png", rng, (72, 64 + 2 * j))
    secret = site_secret(site)
    shard, _ = prepare([images], image_size=SIZE, classes=CLASSES, secret=secret, workers=1)
    write_shard(d / "test.shard", shard)
    model = build_model("smallcnn", SIZE, len(CLASSES))
    from fedxray.modelfile import load_model_artifact

    tensors = load_model_artifact(model_bytes, plan).tensors
    load_numpy_state(model, {k: np.array(v) for k, v in tensors.items()})
    probs = predict_proba(model, shard.images)
    return {
        "dir": d,
        "plan": plan,
        "model": d / "round-0001.model",
        "shard": d / "test.shard",
        "key": d / "hosp-a.key",
        "images": images,
        "secret": secret,
        "probs": probs,
        "net": model,
    }


def _json(r):
    assert r.code == 0, r.err
    return json.loads(r.out)


# ---- evaluate ---------------------------------------------------------------------------


def test_evaluate_json_equals_library_and_finds_plan_next_to_model(fed):
    doc = _json(run_cli("evaluate", fed["model"], fed["shard"], "--bootstrap", "40", "--json"))
    shard = read_shard(fed["shard"])
    want = evaluate(shard.labels, fed["probs"], CLASSES, groups=shard.patients, n_boot=40)
    want = want.to_dict()
    assert doc["metrics"] == want["metrics"]
    assert doc["per_class"] == want["per_class"]
    assert doc["confusion_matrix"] == want["confusion_matrix"]
    assert doc["model"]["plan"].endswith("demo.plan")
    assert doc["model"]["round"] == 1 and doc["model"]["federation"] == "demo"
    assert doc["n_images"] == 20 and doc["n_patients"] == 10
    assert doc["bootstrap"]["unit"] == "patient" and doc["bootstrap"]["resamples"] == 40
    assert doc["reader"] is None and doc["plots"] is None


def test_evaluate_bootstrap_is_seeded(fed):
    args = ("evaluate", fed["model"], fed["shard"], "--bootstrap", "30", "--json")
    a = _json(run_cli(*args, "--seed", "5"))["metrics"]
    b = _json(run_cli(*args, "--seed", "5"))["metrics"]
    c = _json(run_cli(*args, "--seed", "6"))["metrics"]
    assert a == b
    assert a != c
    assert {k: v["value"] for k, v in a.items()} == {k: v["value"] for k, v in c.items()}


def test_evaluate_table_goes_to_stderr(fed):
    r = run_cli(
        "evaluate",
        fed["model"],
        fed["shard"],
        "--bootstrap",
        "20",
        "--plan",
        fed["dir"] / "demo.plan",
    )
    assert r.code == 0, r.err
    assert r.out == ""
    for text in ("balanced accuracy", "95% CI", "20 patient resamples", "confusion matrix"):
        assert text in r.err
    assert "per class" in r.err and "viral" in r.err


def _reads(fed, tmp_path, by_file: bool, prefix: str = ""):
    """A reader who is right except on every third image; returns (csv path, labels [N])."""
    shard = read_shard(fed["shard"])
    rel = {}
    for path in sorted(fed["images"].rglob("*.png")):
        r = path.relative_to(fed["images"]).as_posix()
        rel[image_id(fed["secret"], r)] = r
    labels = shard.labels.copy()
    labels[::3] = (labels[::3] + 1) % 3
    rows = ["file,label" if by_file else "image_id,label"]
    for i, iid in enumerate(shard.image_ids):
        key = prefix + rel[str(iid)] if by_file else str(iid)
        rows.append(f"{key},{CLASSES[labels[i]].upper() if i % 2 else CLASSES[labels[i]]}")
    path = tmp_path / "reads.csv"
    path.write_text("\n".join(rows) + "\n")
    return path, labels


def test_reference_by_file_name_through_the_site_key(fed, tmp_path):
    # Paths as written from a parent folder still match (leading folders are dropped).
    reads, reader = _reads(fed, tmp_path, by_file=True, prefix="archive/test-images/")
    doc = _json(
        run_cli(
            "evaluate", fed["model"], fed["shard"], "--reference", reads, "--key", fed["key"],
            "--bootstrap", "20", "--json",
        )
    )  # fmt: skip
    shard = read_shard(fed["shard"])
    y = shard.labels
    model_right = fed["probs"].argmax(axis=1) == y
    reader_right = reader == y
    rd = doc["reader"]
    assert rd["n_images"] == 20 and rd["n_unread"] == 0
    assert rd["metrics"]["accuracy"]["reader"]["value"] == pytest.approx(reader_right.mean())
    assert rd["metrics"]["accuracy"]["model"]["value"] == pytest.approx(model_right.mean())
    assert rd["mcnemar"]["model_right_reader_wrong"] == int((model_right & ~reader_right).sum())
    assert rd["mcnemar"]["model_wrong_reader_right"] == int((~model_right & reader_right).sum())
    assert (
        rd["reader_confusion_matrix"]
        == np.bincount(y * 3 + reader, minlength=9).reshape(3, 3).tolist()
    )

    table = run_cli(
        "evaluate", fed["model"], fed["shard"], "--reference", reads, "--key", fed["key"],
        "--bootstrap", "0",
    )  # fmt: skip
    assert table.code == 0, table.err
    assert "model and reader" in table.err and "McNemar" in table.err


def test_reference_by_image_id_needs_no_key_and_by_file_does(fed, tmp_path, monkeypatch):
    monkeypatch.delenv("FEDXRAY_KEY", raising=False)
    reads, _ = _reads(fed, tmp_path, by_file=False)
    base = ("evaluate", fed["model"], fed["shard"], "--bootstrap", "0", "--json")
    doc = _json(run_cli(*base, "--reference", reads))
    assert doc["reader"]["n_images"] == 20 and doc["reference"] == str(reads)

    by_file, _ = _reads(fed, tmp_path, by_file=True)
    r = run_cli(*base, "--reference", by_file)
    assert r.code == EXIT_ERROR and json.loads(r.out)["exit_code"] == EXIT_ERROR
    assert r.err.startswith("fedxray: error:") and "--key" in r.err

    # Another site's key hashes the paths differently: nothing matches, and it says so.
    other = tmp_path / "other.key"
    keys.save_private_key(keys.generate("hosp-z"), other)
    r = run_cli(*base, "--reference", by_file, "--key", other)
    assert r.code == EXIT_ERROR and "match no image" in r.err


def test_reads_of_images_prep_dropped_as_duplicates_are_a_note_not_a_refusal(fed, tmp_path):
    """A published test set read in full: prep kept one copy of a duplicate pair."""
    folder = tmp_path / "test-set"
    for i, name in enumerate(("NORMAL/a.png", "NORMAL/b.png", "PNEUMONIA/person1_virus_1.png")):
        phantom_png(folder / name, 100 + i)
    shutil.copy(folder / "NORMAL" / "a.png", folder / "NORMAL" / "z-copy.png")
    shard, _ = prepare([folder], image_size=SIZE, classes=CLASSES, secret=fed["secret"], workers=1)
    assert len(shard) == 3 and len(shard.duplicate_ids) == 1
    write_shard(tmp_path / "t.shard", shard)
    reads = tmp_path / "reads.csv"
    rows = ["NORMAL/a.png,normal", "NORMAL/z-copy.png,normal", "NORMAL/b.png,viral"]
    reads.write_text("file,label\n" + "\n".join(rows) + "\n")
    base = ("evaluate", fed["model"], tmp_path / "t.shard", "--bootstrap", "0", "--key", fed["key"])
    doc = _json(run_cli(*base, "--reference", reads, "--json"))
    assert doc["reader"]["n_images"] == 2 and doc["reader"]["n_unread"] == 1
    note = doc["reader"]["notes"][0]
    assert "1 row(s) name images prep left out as exact duplicates" in note
    assert "line 3 'NORMAL/z-copy.png'" in note
    table = run_cli(*base, "--reference", reads)
    assert table.code == 0 and "left out as exact duplicates" in table.err
    # A row naming no image at all is still an error (a typo must not pass as a duplicate).
    reads.write_text("file,label\nNORMAL/a.png,normal\nNORMAL/typo.png,viral\n")
    r = run_cli(*base, "--reference", reads)
    assert_clean_error(r, EXIT_ERROR, "1 row(s) match no image", "typo.png")


def test_plan_discovery_and_verification(fed, tmp_path):
    alone = tmp_path / "round-0001.model"
    shutil.copy(fed["model"], alone)
    r = run_cli("evaluate", alone, fed["shard"], "--bootstrap", "0")
    assert r.code == EXIT_ERROR
    assert "no plan of the model's federation" in r.err and "--plan" in r.err

    # A plan of another federation beside the model is not taken for its own.
    _, other_plan, _, _ = _federation(tmp_path, seed=1)
    (tmp_path / "other.plan").write_bytes(other_plan)
    assert (
        "no plan of the model's federation"
        in run_cli("evaluate", alone, fed["shard"], "--bootstrap", "0").err
    )
    # ...and naming it explicitly is a verification failure.
    r = run_cli("evaluate", alone, fed["shard"], "--plan", tmp_path / "other.plan")
    assert r.code == EXIT_VERIFY and "federation" in r.err

    data = bytearray(fed["model"].read_bytes())
    data[-5] ^= 0xFF
    bad = tmp_path / "bad.model"
    bad.write_bytes(bytes(data))
    r = run_cli("evaluate", bad, fed["shard"], "--plan", fed["dir"] / "demo.plan")
    assert r.code == EXIT_VERIFY and "Traceback" not in r.err


def test_shard_must_fit_the_model(fed, tmp_path):
    n = 4
    rng = np.random.default_rng(0)
    labels = np.array([0, 1, 2, 0])
    big = Shard(rng.integers(0, 255, (n, 48, 48), dtype=np.uint8), labels, CLASSES, 48)
    write_shard(tmp_path / "big.shard", big)
    r = run_cli("evaluate", fed["model"], tmp_path / "big.shard")
    assert r.code == EXIT_ERROR and "48 px" in r.err and "--image-size 32" in r.err
    assert "--image-size" in run_cli("prep", "--help").out  # the hint names a flag prep takes

    def pixels():
        return rng.integers(0, 255, (n, SIZE, SIZE), dtype=np.uint8)

    two = Shard(pixels(), np.array([0, 1, 1, 0]), ["normal", "pneumonia"], SIZE)
    write_shard(tmp_path / "two.shard", two)
    r = run_cli("evaluate", fed["model"], tmp_path / "two.shard")
    assert r.code == EXIT_ERROR and "pneumonia" in r.err and "normal, bacterial, viral" in r.err

    # The same classes in another order are relabelled, not refused.
    shuffled = Shard(pixels(), np.array([0, 1, 2, 2]), ["viral", "normal", "bacterial"], SIZE)
    write_shard(tmp_path / "shuffled.shard", shuffled)
    doc = _json(
        run_cli("evaluate", fed["model"], tmp_path / "shuffled.shard", "--bootstrap", "0", "--json")
    )
    assert [row["support"] for row in doc["per_class"].values()] == [1, 2, 1]


def test_plots_and_missing_matplotlib(fed, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    out = tmp_path / "plots"
    doc = _json(
        run_cli(
            "evaluate", fed["model"], fed["shard"], "--bootstrap", "0", "--plots", out, "--json"
        )
    )
    names = sorted(p.name for p in out.iterdir())
    assert names == ["confusion_matrix.png", "roc_binary.png", "roc_per_class.png"]
    assert sorted(doc["plots"]) == sorted(str(out / n) for n in names)
    assert all((out / n).read_bytes().startswith(b"\x89PNG") for n in names)
    # Existing plots are not overwritten without --force, and that is known before any work.
    r = run_cli("evaluate", fed["model"], fed["shard"], "--plots", out)
    assert r.code == EXIT_ERROR and "--force" in r.err

    for mod in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, mod, None)
    r = run_cli(
        "evaluate", fed["model"], fed["shard"], "--bootstrap", "0", "--plots", tmp_path / "p2"
    )
    assert r.code == 0
    assert "fedxray[plots]" in r.err and "balanced accuracy" in r.err
    assert not (tmp_path / "p2").exists()


# ---- predict ----------------------------------------------------------------------------


def _shard_row_of(fed, path):
    shard = read_shard(fed["shard"])
    rel = path.relative_to(fed["images"]).as_posix()
    return list(shard.image_ids).index(image_id(fed["secret"], rel))


def test_predict_csv_and_json_equal_the_shard_probabilities(fed):
    r = run_cli("predict", fed["model"], fed["images"], "--batch-size", "3")
    assert r.code == 0, r.err
    rows = list(csv.reader(io.StringIO(r.out)))
    assert rows[0] == ["path", "predicted", "p_normal", "p_bacterial", "p_viral", "confidence",
                       "ood", "ood_reasons", "error"]  # fmt: skip
    assert len(rows) == 21
    from pathlib import Path

    seen = set()
    for row in rows[1:]:
        i = _shard_row_of(fed, Path(row[0]))
        seen.add(i)
        got = np.array([np.float32(x) for x in row[2:5]])
        assert np.array_equal(got, fed["probs"][i]), row
        assert row[1] == CLASSES[int(fed["probs"][i].argmax())] and row[8] == ""
    assert seen == set(range(20))

    j = run_cli("predict", fed["model"], fed["images"] / "NORMAL", fed["images"], "--json")
    assert j.code == 0, j.err
    lines = [json.loads(x) for x in j.out.splitlines()]
    assert len(lines) == 20  # a file reached twice is predicted once
    for obj in lines:
        i = _shard_row_of(fed, Path(obj["path"]))
        got = np.array([np.float32(obj["probabilities"][c]) for c in CLASSES])
        assert np.array_equal(got, fed["probs"][i])
        assert obj["error"] is None and obj["predicted"] == CLASSES[int(got.argmax())]


def _dicom(path, patient_name: str, patient_id: str):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.Modality = "CR"
    ds.Rows, ds.Columns = 40, 36
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.random.default_rng(1).integers(0, 256, (40, 36), dtype=np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_predict_reports_and_skips_unusable_files(fed, tmp_path):
    d = tmp_path / "incoming"
    d.mkdir()
    shutil.copy(next(fed["images"].rglob("*.png")), d / "a.png")
    _dicom(d / "b.dcm", "Doe^Jane", "PID-4711")
    (d / "c.txt").write_text("not an image")
    (d / "d.png").write_bytes(b"")
    (d / "e.png").symlink_to("e.png")  # a link to itself: reported, not a crash
    shutil.copy(d / "a.png", d / ".hidden.png")
    out = tmp_path / "pred.csv"
    r = run_cli("predict", fed["model"], d, "-o", out)
    assert r.code == 0, r.err
    assert r.out == ""
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [row["path"] for row in rows] == [
        str(d / n) for n in ("a.png", "b.dcm", "c.txt", "d.png", "e.png")
    ]
    assert [row["error"] for row in rows] == ["", "", "not-an-image", "unreadable", "unreadable"]
    assert (
        rows[1]["predicted"] in CLASSES and rows[2]["predicted"] == "" and rows[2]["p_viral"] == ""
    )
    assert "skipped" in r.err and "c.txt" in r.err and "empty file" in r.err
    assert "classified 2 image(s), skipped 3 file(s)" in r.err
    text = out.read_text()
    assert "Doe" not in text and "PID-4711" not in text

    r2 = run_cli("predict", fed["model"], d, "-o", out)
    assert r2.code == EXIT_ERROR and "--force" in r2.err
    assert run_cli("predict", fed["model"], d, "-o", out, "--force", "-q").code == 0


def test_predict_with_nothing_usable_writes_nothing(fed, tmp_path):
    junk = tmp_path / "notes.txt"
    junk.write_text("hello")
    r = run_cli("predict", fed["model"], junk)
    assert r.code == EXIT_ERROR and r.out == ""
    assert r.err.startswith(f"fedxray: error: {junk}: not a DICOM, PNG or JPEG image")
    out = tmp_path / "o.csv"
    (tmp_path / "empty.png").write_bytes(b"")
    r = run_cli("predict", fed["model"], junk, tmp_path / "empty.png", "-o", out)
    assert r.code == EXIT_ERROR and "none of the 2 files" in r.err and not out.exists()
    r = run_cli("predict", fed["model"], junk, junk.parent / "missing.png", "-o", out)
    assert r.code == EXIT_ERROR and "input not found" in r.err and not out.exists()
    r = run_cli("predict", fed["model"], junk, "--device", "tpu9")
    assert r.code == EXIT_ERROR and "unknown device" in r.err


@pytest.mark.shared_data
def test_predict_real_dicoms_through_the_prep_pipeline(fed, shared_data):
    import pydicom

    from fedxray.imaging import load_radiograph

    chest = shared_data / "dicom" / "chest"
    r = run_cli("predict", fed["model"], chest, "--json", "--batch-size", "4")
    assert r.code == 0, r.err
    rows = [json.loads(x) for x in r.out.splitlines()]
    files = sorted(p for p in chest.iterdir() if not p.name.startswith("."))
    assert [row["path"] for row in rows] == [str(p) for p in files]
    pixels = np.stack([load_radiograph(p, SIZE).pixels for p in files])
    want = predict_proba(fed["net"], pixels)
    for row, w in zip(rows, want, strict=True):
        got = np.array([np.float32(row["probabilities"][c]) for c in CLASSES])
        assert np.array_equal(got, w)
    # Nothing from the headers reaches the output (patient name and id, at least).
    for p in files:
        ds = pydicom.dcmread(p, stop_before_pixels=True, force=True)
        for value in (str(ds.get("PatientName", "")), str(ds.get("PatientID", ""))):
            if len(value.strip()) >= 3:
                assert value.strip() not in r.out
