"""Faults and natural inputs at `prep`: one clear line or a skip with a reason, nothing left.

Symlink loops, corrupt JPEG 2000 data, labels CSV paths as users write them, folders of
data sets (`prep sample_data`), exact duplicates (--keep-duplicates and like with like).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate, get_frame

from fedxray.data.decode import pixel_digest
from fedxray.data.prep import prepare
from fedxray.data.pseudonym import image_id
from fedxray.data.shard_io import read_shard
from fedxray.errors import EXIT_ERROR
from fedxray.imaging import SkipImage, load_radiograph
from tests.cli_helpers import assert_clean_error, run_cli
from tests.conftest import REPO
from tests.images import phantom_png

SAMPLE = REPO / "sample_data"
SIZE = ("--size", "32", "--workers", "1")


def _report(r) -> dict:
    assert r.code == 0, r.err
    assert "Traceback" not in r.err
    return json.loads(r.out)


def _skips(doc: dict) -> dict[str, tuple[str, str]]:
    return {Path(s["path"]).name: (s["reason"], s["message"]) for s in doc["skipped"]}


# ---- symbolic links ---------------------------------------------------------------------


def test_symlink_loop_inside_an_input_is_a_skip_with_a_reason(tmp_path):
    phantom_png(tmp_path / "in" / "NORMAL" / "a.png", 1)
    (tmp_path / "in" / "NORMAL" / "loop.png").symlink_to("loop.png")
    (tmp_path / "in" / "NORMAL" / "gone.png").symlink_to("nowhere.png")
    out = tmp_path / "x.shard"
    doc = _report(run_cli("prep", tmp_path / "in", "-o", out, *SIZE, "--json"))
    assert doc["images"] == 1 and doc["files_seen"] == 3
    skips = _skips(doc)
    assert skips["loop.png"] == (
        "unreadable",
        "symbolic link loop (the link points back to itself)",
    )
    assert skips["gone.png"][0] == "unreadable" and "broken symbolic link" in skips["gone.png"][1]


def test_symlink_loop_as_the_input_is_one_line_and_writes_nothing(tmp_path):
    (tmp_path / "loop").symlink_to("loop")
    out = tmp_path / "x.shard"
    r = run_cli("prep", tmp_path / "loop", "-o", out, *SIZE)
    assert_clean_error(r, EXIT_ERROR, "symbolic link loop", str(tmp_path / "loop"))
    assert not out.exists()
    (tmp_path / "dangling").symlink_to(tmp_path / "missing-folder")
    r = run_cli("prep", tmp_path / "dangling", "-o", out, *SIZE)
    assert_clean_error(r, EXIT_ERROR, "broken symbolic link", "missing-folder")
    assert not out.exists()


# ---- damaged JPEG 2000 -----------------------------------------------------------------


def _j2k_sample() -> Path:
    for p in sorted((SAMPLE / "hospital-a").glob("*.dcm")):
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        if ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.91":  # JPEG 2000
            return p
    raise AssertionError("no JPEG 2000 file in sample_data/hospital-a")


@pytest.mark.skipif(not SAMPLE.is_dir(), reason="sample_data/ not generated")
def test_truncated_jpeg2000_fragment_is_corrupt_not_unsupported(tmp_path):
    src = _j2k_sample()
    folder = tmp_path / "in" / "NORMAL"
    folder.mkdir(parents=True)
    shutil.copy(src, folder / "whole.dcm")
    ds = pydicom.dcmread(src)
    frame = get_frame(ds.PixelData, 0, number_of_frames=1)
    for name, data in [
        ("cut-in-half.dcm", frame[: len(frame) // 2]),
        ("end-marker-lost.dcm", frame[:-2]),
        ("no-header.dcm", b"\x00" * 64 + frame[64:]),
    ]:
        ds.PixelData = encapsulate([data])
        ds.save_as(folder / name)
    for name, words in [
        ("cut-in-half.dcm", "JPEG 2000 codestream is cut short"),
        ("end-marker-lost.dcm", "JPEG 2000 codestream is cut short"),
        ("no-header.dcm", "does not start with a JPEG 2000 header"),
    ]:
        with pytest.raises(SkipImage) as ei:
            load_radiograph(folder / name, 32)
        assert ei.value.reason == "unreadable", ei.value.message
        assert words in ei.value.message and "gdcmconv" not in ei.value.message
    doc = _report(run_cli("prep", tmp_path / "in", "-o", tmp_path / "x.shard", *SIZE, "--json"))
    assert doc["images"] == 1
    assert {n: reason for n, (reason, _) in _skips(doc).items()} == {
        "cut-in-half.dcm": "unreadable",
        "end-marker-lost.dcm": "unreadable",
        "no-header.dcm": "unreadable",
    }


# ---- labels CSV paths ------------------------------------------------------------------


@pytest.fixture
def unlabelled(tmp_path) -> tuple[Path, list[str]]:
    """An input folder without labels; a CSV elsewhere must name its files."""
    data = tmp_path / "data" / "train"
    rels = ["a/one.png", "a/two.png", "b/three.png"]
    for i, rel in enumerate(rels):
        phantom_png(data / rel, i)
    (tmp_path / "labels").mkdir()
    return data, rels


@pytest.mark.parametrize("spelling", ["absolute", "input-relative", "csv-relative", "windows"])
def test_labels_csv_paths_as_users_write_them(unlabelled, tmp_path, spelling):
    data, rels = unlabelled
    csv_path = tmp_path / "labels" / "train.csv"
    names = {
        "absolute": [str(data / r) for r in rels],
        "input-relative": rels,
        "csv-relative": [f"../data/train/{r}" for r in rels],
        "windows": [r.replace("/", "\\") for r in rels],
    }[spelling]
    labels = ["normal", "viral", "bacterial"]
    rows = "".join(f"{n},{c}\n" for n, c in zip(names, labels, strict=True))
    csv_path.write_text("file,label\n" + rows)
    args = ("-o", tmp_path / "x.shard", *SIZE, "--labels", csv_path, "--json")
    doc = _report(run_cli("prep", data, *args))
    assert doc["kept"] == {"normal": 1, "bacterial": 1, "viral": 1}, doc
    assert doc["skipped"] == [] and doc["warnings"] == []


def test_labels_csv_absolute_path_elsewhere_matches_nothing(unlabelled, tmp_path):
    data, rels = unlabelled
    csv_path = tmp_path / "labels" / "train.csv"
    csv_path.write_text(f"file,label\n/elsewhere/{rels[0]},normal\n{rels[1]},viral\n")
    doc = _report(
        run_cli("prep", data, "-o", tmp_path / "x.shard", *SIZE, "--labels", csv_path, "--json")
    )
    assert doc["images"] == 1
    assert any("1 listed file(s) not found" in w for w in doc["warnings"])


# ---- a folder of data sets ---------------------------------------------------------------


def test_folder_of_data_sets_names_the_inputs_to_give(tmp_path):
    for site in ("east", "west"):
        phantom_png(tmp_path / "all" / site / "x.png", hash(site) % 100)
        (tmp_path / "all" / site / "labels.csv").write_text("file,label\nx.png,normal\n")
    out = tmp_path / "x.shard"
    r = run_cli("prep", tmp_path / "all", "-o", out, *SIZE)
    assert_clean_error(r, EXIT_ERROR, "no labels.csv at its top", str(tmp_path / "all" / "east"))
    assert str(tmp_path / "all" / "west") in r.err and "give those folders as inputs" in r.err
    assert not out.exists()
    # Doing what the hint says works, each sub-folder with its own labels.
    inputs = (tmp_path / "all" / "east", tmp_path / "all" / "west")
    doc = _report(run_cli("prep", *inputs, "-o", out, *SIZE, "--json"))
    assert doc["kept"]["normal"] == 2


@pytest.mark.skipif(not SAMPLE.is_dir(), reason="sample_data/ not generated")
def test_prep_sample_data_says_which_input_to_give(tmp_path):
    out = tmp_path / "x.shard"
    r = run_cli("prep", SAMPLE, "-o", out, *SIZE)
    assert_clean_error(r, EXIT_ERROR, "4 sub-folder(s)", str(SAMPLE / "hospital-a"))
    assert not out.exists()


# ---- duplicates --------------------------------------------------------------------------


def test_duplicates_are_compared_like_with_like():
    black = np.zeros((32, 32), np.uint8)
    assert pixel_digest(black, (1, 1)) != pixel_digest(black, (1, 500))
    assert pixel_digest(black, (1, 500)) == pixel_digest(black.copy(), (1, 500))


def test_keep_duplicates_keeps_every_copy_and_says_so(tmp_path):
    src = phantom_png(tmp_path / "in" / "NORMAL" / "a.png", 3)
    shutil.copy(src, tmp_path / "in" / "NORMAL" / "b-copy.png")
    shutil.copy(src, tmp_path / "in" / "NORMAL" / "c-copy.png")
    phantom_png(tmp_path / "in" / "NORMAL" / "d.png", 4)
    out = tmp_path / "x.shard"
    doc = _report(run_cli("prep", tmp_path / "in", "-o", out, *SIZE, "--json"))
    assert doc["images"] == 2 and doc["skipped_counts"] == {"duplicate": 2}
    assert read_shard(out).duplicate_ids is not None
    assert len(read_shard(out).duplicate_ids) == 2

    r = run_cli("prep", tmp_path / "in", "-o", out, *SIZE, "--json", "--keep-duplicates", "--force")
    doc = _report(r)
    assert doc["images"] == 4 and doc["skipped"] == []
    assert any("2 exact duplicate(s) kept" in w for w in doc["warnings"])
    shard = read_shard(out)
    assert len(shard) == 4 and shard.duplicate_ids is None
    assert shard.meta["format"] == 1  # nothing new to store: older readers still read it


def test_dropped_duplicates_keep_their_keyed_ids(tmp_path):
    src = phantom_png(tmp_path / "in" / "NORMAL" / "a.png", 5)
    shutil.copy(src, tmp_path / "in" / "NORMAL" / "z-copy.png")
    secret = os.urandom(32)
    shard, report = prepare([tmp_path / "in"], 32, secret=secret, workers=1)
    assert list(shard.image_ids) == [image_id(secret, "NORMAL/a.png")]
    assert list(shard.duplicate_ids) == [image_id(secret, "NORMAL/z-copy.png")]
    assert report.skipped_counts() == {"duplicate": 1}
