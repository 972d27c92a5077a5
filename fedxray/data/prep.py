"""`fedxray prep`: folders of radiographs -> one de-identified in-memory Shard and a report.

Files are labelled first (cheap), then decoded in parallel worker processes through the
one shared pixel path (fedxray.imaging). Only the small output images travel back, so
memory stays bounded by image_size, never by the sources' resolution. Nothing is written
here: the caller writes the shard only after prepare() returned.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from fedxray.data.decode import Progress, decode_all, effective_workers, pixel_digest
from fedxray.data.labels import (
    LABELS_CSV,
    Labeler,
    check_classes,
    make_labeler,
)
from fedxray.data.pseudonym import image_id, patient_pseudonym, random_secret
from fedxray.data.scan import broken_link, check_inputs, scan_files
from fedxray.data.shard import Shard
from fedxray.errors import FedxrayError
from fedxray.geometry import DEFAULT_GEOMETRY
from fedxray.imaging import SKIP_REASONS, check_image_size
from fedxray.imaging.sniff import read_head, sniff
from fedxray.settings import DEFAULT_CLASSES

LABEL_MODES = ("auto", "folders", "kermany")


class SkippedFile(NamedTuple):
    path: str
    reason: str  # a key of fedxray.imaging.SKIP_REASONS
    message: str


@dataclass
class PrepReport:
    """What prep did; to_dict() is the --json output, summary() goes into the shard."""

    inputs: list[str]
    classes: list[str]
    image_size: int
    files_seen: int = 0
    kept: dict[str, int] = field(default_factory=dict)
    patients: dict[str, int] = field(default_factory=dict)  # distinct patients per class
    sources: dict[str, int] = field(default_factory=dict)  # kept images per file kind
    skipped: list[SkippedFile] = field(default_factory=list)
    label_sources: dict[str, str] = field(default_factory=dict)  # input -> how it was labelled
    pseudonyms: str = "random"  # 'site-key' or 'random' (pseudonyms differ per shard)
    warnings: list[str] = field(default_factory=list)
    workers: int = 1  # decoding processes actually used
    seconds: float = 0.0

    @property
    def total_kept(self) -> int:
        return sum(self.kept.values())

    def skipped_counts(self) -> dict[str, int]:
        counts = Counter(s.reason for s in self.skipped)
        return {r: counts[r] for r in SKIP_REASONS if counts[r]}

    def summary(self) -> dict:
        """Counts only: no file names, no paths. Safe to store in the shard."""
        return {
            "files_seen": self.files_seen,
            "kept": dict(self.kept),
            "patients": dict(self.patients),
            "sources": dict(self.sources),
            "skipped": self.skipped_counts(),
            "pseudonyms": self.pseudonyms,
        }

    def to_dict(self) -> dict:
        return {
            "inputs": list(self.inputs),
            "classes": list(self.classes),
            "image_size": self.image_size,
            "files_seen": self.files_seen,
            "images": self.total_kept,
            "kept": dict(self.kept),
            "patients": dict(self.patients),
            "sources": dict(self.sources),
            "skipped_counts": self.skipped_counts(),
            "skipped": [s._asdict() for s in self.skipped],
            "label_sources": dict(self.label_sources),
            "pseudonyms": self.pseudonyms,
            "warnings": list(self.warnings),
            "workers": self.workers,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class _Item:
    path: Path  # as the user's input spelled it, joined with the relative part
    rel: str  # relative to its input folder, '/'-separated: keys the image id
    label: int
    patient: str | None  # token from the label source (CSV column), wins over DICOM
    name_token: str | None  # token from the file name, used when nothing better exists
    scope: tuple[str, ...] = ()  # the input's own folders, outermost first (see _unique_rels)


def prepare(
    inputs: Sequence[str | os.PathLike],
    image_size: int = 224,
    classes: Sequence[str] = DEFAULT_CLASSES,
    secret: bytes | None = None,
    label_mode: str | Path = "auto",
    workers: int | None = None,
    progress: Progress | None = None,
    keep_duplicates: bool = False,
    geometry: str = DEFAULT_GEOMETRY,
) -> tuple[Shard, PrepReport]:
    """Decode, check, label, de-duplicate and pseudonymise every image under ``inputs``.

    secret: the site's pseudonym secret (fedxray.data.pseudonym.site_secret); None draws a
    random one, so pseudonyms then differ from shard to shard. keep_duplicates: keep exact
    duplicates (a published test set keeps its size); they are still counted. geometry: pad
    or stretch (the plan's, fedxray.imaging.normalize). Raises FedxrayError when no usable
    image is found.
    """
    started = time.monotonic()
    roots = check_inputs(inputs)
    try:
        check_image_size(image_size)
    except ValueError as e:
        raise FedxrayError(str(e)) from None
    classes = check_classes(classes)
    if not (isinstance(label_mode, Path) or label_mode in LABEL_MODES):
        raise FedxrayError(
            f"unknown label mode {label_mode!r}",
            hint="use auto, folders, kermany or the path of a CSV file",
        )
    if workers is None:
        workers = os.cpu_count() or 1
    if workers < 1:
        raise FedxrayError(f"workers must be at least 1, got {workers}")
    report = PrepReport(
        inputs=[str(r) for r in roots],
        classes=classes,
        image_size=image_size,
        kept=dict.fromkeys(classes, 0),
        patients=dict.fromkeys(classes, 0),
        pseudonyms="site-key" if secret is not None else "random",
    )
    if secret is None:
        secret = random_secret()

    items, labelers = _label_files(roots, classes, label_mode, report)
    if not items:
        _raise_nothing_usable(report)

    # Results stream in, in file order; only the small output images are kept.
    images = np.empty((len(items), image_size, image_size), dtype=np.uint8)
    kept_items: list[_Item] = []
    dropped: list[_Item] = []  # exact duplicates left out
    kept_copies = 0
    tokens: list[str | None] = []
    first_of: dict[bytes, _Item] = {}
    sources: Counter[str] = Counter()
    report.workers = effective_workers(workers, len(items))
    paths = [it.path for it in items]
    results = decode_all(paths, image_size, report.workers, progress, geometry)
    for it, res in zip(items, results, strict=True):
        if res[0] == "skip":
            report.skipped.append(SkippedFile(str(it.path), res[1], res[2]))
            continue
        _, pixels, dicom_token, kind, source_shape = res
        digest = pixel_digest(pixels, source_shape)
        if digest in first_of:
            if not keep_duplicates:
                report.skipped.append(
                    SkippedFile(
                        str(it.path), "duplicate", f"same pixels as {first_of[digest].path}"
                    )
                )
                dropped.append(it)
                continue
            kept_copies += 1
        else:
            first_of[digest] = it
        images[len(kept_items)] = pixels
        kept_items.append(it)
        tokens.append(it.patient or dicom_token or it.name_token)
        sources[kind] += 1
    images = images[: len(kept_items)]
    report.skipped.sort(key=lambda s: s.path)
    if not kept_items:
        _raise_nothing_usable(report)

    for lab in labelers:
        missing = lab.unmatched() if hasattr(lab, "unmatched") else []
        if missing:
            report.warnings.append(
                f"{lab.csv_path}: {len(missing)} listed file(s) not found, e.g. {missing[0]}"
            )
    if kept_copies:
        report.warnings.append(
            f"{kept_copies} exact duplicate(s) kept as asked: right for a published test "
            "set; a training shard should not weigh an image twice"
        )
    shard = _build_shard(images, kept_items, tokens, classes, image_size, secret)
    shard.geometry = geometry
    if dropped:
        # Keyed ids only: evaluation can then tell a reader's row for a dropped copy from
        # a typo (see fedxray.evaluation.reference).
        shard.duplicate_ids = np.array([image_id(secret, it.rel) for it in dropped], "<U32")
    _count(shard, report)
    report.sources = dict(sorted(sources.items()))
    for c in classes:
        if report.kept[c] == 0:
            report.warnings.append(f"no images of class '{c}'")
    report.seconds = time.monotonic() - started
    shard.meta = {"report": report.summary(), "pseudonyms": report.pseudonyms}
    return shard, report


def _label_files(
    roots: list[Path], classes: list[str], label_mode: str | Path, report: PrepReport
) -> tuple[list[_Item], list[Labeler]]:
    items: list[_Item] = []
    labelers: list[Labeler] = []
    seen: set[Path] = set()
    shared = make_labeler(label_mode, roots[0], classes) if isinstance(label_mode, Path) else None
    for root in roots:
        scope = _scope(root)
        labeler = shared or make_labeler(label_mode, root, classes)
        if labeler not in labelers:
            labelers.append(labeler)
        report.label_sources[str(root)] = (
            str(labeler.csv_path) if labeler.csv_path else str(label_mode)
        )
        exclude = {labeler.csv_path.resolve()} if labeler.csv_path else set()
        found = scan_files(root, exclude)
        if label_mode == "auto" and labeler.csv_path is None:
            _refuse_nested_label_files(root, [f.rel for f in found])
        for path, rel, real in found:
            if real is None:
                report.files_seen += 1
                message = broken_link(path) if path.is_symlink() else "file vanished"
                report.skipped.append(SkippedFile(str(path), "unreadable", message))
                continue
            if real in seen:  # the same file reached through two inputs counts once
                continue
            seen.add(real)
            report.files_seen += 1
            d = labeler(path, rel)
            if d.label is None:
                reason, message = _why_unlabelled(path, d.why or "no label")
                report.skipped.append(SkippedFile(str(path), reason, message))
                continue
            items.append(_Item(path, rel, classes.index(d.label), d.patient, d.name_token, scope))
    _unique_rels(items)
    return items, labelers


def _refuse_nested_label_files(root: Path, rels: list[str]) -> None:
    """An input without labels.csv at its top, but with some in sub-folders, is ambiguous.

    Typically a folder of data sets (sites, or training and test sets): each labels.csv
    describes its own folder, and merging them all into one shard would be a surprise
    (a test set inside a training shard). Say which inputs to give instead of guessing.
    """
    nested = sorted({rel.rsplit("/", 1)[0] for rel in rels if rel.endswith(f"/{LABELS_CSV}")})
    if not nested:
        return
    shown = ", ".join(str(root / n) for n in nested[:4]) + (" ..." if len(nested) > 4 else "")
    raise FedxrayError(
        f"{root} has no {LABELS_CSV} at its top, but {len(nested)} sub-folder(s) have their "
        f"own: {shown}",
        hint=f"give those folders as inputs (e.g. fedxray prep {root / nested[0]} ...), each "
        "with its own labels; or --labels folders to label by folder names",
    )


def _scope(root: Path) -> tuple[str, ...]:
    """The folders an input lives in, as the user spelled them (no symlinks resolved)."""
    folder = Path(os.path.abspath(root))
    if not root.is_dir():
        folder = folder.parent
    return folder.parts[1:]  # without the anchor ('/' or 'C:\\')


def _unique_rels(items: list[_Item]) -> None:
    """Give files from different inputs that share a relative path distinct image ids.

    Such files (``a/NORMAL/x.png`` and ``b/NORMAL/x.png`` given as inputs ``a`` and ``b``)
    are keyed by their input's own folder name(s) before the relative path, as few as make
    them distinct (``a/NORMAL/x.png``). Every other file keeps its plain relative path, so
    with one input the ids are exactly those of the paths relative to it. A reader's CSV
    naming either form still matches: evaluation drops leading folders until a path matches.
    """
    depth = [0] * len(items)
    while True:
        keys = [_rel_at(it, d) for it, d in zip(items, depth, strict=True)]
        groups: dict[str, list[int]] = {}
        for i, k in enumerate(keys):
            groups.setdefault(k, []).append(i)
        moved = False
        for group in groups.values():
            if len(group) < 2:
                continue
            for i in group:
                if depth[i] < len(items[i].scope):
                    depth[i] += 1
                    moved = True
        if not moved:  # all distinct (or, on different drives, as distinct as paths get)
            break
    for it, key in zip(items, keys, strict=True):
        it.rel = key


def _rel_at(item: _Item, depth: int) -> str:
    if depth == 0:
        return item.rel
    return "/".join((*item.scope[len(item.scope) - depth :], item.rel))


def _why_unlabelled(path: Path, why: str) -> tuple[str, str]:
    # A README without a label is better reported as not being an image at all.
    try:
        head = read_head(path)
    except OSError as e:
        return "unreadable", f"cannot read file: {e.strerror or e}"
    if not head:
        return "unreadable", "empty file (0 bytes)"
    if sniff(head) is None:
        return "not-an-image", "not a DICOM, PNG or JPEG image"
    return "unknown-label", why


def _raise_nothing_usable(report: PrepReport) -> None:
    where = ", ".join(report.inputs)
    if report.files_seen == 0:
        raise FedxrayError(f"no files found in {where}")
    counts = report.skipped_counts()
    detail = ", ".join(f"{n} {r}" for r, n in counts.items())
    hint = None
    if counts.get("unknown-label"):
        first = next(s for s in report.skipped if s.reason == "unknown-label")
        hint = (
            f"e.g. {first.path}: {first.message}; name folders after the classes "
            "or give a labels CSV (columns file,label[,patient])"
        )
    raise FedxrayError(
        f"no usable image in {where}: {report.files_seen} file(s), all skipped ({detail})",
        hint=hint,
    )


# ---- assembling the shard --------------------------------------------------------------


def _build_shard(
    images: np.ndarray,
    items: list[_Item],
    tokens: list[str | None],
    classes: list[str],
    image_size: int,
    secret: bytes,
) -> Shard:
    ids = np.array([image_id(secret, it.rel) for it in items], dtype="<U32")
    patients = None
    if any(t is not None for t in tokens):
        # An image without a patient token is its own unit: its image id stands in.
        patients = np.array(
            [
                patient_pseudonym(secret, t) if t is not None else ids[i]
                for i, t in enumerate(tokens)
            ],
            dtype="<U32",
        )
    return Shard(
        images=images,
        labels=np.array([it.label for it in items], dtype=np.int64),
        classes=list(classes),
        image_size=image_size,
        patients=patients,
        image_ids=ids,
    )


def _count(shard: Shard, report: PrepReport) -> None:
    units = shard.patients if shard.patients is not None else shard.image_ids
    for k, c in enumerate(shard.classes):
        mask = shard.labels == k
        report.kept[c] = int(mask.sum())
        report.patients[c] = len(np.unique(units[mask])) if mask.any() else 0
