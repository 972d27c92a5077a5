"""Label sources: folder names, labels CSV, Kermany file names."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedxray.data.labels import (
    CsvLabeler,
    FolderLabeler,
    KermanyLabeler,
    check_classes,
    kermany_name,
    make_labeler,
    resolve_label,
)
from fedxray.errors import FedxrayError

THREE = ["normal", "bacterial", "viral"]
TWO = ["normal", "pneumonia"]


@pytest.mark.parametrize(
    ("word", "classes", "expected"),
    [
        ("NORMAL", THREE, "normal"),
        ("Healthy", THREE, "normal"),
        ("bacteria", THREE, "bacterial"),
        ("Viral Pneumonia", THREE, "viral"),
        ("viral-pneumonia", THREE, "viral"),
        ("PNEUMONIA", THREE, None),  # ambiguous for a three-class plan
        ("PNEUMONIA", TWO, "pneumonia"),
        ("bacterial", TWO, "pneumonia"),  # both kinds fall into a single pneumonia class
        ("virus", TWO, "pneumonia"),
        ("covid", THREE, None),
        ("covid", ["normal", "covid"], "covid"),  # a plan's own class names always work
        ("train", THREE, None),
    ],
)
def test_resolve_label(word, classes, expected):
    assert resolve_label(word, classes) == expected


def test_check_classes():
    assert check_classes(("normal", "viral")) == ["normal", "viral"]
    for bad in (["normal"], ["a", "a"], ["Normal", "x"], ["", "x"]):
        with pytest.raises(FedxrayError):
            check_classes(bad)


@pytest.mark.parametrize(
    ("name", "label", "patient"),
    [
        ("person1000_bacteria_2931.jpeg", "bacterial", "person1000"),
        ("person12_virus_44.jpeg", "viral", "person12"),
        ("IM-0117-0001.jpeg", None, "IM-0117"),
        ("NORMAL2-IM-0095-0001.jpeg", None, "NORMAL2-IM-0095"),
        ("NORMAL2-IM-0095-0001.png", None, "NORMAL2-IM-0095"),
        ("NORMAL2-IM-0587-0001-0002.jpeg", None, "NORMAL2-IM-0587"),
        ("person447_virus_921_1.jpeg", "viral", "person447"),
    ],
)
def test_kermany_names(name, label, patient):
    k = kermany_name(name)
    assert k is not None and k.label == label and k.patient == patient


@pytest.mark.parametrize(
    "name", ["scan1.jpeg", "person_bacteria_1.jpeg", "person1_virus.jpeg", "IM-0117.jpeg", "x.dcm"]
)
def test_not_kermany_names(name):
    assert kermany_name(name) is None


def test_folder_labels(tmp_path):
    lab = FolderLabeler(tmp_path, THREE)
    assert lab(tmp_path / "NORMAL" / "a.png").label == "normal"
    assert lab(tmp_path / "Viral" / "batch-2" / "a.png").label == "viral"  # nearest label folder
    d = lab(tmp_path / "PNEUMONIA" / "person7_virus_3.jpeg")
    assert (d.label, d.name_token) == ("viral", "person7")
    d = lab(tmp_path / "PNEUMONIA" / "scan.jpeg")
    assert d.label is None and "PNEUMONIA" in d.why and "bacterial" in d.why
    d = lab(tmp_path / "misc" / "scan.jpeg")
    assert d.label is None and "no folder" in d.why
    # an explicit folder wins over the file name
    assert lab(tmp_path / "normal" / "person7_virus_3.jpeg").label == "normal"


def test_folder_labels_stop_at_the_input(tmp_path):
    root = tmp_path / "normal" / "incoming"
    assert FolderLabeler(root, THREE)(root / "x.png").label is None
    root = tmp_path / "viral"  # the input folder itself may name the class
    assert FolderLabeler(root, THREE)(root / "x.png").label == "viral"


def test_folder_labels_two_classes(tmp_path):
    lab = FolderLabeler(tmp_path, TWO)
    assert lab(tmp_path / "PNEUMONIA" / "scan.jpeg").label == "pneumonia"
    assert lab(tmp_path / "bacteria" / "scan.jpeg").label == "pneumonia"


def test_kermany_labeler(tmp_path):
    lab = KermanyLabeler(tmp_path, THREE)
    assert lab(tmp_path / "PNEUMONIA" / "person3_bacteria_10.jpeg").label == "bacterial"
    assert lab(tmp_path / "NORMAL" / "IM-0001-0001.jpeg").label == "normal"
    d = lab(tmp_path / "PNEUMONIA" / "IM-0001-0001.jpeg")
    assert d.label is None
    d = lab(tmp_path / "NORMAL" / "scan.jpeg")
    assert d.label is None and "Kermany" in d.why


def _csv(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


def test_csv_labels(tmp_path):
    csv_path = _csv(
        tmp_path / "labels.csv",
        "\ufefffile,label,patient\nsub/a.dcm,Normal,P1\nb.png,virus,\nc.png,pneumonia,P3\n\n",
    )
    lab = CsvLabeler(csv_path, THREE)
    d = lab(tmp_path / "sub" / "a.dcm")
    assert (d.label, d.patient) == ("normal", "P1")
    d = lab(tmp_path / "deeper" / "b.png")  # bare names match anywhere below
    assert (d.label, d.patient) == ("viral", None)
    d = lab(tmp_path / "c.png")
    assert d.label is None and "pneumonia" in d.why
    d = lab(tmp_path / "zzz.png")
    assert d.label is None and "not listed" in d.why
    assert lab.unmatched() == []
    lab2 = CsvLabeler(csv_path, THREE)
    lab2(tmp_path / "b.png")
    assert lab2.unmatched() == ["c.png", "sub/a.dcm"]


def test_csv_semicolons_and_aliases(tmp_path):
    csv_path = _csv(tmp_path / "x.csv", "Filename;Class\nsub\\a.png;bacteria\n")
    assert CsvLabeler(csv_path, THREE)(tmp_path / "sub" / "a.png").label == "bacterial"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("name,diagnosis\na.png,normal\n", "needs columns"),
        ("file,label\n", "no rows"),
        ("file,label\na.png,\n", "line 2"),
        ("file,label\na.png,normal\na.png,viral\n", "listed twice"),
    ],
)
def test_csv_errors(tmp_path, text, fragment):
    csv_path = _csv(tmp_path / "labels.csv", text)
    with pytest.raises(FedxrayError) as ei:
        CsvLabeler(csv_path, THREE)
    assert fragment in ei.value.message


def test_csv_missing_file(tmp_path):
    with pytest.raises(FedxrayError, match="not found"):
        CsvLabeler(tmp_path / "nope.csv", THREE)


def test_make_labeler_auto(tmp_path):
    assert isinstance(make_labeler("auto", tmp_path, THREE), FolderLabeler)
    _csv(tmp_path / "labels.csv", "file,label\na.png,normal\n")
    lab = make_labeler("auto", tmp_path, THREE)
    assert isinstance(lab, CsvLabeler) and lab.csv_path == tmp_path / "labels.csv"
    assert isinstance(make_labeler("folders", tmp_path, THREE), FolderLabeler)
    assert isinstance(make_labeler("kermany", tmp_path, THREE), KermanyLabeler)
    assert isinstance(make_labeler(tmp_path / "labels.csv", tmp_path, THREE), CsvLabeler)
