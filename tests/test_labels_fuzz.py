"""Property-based tests of the labels-CSV parser: any input gives rows or one clean error."""

from __future__ import annotations

import csv
import io

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fedxray.data.labels import FILE_COLUMNS, LABEL_COLUMNS, file_key, parse_labels_csv
from fedxray.errors import FedxrayError

NAME = "fuzz.csv"
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Pieces that make a parser stumble: separators, quotes, line ends, BOM, NUL, odd Unicode.
_PIECES = st.sampled_from(
    [",", ";", "\t", '"', "\n", "\r", "\r\n", "\ufeff", "\x00", "\\", "/", "..", " ", "é", "\u2028"]
)
_CELL = st.lists(st.one_of(_PIECES, st.text(max_size=8)), max_size=6).map("".join)
_HEADER = st.lists(
    st.sampled_from([*FILE_COLUMNS, *LABEL_COLUMNS, "patient", "File ", " LABEL", "x"]),
    min_size=1,
    max_size=4,
)


def _parse_or_clean_error(data: bytes) -> dict | None:
    """Rows that make sense, or a FedxrayError of one line naming the file; nothing else."""
    try:
        rows = parse_labels_csv(data, NAME)
    except FedxrayError as e:
        assert e.message.startswith(NAME), e.message
        assert e.message.isprintable() and len(e.message) < 400, e.message
        assert e.hint is None or e.hint.isprintable()
        return None
    assert rows
    for key, (label, patient) in rows.items():
        assert isinstance(key, str) and key and key == file_key(key)
        assert isinstance(label, str) and label and label == label.strip()
        assert patient is None or (patient and patient == patient.strip())
    return rows


@FUZZ
@given(st.binary(max_size=1500))
def test_arbitrary_bytes(data):
    _parse_or_clean_error(data)


@FUZZ
@given(st.text(max_size=600), st.sampled_from(["utf-8", "utf-8-sig", "utf-16"]))
def test_arbitrary_text(text, encoding):
    _parse_or_clean_error(text.encode(encoding, errors="surrogatepass"))


@FUZZ
@example(["file", "label"], [['"a\nb"', "x"], ['"a\nb"', "y"]], ",")  # a key over two lines
@example(['"fi\x00le"', "label"], [["a", "b"]], ",")  # a header with a NUL
@example(["file", "label"], [["a" * 140_000, "x"]], ",")  # over the csv module's field limit
@example(["file", "label"], [['"x', "y"]], ";")  # a quote never closed
@example(["file", "label"], [[", \\", "x"]], ";")  # ", /" normalises to ", " (not a key)
@given(
    _HEADER,
    st.lists(st.lists(_CELL, max_size=5), max_size=8),
    st.sampled_from([",", ";", "\t"]),
)
def test_csv_shaped_input(header, rows, delimiter):
    text = delimiter.join(header) + "\n" + "\n".join(delimiter.join(r) for r in rows)
    _parse_or_clean_error(text.encode("utf-8"))


_NAME = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cs", "Cc", "Zl", "Zp"), blacklist_characters="\\"
    ),
    min_size=1,
    max_size=12,
).filter(lambda s: s.strip() not in ("", ".", "..") and "/" not in s)


@FUZZ
@given(
    st.dictionaries(_NAME, st.tuples(_NAME, st.one_of(st.none(), _NAME)), min_size=1, max_size=6),
    st.sampled_from([",", ";", "\t"]),
)
def test_well_formed_files_come_back_as_written(entries, delimiter):
    """What a spreadsheet writes (quoted where needed) is read back row for row."""
    out = io.StringIO()
    w = csv.writer(out, delimiter=delimiter, lineterminator="\r\n")
    w.writerow(["file", "label", "patient"])
    for name, (label, patient) in entries.items():
        w.writerow([name, label, patient or ""])
    rows = _parse_or_clean_error(out.getvalue().encode("utf-8-sig"))
    want = {}
    for name, (label, patient) in entries.items():
        want.setdefault(file_key(name), set()).add((label.strip(), (patient or "").strip() or None))
    if rows is None:  # only when two names collapse to one key with different labels
        assert any(len(v) > 1 for v in want.values())
        return
    assert {k: {v} for k, v in rows.items()} == want
