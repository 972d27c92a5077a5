"""A human reader against the model: side-by-side metrics, paired bootstrap, McNemar's test.

Reads come from a READS.csv (columns ``image_id`` or ``file``, and ``label``) that a
radiologist fills in for the test images; they are matched to shard rows by keyed image id.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from fedxray.errors import FedxrayError
from fedxray.evaluation.bootstrap import (
    DEFAULT_LEVEL,
    DEFAULT_RESAMPLES,
    Interval,
    Progress,
    Resampler,
    cluster_index,
    percentile_interval,
    replicates,
)
from fedxray.evaluation.metrics import (
    SCALARS,
    Metrics,
    WeightedScorer,
    check_inputs,
    check_labels,
    compute_metrics,
    to_optional,
)
from fedxray.fsio import read_input

NOT_READ = -1
# Below this many discordant pairs the chi-square approximation is poor: use the exact test.
EXACT_BELOW = 25
# Whole-set metrics a reader has (AUCs need scores, hard labels have none).
READER_SCALARS = tuple(m for m in SCALARS if "roc_auc" not in m)
_SHOW = 5  # offending rows quoted in an error message


@dataclass(frozen=True)
class McNemar:
    """McNemar's test on paired correctness. b: model right and reader wrong; c: the reverse."""

    b: int
    c: int
    statistic: float  # exact: min(b, c); chi-square: continuity-corrected chi-square (1 df)
    p_value: float
    method: str

    def to_dict(self) -> dict:
        names = {"b": "model_right_reader_wrong", "c": "model_wrong_reader_right"}
        return {names.get(k, k): v for k, v in dataclasses.asdict(self).items()}


def binomial_two_sided(k: int, n: int) -> float:
    """Exact two-sided p-value of k successes in n trials with p = 1/2."""
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(k, n - k) + 1))
    # Exact rational arithmetic: no underflow of 2**-n for large n.
    return float(min(Fraction(1), Fraction(2 * tail, 2**n)))


def chi2_sf_1df(x: float) -> float:
    """Survival function of the chi-square distribution with one degree of freedom."""
    return math.erfc(math.sqrt(max(x, 0.0) / 2))


def mcnemar(model_correct, reader_correct, exact: bool | None = None) -> McNemar:
    """Exact binomial test when b + c < 25 (or ``exact``), else continuity-corrected chi-square."""
    m = np.asarray(model_correct, dtype=bool)
    r = np.asarray(reader_correct, dtype=bool)
    if m.shape != r.shape or m.ndim != 1:
        raise FedxrayError("model and reader correctness must be two vectors of equal length")
    b = int((m & ~r).sum())
    c = int((~m & r).sum())
    n = b + c
    if exact is None:
        exact = n < EXACT_BELOW
    if exact:
        return McNemar(b, c, float(min(b, c)), binomial_two_sided(b, n), "exact binomial")
    stat = max(abs(b - c) - 1, 0) ** 2 / n
    return McNemar(b, c, float(stat), chi2_sf_1df(stat), "chi-square, continuity-corrected")


@dataclass
class ReaderComparison:
    """Model and reader on the images the reader labelled, resampled together."""

    n_images: int
    n_unread: int
    model: Metrics
    reader: Metrics
    difference: dict[str, float | None]  # model minus reader
    model_ci: dict[str, Interval] | None
    reader_ci: dict[str, Interval] | None
    difference_ci: dict[str, Interval] | None
    mcnemar: McNemar
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        def row(name: str) -> dict:
            return {
                "model": _estimate(self.model.values[name], self.model_ci, name),
                "reader": _estimate(self.reader.values[name], self.reader_ci, name),
                "model_minus_reader": _estimate(self.difference[name], self.difference_ci, name),
            }

        return {
            "n_images": self.n_images,
            "n_unread": self.n_unread,
            "metrics": {name: row(name) for name in READER_SCALARS},
            "reader_confusion_matrix": self.reader.confusion.tolist(),
            "mcnemar": self.mcnemar.to_dict(),
            "notes": list(self.notes),
        }


def _estimate(value, cis: dict[str, Interval] | None, name: str) -> dict:
    out: dict = {"value": value}
    if cis is not None:
        out.update(cis[name].to_dict())
    return out


def compare_reader(
    y_true,
    probs,
    classes: Sequence[str],
    reader_labels,
    groups=None,
    *,
    n_boot: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
    progress: Progress | None = None,
) -> ReaderComparison:
    """Compare on the images read (``reader_labels`` -1 = not read); n_boot 0: no intervals."""
    y, p, classes = check_inputs(y_true, probs, classes)
    reads = np.asarray(reader_labels)
    if reads.shape != y.shape:
        raise FedxrayError(f"{len(y)} images but {reads.size} reader labels")
    read = reads != NOT_READ
    if not read.any():
        raise FedxrayError("the reader labelled none of the evaluated images")
    k = len(classes)
    y, p = y[read], p[read]
    r = check_labels(reads[read], k, what="reader labels")
    hard = np.eye(k)[r]
    model = compute_metrics(y, p, classes)
    reader = compute_metrics(y, hard, classes, hard=True)
    diff = {name: _minus(model.values[name], reader.values[name]) for name in READER_SCALARS}
    test = mcnemar(p.argmax(axis=1) == y, r == y)
    notes = [f"reader: {n}" for n in reader.notes if "hard labels" not in n]
    sub_groups = None
    if groups is not None:
        sub_groups = np.asarray(groups, dtype=object)
        if sub_groups.shape != read.shape:
            raise FedxrayError(f"{len(read)} images but {sub_groups.size} patient pseudonyms")
        sub_groups = sub_groups[read]
        _, n_patients = cluster_index(sub_groups, len(y))
        if n_patients < len(y):
            notes.append(
                f"McNemar's test treats the {len(y)} images as independent although they come "
                f"from {n_patients} patients; the bootstrap intervals account for that"
            )
    model_ci = reader_ci = diff_ci = None
    if n_boot:
        scorers = [WeightedScorer(y, p, classes), WeightedScorer(y, hard, classes, hard=True)]
        resampler = Resampler(len(y), sub_groups, seed)
        m_rep, r_rep = replicates(scorers, resampler, n_boot, progress)
        model_ci = {name: percentile_interval(m_rep[name], level) for name in m_rep}
        reader_ci = {name: percentile_interval(r_rep[name], level) for name in r_rep}
        diff_ci = {
            name: percentile_interval(m_rep[name] - r_rep[name], level) for name in READER_SCALARS
        }
    return ReaderComparison(
        n_images=int(read.sum()),
        n_unread=int((~read).sum()),
        model=model,
        reader=reader,
        difference=diff,
        model_ci=model_ci,
        reader_ci=reader_ci,
        difference_ci=diff_ci,
        mcnemar=test,
        notes=notes,
    )


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else to_optional(a - b)


def read_reads_csv(
    source: bytes | str | os.PathLike,
    classes: Sequence[str],
    image_ids,
    image_id_of: Callable[[str], str] | None = None,
    name: str = "READS.csv",
    duplicate_ids=None,
    warn: Callable[[str], None] | None = None,
) -> np.ndarray:
    """Reader labels aligned to shard rows: int64 [N], -1 where the image was not read.

    ``source`` is the CSV's bytes or its path. Rows name an image by ``image_id`` (matched
    directly) or by ``file`` (mapped through ``image_id_of``, the site's keyed path hash).
    Labels are class names, any case. Unknown labels, unmatched rows or one image read twice
    with different labels are errors that quote the first few offending lines. Rows naming
    an image prep left out as an exact duplicate (``duplicate_ids``, the shard's) are not
    used, and ``warn`` is told so once.
    """
    if isinstance(source, bytes | bytearray):
        raw = bytes(source)
    else:
        name = str(source)
        raw = read_input(source, what="reader labels")
    if image_ids is None:
        raise FedxrayError(
            "this shard has no image ids, so reader labels cannot be matched to its images",
            hint="prepare the shard again with this version of fedxray",
        )
    index = {str(i): row for row, i in enumerate(np.asarray(image_ids))}
    dropped = set() if duplicate_ids is None else {str(i) for i in duplicate_ids}
    label_of = {c.strip().lower(): j for j, c in enumerate(classes)}
    header, rows = _parse_csv(raw, name)
    key_col, label_col, by_file = _columns(header, name)
    if by_file and image_id_of is None:
        raise FedxrayError(
            f"{name} names images by 'file', which only the site key that prepared the shard "
            "can match to its images",
            hint="give that key, or name the images by image_id",
            option="key",
        )

    out = np.full(len(index), NOT_READ, dtype=np.int64)
    unknown, unmatched, conflicts, duplicates = [], [], [], []
    for line, cells in rows:
        key = cells[key_col].strip() if key_col < len(cells) else ""
        label = cells[label_col].strip() if label_col < len(cells) else ""
        j = label_of.get(label.lower())
        if j is None:
            unknown.append(f"line {line} {label!r}")
            continue
        image_id = image_id_of(key) if by_file and key else key
        row = index.get(image_id) if key else None
        if row is None:
            (duplicates if key and image_id in dropped else unmatched).append(
                f"line {line} {key!r}"
            )
            continue
        if out[row] not in (NOT_READ, j):
            conflicts.append(f"line {line} {key!r}")
        out[row] = j
    if unknown:
        raise FedxrayError(
            f"{name}: {len(unknown)} row(s) with a label that is not a class: {_few(unknown)}",
            hint=f"labels must be one of: {', '.join(classes)}",
        )
    if unmatched:
        raise FedxrayError(
            f"{name}: {len(unmatched)} row(s) match no image of this shard: {_few(unmatched)}",
            hint="give file paths relative to the folder prep read, and the key prep used"
            if by_file
            else "image ids are the shard's keyed ids of its files",
        )
    if conflicts:
        raise FedxrayError(
            f"{name}: {len(conflicts)} image(s) read twice with different labels: {_few(conflicts)}"
        )
    if duplicates and warn is not None:
        warn(
            f"{name}: {len(duplicates)} row(s) name images prep left out as exact duplicates "
            f"of kept images; those reads are not used: {_few(duplicates)} (prep "
            "--keep-duplicates keeps every copy)"
        )
    if not (out != NOT_READ).any():
        raise FedxrayError(f"{name} contains no reads")
    return out


def _few(items: list[str]) -> str:
    more = f" and {len(items) - _SHOW} more" if len(items) > _SHOW else ""
    return ", ".join(items[:_SHOW]) + more


def _parse_csv(raw: bytes, name: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    try:
        text = raw.decode("utf-8-sig")  # spreadsheets often prepend a byte-order mark
    except UnicodeDecodeError:
        raise FedxrayError(f"{name} is not UTF-8 text", hint="save it as CSV UTF-8") from None
    first = text.split("\n", 1)[0]
    # Spreadsheets in many locales export with ';' (or tabs) instead of ','.
    delimiter = max(",;\t", key=first.count)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader, None)
        if header is None:
            raise FedxrayError(f"{name} is empty")
        rows = [(reader.line_num, r) for r in reader if any(c.strip() for c in r)]
    except csv.Error as e:
        raise FedxrayError(f"{name}: malformed CSV at line {reader.line_num}: {e}") from None
    return [h.strip().lower() for h in header], rows


def _columns(header: list[str], name: str) -> tuple[int, int, bool]:
    if "label" not in header:
        raise FedxrayError(
            f"{name} has no 'label' column (found: {', '.join(header) or 'nothing'})",
            hint="the header must be: image_id,label  or  file,label",
        )
    if "image_id" in header:
        return header.index("image_id"), header.index("label"), False
    if "file" in header:
        return header.index("file"), header.index("label"), True
    raise FedxrayError(
        f"{name} has no 'image_id' or 'file' column (found: {', '.join(header)})",
        hint="the header must be: image_id,label  or  file,label",
    )
