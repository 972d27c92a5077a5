"""Plausibility checks: junk is refused by the check made for it, real radiographs pass."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedxray.data.prep import prepare
from fedxray.errors import FedxrayError
from fedxray.imaging import ImageFacts, SkipImage, assess, load_radiograph
from fedxray.imaging import plausibility as P
from fedxray.imaging.sniff import read_head, sniff
from tests.images import phantom, phantom_png
from tests.junk import write_junk

SIZE = 32


@pytest.fixture(scope="module")
def junk(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    folder = tmp_path_factory.mktemp("junk") / "NORMAL"  # a label, so that prep decodes them
    return folder, write_junk(folder)


def test_every_junk_file_fails_the_check_made_for_it(junk):
    folder, expect = junk
    assert len(expect) >= 35
    for name, check in expect.items():
        verdict = load_radiograph(folder / name, SIZE).plausibility
        assert not verdict.ok, name
        assert check in [f.check for f in verdict.failures], (name, verdict.message)
        assert verdict.message and "\n" not in verdict.message
        assert json.loads(json.dumps(verdict.to_dict()))["failed"]


def test_prep_skips_junk_with_a_reason_and_keeps_the_phantoms(junk, tmp_path):
    folder, expect = junk
    root = tmp_path / "NORMAL"
    root.mkdir()
    for name in expect:
        (root / name).symlink_to(folder / name)
    for i in range(3):
        phantom_png(root / f"phantom-{i}.png", seed=i)
    shard, report = prepare([tmp_path], SIZE, workers=1)
    assert len(shard) == 3
    skipped = {Path(s.path).name: s for s in report.skipped}
    assert set(skipped) == set(expect)
    for name, s in skipped.items():
        assert s.reason == "implausible", (name, s)
        assert "\n" not in s.message
    assert report.skipped_counts() == {"implausible": len(expect)}
    # the 1x500 strip is no longer the "duplicate" of the 1x1 image: both are refused
    assert skipped["size-1x500-strip.png"].message.startswith("too small for a radiograph")


def test_only_junk_is_an_error_and_says_why(junk):
    folder, expect = junk
    with pytest.raises(FedxrayError, match=rf"all skipped \({len(expect)} implausible\)"):
        prepare([folder], SIZE, workers=1)


def test_pure_checks_on_arrays():
    ok = assess(phantom(0).astype(np.float32), ImageFacts(80, 72))
    assert ok.ok and ok.message == "" and ok.short_side == 72
    assert P.MIN_DETAIL_SHARE < ok.detail_share < P.MAX_DETAIL_SHARE
    blank = assess(np.full((100, 100), 3.0), ImageFacts(100, 100))
    assert [f.check for f in blank.failures] == ["blank"] and blank.detail_share is None
    noise = np.random.default_rng(0).normal(size=(200, 200))
    assert [f.check for f in assess(noise, ImageFacts(200, 200)).failures] == ["noise"]
    # Black padding around noise does not hide it (a ratio of two scales, not a correlation).
    padded = np.zeros((300, 300))
    padded[50:250, 50:250] = noise
    assert "noise" in [f.check for f in assess(padded, ImageFacts(300, 300)).failures]
    ramp = np.tile(np.linspace(0, 1000, 300), (300, 1))
    assert [f.check for f in assess(ramp, ImageFacts(300, 300)).failures] == ["smooth"]
    # A reduced decode (big JPEG): sizes come from the facts, not from the array.
    assert assess(phantom(1).astype(float), ImageFacts(2000, 1800)).ok
    colour = assess(phantom(2).astype(float), ImageFacts(80, 72, colour_share=0.5))
    assert [f.check for f in colour.failures] == ["greyscale"]
    ybr = assess(phantom(3).astype(float), ImageFacts(80, 72, photometric="YBR_FULL"))
    assert [f.check for f in ybr.failures] == ["greyscale"]
    nan = phantom(4).astype(np.float32)
    nan[:5] = np.nan
    assert assess(nan, ImageFacts(80, 72)).ok


def test_statistics_do_not_depend_on_the_model_image_size(tmp_path):
    p = phantom_png(tmp_path / "a.png", seed=5, shape=(120, 100))
    verdicts = {s: load_radiograph(p, s).plausibility for s in (8, 32, 224)}
    assert len({v.to_dict()["detail_share"] for v in verdicts.values()}) == 1


def test_size_threshold_is_inclusive():
    img = phantom(6, shape=(P.MIN_SHORT_SIDE, 90)).astype(float)
    assert assess(img, ImageFacts(P.MIN_SHORT_SIDE, 90)).ok
    small = assess(img[:-1], ImageFacts(P.MIN_SHORT_SIDE - 1, 90))
    assert [f.check for f in small.failures] == ["size"]
    assert f"{90} x {P.MIN_SHORT_SIDE - 1} px" in small.message


# ---- every real image passes --------------------------------------------------------------


def _images(root: Path) -> list[Path]:
    return [p for p in sorted(root.rglob("*")) if p.is_file() and sniff(read_head(p))]


@pytest.mark.shared_data
@pytest.mark.slow
def test_every_real_image_passes_with_a_margin(shared_data):
    """All of kermany224/train, kermany-fullres/train and the DICOMs (about 20 s)."""
    sets = {
        "kermany224": (shared_data / "kermany224" / "train", 5216),
        "fullres": (shared_data / "kermany-fullres" / "train", 120),
        "chest": (shared_data / "dicom" / "chest", 6),
        "other": (shared_data / "dicom" / "other_cr_not_chest", 5),
    }
    verdicts = []
    undecodable = []
    for name, (root, count) in sets.items():
        files = _images(root)
        assert len(files) == count, name
        for p in files:
            try:
                verdicts.append((p, load_radiograph(p, SIZE).plausibility))
            except SkipImage as e:
                undecodable.append((p.name, e.reason))
    failed = [(p, v.message) for p, v in verdicts if not v.ok]
    assert failed == []
    assert len(verdicts) == 5216 + 120 + 6 + 3
    # the two 12-bit JPEG Extended CRs (not chest) cannot be decoded here, as before
    assert sorted(undecodable) == [
        ("nema_wg04_RG2_CR_hip_mono2_jpegextended_lossy.dcm", "undecodable"),
        ("nema_wg04_RG3_CR_tibia_mono1_jpegextended_lossy.dcm", "undecodable"),
    ]
    # The margins docs/data.md quotes: keep them wide, or say why not.
    details = [v.detail_share for _, v in verdicts]
    assert max(details) < 0.75 * P.MAX_DETAIL_SHARE
    assert min(details) > 2 * P.MIN_DETAIL_SHARE
    assert min(v.grey_levels for _, v in verdicts) > 5 * P.MIN_GREY_LEVELS
    assert min(v.short_side for _, v in verdicts) > 3 * P.MIN_SHORT_SIDE
    assert max(v.colour_share for _, v in verdicts) == 0.0
