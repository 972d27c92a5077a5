"""Where labels come from: folder names, a labels CSV, or the Kermany file-name convention.

Every source maps what it finds onto the plan's class names. A word that names no class of
the plan (e.g. PNEUMONIA when the plan separates bacterial from viral) gives no label: the
file is reported, never guessed.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fedxray.errors import FedxrayError
from fedxray.fsio import read_input

LABELS_CSV = "labels.csv"
CLASS_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")

# Words seen in folder names and CSVs, mapped onto canonical class names.
SYNONYMS: dict[str, str] = {
    "normal": "normal",
    "healthy": "normal",
    "no_finding": "normal",
    "nofinding": "normal",
    "negative": "normal",
    "bacterial": "bacterial",
    "bacteria": "bacterial",
    "bacterial_pneumonia": "bacterial",
    "pneumonia_bacterial": "bacterial",
    "viral": "viral",
    "virus": "viral",
    "viral_pneumonia": "viral",
    "pneumonia_viral": "viral",
    "pneumonia": "pneumonia",
    "pneumonias": "pneumonia",
}
# A plan with a single 'pneumonia' class takes both kinds of pneumonia.
_KINDS_OF = {"bacterial": "pneumonia", "viral": "pneumonia"}

# Trailing number groups vary (person447_virus_921_1, NORMAL2-IM-0587-0001-0002).
_KERMANY_PNEUMONIA = re.compile(r"^(person\d+)_(bacteria|virus)(?:_\d+)+\.[A-Za-z0-9]+$", re.I)
_KERMANY_NORMAL = re.compile(r"^((?:NORMAL2-)?IM-\d+)(?:-\d+)+\.[A-Za-z0-9]+$", re.I)


def check_classes(classes: Sequence[str]) -> list[str]:
    """Validate a plan's class list: at least two distinct lower-case names."""
    out = [str(c) for c in classes]
    if len(out) < 2:
        raise FedxrayError("a plan needs at least two classes")
    if len(set(out)) != len(out):
        raise FedxrayError(f"class names repeat: {', '.join(out)}")
    for c in out:
        if not CLASS_NAME_RE.match(c):
            raise FedxrayError(
                f"invalid class name {c!r}",
                hint="use 1-32 lower-case letters, digits, '_' or '-'",
            )
    return out


def _norm(word: str) -> str:
    return re.sub(r"[\s\-]+", "_", word.strip().lower())


def is_label_word(word: str, classes: Sequence[str]) -> bool:
    """Does this folder name or CSV value speak about labels at all?"""
    w = _norm(word)
    return w in classes or w in SYNONYMS


def resolve_label(word: str, classes: Sequence[str]) -> str | None:
    """The class of ``classes`` a folder name or CSV value stands for, or None."""
    w = _norm(word)
    if w in classes:
        return w
    canon = SYNONYMS.get(w)
    if canon is None:
        return None
    for c in classes:
        if SYNONYMS.get(c, c) == canon:
            return c
    general = _KINDS_OF.get(canon)
    if general is not None:
        for c in classes:
            if SYNONYMS.get(c, c) == general:
                return c
    return None


@dataclass(frozen=True)
class KermanyName:
    label: str | None  # 'bacterial' / 'viral' from the name; None for IM-... (folder decides)
    patient: str


def kermany_name(filename: str) -> KermanyName | None:
    """Parse personN_bacteria_K.jpeg, personN_virus_K.jpeg, IM-XXXX-YYYY.jpeg, NORMAL2-IM-..."""
    m = _KERMANY_PNEUMONIA.match(filename)
    if m:
        kind = "bacterial" if m.group(2).lower() == "bacteria" else "viral"
        return KermanyName(kind, m.group(1))
    m = _KERMANY_NORMAL.match(filename)
    if m:
        return KermanyName(None, m.group(1))
    return None


@dataclass(frozen=True)
class LabelDecision:
    """A file's label (None: unknown, ``why`` says so) and the patient tokens found for it."""

    label: str | None
    patient: str | None = None  # given explicitly (CSV patient column): wins over DICOM
    name_token: str | None = None  # from the file name (Kermany): used when nothing better
    why: str | None = None


def _class_list(classes: Sequence[str]) -> str:
    return ", ".join(classes)


class FolderLabeler:
    """Label = the nearest folder (up to and including the input folder) naming a label.

    Kermany file names decide where the folder leaves it open (PNEUMONIA/ in a plan with
    bacterial and viral) or where no folder names a label at all.
    """

    def __init__(self, root: Path, classes: Sequence[str], kermany_names: bool = True):
        self.root = Path(root)
        self.classes = list(classes)
        self.kermany_names = kermany_names
        self.csv_path: Path | None = None

    def _folders(self, path: Path):
        folder = path.parent
        while True:
            yield folder
            if folder == self.root or folder == folder.parent:
                return
            try:
                folder.relative_to(self.root)
            except ValueError:
                return
            folder = folder.parent

    def __call__(self, path: Path, rel: str | None = None) -> LabelDecision:
        k = kermany_name(path.name) if self.kermany_names else None
        token = k.patient if k else None
        # The nearest folder that is a label word decides; the file name when it names none.
        label = resolve_label(k.label, self.classes) if k and k.label else None
        classes = _class_list(self.classes)
        why = f"no folder on its path names one of the classes {classes}"
        for folder in self._folders(path):
            if is_label_word(folder.name, self.classes):
                label = resolve_label(folder.name, self.classes) or label
                why = f"folder '{folder.name}' names none of the classes {classes}"
                break
        if label is not None:
            return LabelDecision(label, name_token=token)
        return LabelDecision(None, name_token=token, why=why)


class KermanyLabeler:
    """Kermany et al. (2018) naming: personN_bacteria_K / personN_virus_K, IM-... in NORMAL/."""

    def __init__(self, root: Path, classes: Sequence[str]):
        self.classes = list(classes)
        self.folders = FolderLabeler(root, classes, kermany_names=False)
        self.csv_path: Path | None = None

    def __call__(self, path: Path, rel: str | None = None) -> LabelDecision:
        k = kermany_name(path.name)
        if k is None:
            return LabelDecision(None, why="file name does not follow the Kermany convention")
        if k.label is not None:
            label = resolve_label(k.label, self.classes)
            if label is None:
                why = f"'{k.label}' is none of the classes {_class_list(self.classes)}"
                return LabelDecision(None, name_token=k.patient, why=why)
            return LabelDecision(label, name_token=k.patient)
        d = self.folders(path)  # IM-XXXX-YYYY files: the NORMAL/ folder says what they are
        return LabelDecision(d.label, name_token=k.patient, why=d.why)


FILE_COLUMNS = ("file", "filename", "path", "image")
LABEL_COLUMNS = ("label", "class", "diagnosis")
PATIENT_COLUMNS = ("patient", "patient_id", "patientid")


def parse_labels_csv(data: bytes, name: str = LABELS_CSV) -> dict[str, tuple[str, str | None]]:
    """A labels CSV's rows: file key -> (label word, patient token or None).

    Columns ``file,label[,patient]`` (or the synonyms in FILE_COLUMNS, LABEL_COLUMNS,
    PATIENT_COLUMNS), separated by comma, semicolon or tab; UTF-8, a BOM is fine. File keys
    are '/'-separated; absolute paths stay absolute (see file_key). Any malformed input
    raises FedxrayError naming the file (and the line), never anything else.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise FedxrayError(f"{name}: not a UTF-8 text file", hint="save it as CSV UTF-8") from None
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise FedxrayError(f"{name}: empty labels file", hint="expected columns file,label")
    delimiter = max(",;\t", key=lines[0].count)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows: dict[str, tuple[str, str | None]] = {}
    try:
        header = [_norm(h) for h in next(reader)]
        col_file = _column(header, FILE_COLUMNS)
        col_label = _column(header, LABEL_COLUMNS)
        col_patient = _column(header, PATIENT_COLUMNS)
        if col_file is None or col_label is None:
            found = ", ".join(shown(h) for h in header if h) or "nothing"
            raise FedxrayError(
                f"{name}: needs columns 'file' and 'label' (found: {found[:200]})",
                hint="the first line must name the columns, e.g. file,label,patient",
            )
        for row in reader:
            line_no = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            cells = row + [""] * (len(header) - len(row))
            key = file_key(cells[col_file])
            label = cells[col_label].strip()
            if not key or not label:
                raise FedxrayError(f"{name}, line {line_no}: file and label must not be empty")
            patient = cells[col_patient].strip() if col_patient is not None else ""
            entry = (label, patient or None)
            if key in rows and rows[key] != entry:
                raise FedxrayError(
                    f"{name}, line {line_no}: {shown(key)} is listed twice, differently"
                )
            rows[key] = entry
    except csv.Error as e:
        raise FedxrayError(f"{name}, line {reader.line_num}: malformed CSV: {e}") from None
    if not rows:
        raise FedxrayError(f"{name}: no rows below the header")
    return rows


def shown(text: str, quote: bool = False, limit: int = 80) -> str:
    """A value from a user's file as it may appear in a one-line message: printable, short."""
    text = text if text.isprintable() else repr(text)[1:-1]
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"'{text}'" if quote else text


def file_key(cell: str) -> str:
    """A CSV's file cell as a lookup key: '/'-separated and normalised ('./', 'a/../').

    Absolute paths (``/data/x.png``, ``C:/data/x.png``) stay absolute, so they only match
    the file at that place; relative ones may climb out of the CSV's folder (``../x.png``).
    """
    p = cell.strip().replace("\\", "/")
    while p:  # to a fixed point: normalising ", /" leaves ", ", which strips to ","
        q = posixpath.normpath(p).strip()
        if q == p:
            break
        p = q
    return p


class CsvLabeler:
    """A CSV with columns file,label[,patient] (see parse_labels_csv).

    A row's file may be an absolute path, a path relative to the CSV's folder, a path
    relative to the input folder prep reads (they differ when the CSV lives elsewhere),
    or a bare file name, which matches that name anywhere.
    """

    def __init__(self, csv_path: Path, classes: Sequence[str]):
        self.csv_path = Path(csv_path)
        self.folder = Path(os.path.abspath(self.csv_path.parent))
        self.classes = list(classes)
        self._used: set[str] = set()
        data = read_input(self.csv_path, what="labels file")
        self.rows = parse_labels_csv(data, str(self.csv_path))

    def _lookup(self, path: Path, rel: str | None) -> str | None:
        """The row naming this file, tried in this order: absolute path (as given, then
        with links resolved), relative to the CSV's folder, relative to the input, bare name.
        """
        absolute = Path(os.path.abspath(path))
        keys = [absolute.as_posix()]
        with contextlib.suppress(OSError, RuntimeError):  # RuntimeError: a symlink loop
            keys.append(path.resolve(strict=True).as_posix())
        with contextlib.suppress(ValueError):  # on Windows: another drive
            keys.append(Path(os.path.relpath(absolute, self.folder)).as_posix())
        if rel is not None:
            keys.append(rel)
        keys.append(path.name)
        return next((k for k in keys if k in self.rows), None)

    def __call__(self, path: Path, rel: str | None = None) -> LabelDecision:
        """Label of ``path``; ``rel`` is its path relative to the input folder, if known."""
        k = kermany_name(path.name)
        token = k.patient if k else None
        key = self._lookup(path, rel)
        if key is None:
            return LabelDecision(None, name_token=token, why=f"not listed in {self.csv_path.name}")
        self._used.add(key)
        word, patient = self.rows[key]
        label = resolve_label(word, self.classes)
        if label is None:
            why = (
                f"label {shown(word, quote=True)} in {self.csv_path.name} is none of the classes "
                f"{_class_list(self.classes)}"
            )
            return LabelDecision(None, patient, token, why)
        return LabelDecision(label, patient, token)

    def unmatched(self) -> list[str]:
        """CSV entries no scanned file matched (typos, files not copied)."""
        return sorted(set(self.rows) - self._used)


def _column(header: list[str], names: Sequence[str]) -> int | None:
    for n in names:
        if n in header:
            return header.index(n)
    return None


Labeler = FolderLabeler | KermanyLabeler | CsvLabeler


def make_labeler(mode: str | Path, root: Path, classes: Sequence[str]) -> Labeler:
    """mode: 'auto' (labels.csv at the top of root if present, else folders), 'folders',
    'kermany', or the Path of a labels CSV."""
    root = Path(root)
    folder = root if root.is_dir() else root.parent
    if isinstance(mode, Path):
        return CsvLabeler(mode, classes)
    if mode == "auto":
        csv_path = folder / LABELS_CSV
        if csv_path.is_file():
            return CsvLabeler(csv_path, classes)
        return FolderLabeler(folder, classes)
    if mode == "folders":
        return FolderLabeler(folder, classes)
    if mode == "kermany":
        return KermanyLabeler(folder, classes)
    raise ValueError(f"unknown label mode {mode!r}")
