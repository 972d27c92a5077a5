"""Synthetic phantoms and the committed sample_data/ folder."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pydicom
import pytest

from fedxray.data.prep import prepare
from fedxray.errors import FedxrayError
from fedxray.imaging import load_radiograph
from fedxray.sampledata import LABELS, SITES, SiteSpec, generate, render
from fedxray.sampledata.__main__ import main
from fedxray.sampledata.dicom_writer import STYLES

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data"

TINY = {
    "site-1": SiteSpec({"normal": 2, "bacterial": 1, "viral": 1}, dict.fromkeys(STYLES, 1.0),
                       (64, 72), "AA", "TINY HOSPITAL ONE (SYNTHETIC)"),
    "site-2": SiteSpec({"normal": 1, "viral": 2}, {"png-8bit": 1.0, "jpeg": 1.0},
                       (64, 72), "BB", "TINY HOSPITAL TWO (SYNTHETIC)"),
}  # fmt: skip


def test_render_is_deterministic_and_in_range():
    a = render(np.random.default_rng(7), "viral", 90, 80)
    b = render(np.random.default_rng(7), "viral", 90, 80)
    c = render(np.random.default_rng(7), "normal", 90, 80)
    assert a.shape == (90, 80) and a.dtype == np.float32
    assert a.min() >= 0 and a.max() <= 1 and a.std() > 0.1
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    with pytest.raises(ValueError):
        render(np.random.default_rng(0), "covid", 90, 80)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_findings_are_where_they_belong(seed):
    # One seed gives the same child and exposure for every label: differences are findings.
    img = {lab: render(np.random.default_rng(seed), lab, 96, 88) for lab in LABELS}
    extra_b = np.clip(img["bacterial"] - img["normal"], 0, None)
    left, right = extra_b[:, :44].sum(), extra_b[:, 44:].sum()
    assert max(left, right) > 30 and min(left, right) < 0.05 * max(left, right)  # one lung
    assert (img["bacterial"] > img["normal"] - 1e-3).all()  # consolidation only adds density
    extra_v = np.clip(img["viral"] - img["normal"], 0, None)
    assert extra_v[:, :44].sum() > 30 and extra_v[:, 44:].sum() > 30  # both lungs


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def test_generate_is_deterministic_and_complete(tmp_path):
    written = generate(tmp_path / "a", seed=3, sites=TINY)
    generate(tmp_path / "b", seed=3, sites=TINY)
    a, b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert a == b
    assert "README.md" in a and "site-1/labels.csv" in a
    for name, spec in TINY.items():
        rows = list(csv.DictReader((tmp_path / "a" / name / "labels.csv").open()))
        assert sorted(r["file"] for r in rows) == sorted(p.name for p in written[name])
        counts = {lab: sum(r["label"] == lab for r in rows) for lab in LABELS}
        assert counts == {lab: spec.counts.get(lab, 0) for lab in LABELS}
    generate(tmp_path / "c", seed=4, sites=TINY)
    assert _tree(tmp_path / "c") != a


def test_every_style_decodes_and_carries_fake_identities(tmp_path):
    written = generate(tmp_path, seed=1, sites={"s": TINY["site-1"]})
    for p in written["s"]:
        r = load_radiograph(p, 32)
        assert r.pixels.std() > 20, p.name
        if p.suffix == ".dcm":
            ds = pydicom.dcmread(p, force=True)
            assert "^" in str(ds.PatientName) and ds.PatientID.startswith("AA")
            assert ds.AccessionNumber.startswith("ACC") and "SYNTHETIC" in ds.InstitutionName
            assert r.patient_token == ds.PatientID


def test_refuses_to_overwrite_without_force(tmp_path):
    generate(tmp_path, seed=1, sites={"s": TINY["site-2"]})
    with pytest.raises(FedxrayError, match="not empty"):
        generate(tmp_path, seed=2, sites={"s": TINY["site-2"]})
    (tmp_path / "s" / "stale.png").write_bytes(b"old")
    generate(tmp_path, seed=2, sites={"s": TINY["site-2"]}, force=True)
    assert not (tmp_path / "s" / "stale.png").exists()


def test_command_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("fedxray.sampledata.sites.SITES", {"s": TINY["site-2"]})
    assert main([str(tmp_path), "--seed", "2"]) == 0
    assert "3 images" in capsys.readouterr().out
    assert main([str(tmp_path)]) == 1
    assert "--force" in capsys.readouterr().err


# ---- the committed sample_data/ ----------------------------------------------------------

needs_sample = pytest.mark.skipif(not SAMPLE.is_dir(), reason="sample_data/ not generated")


@needs_sample
def test_committed_sample_data_layout():
    for name, spec in SITES.items():
        folder = SAMPLE / name
        rows = list(csv.DictReader((folder / "labels.csv").open()))
        files = sorted(p.name for p in folder.iterdir() if p.name != "labels.csv")
        assert sorted(r["file"] for r in rows) == files
        assert {lab: sum(r["label"] == lab for r in rows) for lab in LABELS} == spec.counts
    total = sum(p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file())
    assert total < 8_000_000


def test_sample_sites_are_never_too_small_for_prep():
    """The phantoms' size ranges stay above prep's minimum, whatever the seed."""
    from fedxray.imaging.plausibility import MIN_SHORT_SIDE
    from fedxray.sampledata.dicom_writer import STYLES
    from fedxray.sampledata.sites import WIDTH_RATIO

    for spec in SITES.values():
        factor = min(STYLES[style].size_factor for style in spec.styles)
        assert int(int(spec.rows[0] * factor) * WIDTH_RATIO[0]) >= MIN_SHORT_SIDE


@needs_sample
def test_sample_site_preps_without_label_option():
    shard, report = prepare([SAMPLE / "hospital-c"], 32, workers=1)
    assert report.kept == SITES["hospital-c"].counts and not report.skipped
    assert shard.patients is not None and shard.num_patients < len(shard)


@needs_sample
@pytest.mark.slow
def test_sample_data_is_learnable():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    sites = ("hospital-a", "hospital-b", "hospital-c")
    train = [prepare([SAMPLE / s], 32, workers=1)[0] for s in sites]
    test, _ = prepare([SAMPLE / "test"], 32, workers=1)
    x = np.concatenate([s.images.reshape(len(s), -1) for s in train]) / 255.0
    y = np.concatenate([s.labels for s in train])
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=2000)).fit(x, y)
    accuracy = (clf.predict(test.images.reshape(len(test), -1) / 255.0) == test.labels).mean()
    assert accuracy > 0.6  # chance is 1/3; a linear model on 32x32 pixels reached 0.93
