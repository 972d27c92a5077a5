"""Run the CLI in-process, capturing stdout/stderr and the exit code."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from dataclasses import dataclass


@dataclass
class Result:
    code: int
    out: str
    err: str
    out_bytes: bytes


def run_cli(*args, stdin: bytes = b"") -> Result:
    from fedxray.cli.main import main

    out, err = io.BytesIO(), io.StringIO()
    out_text = io.TextIOWrapper(out, encoding="utf-8", write_through=True)
    in_text = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
    code = 0
    old = sys.stdout, sys.stderr, sys.stdin
    sys.stdout, sys.stderr, sys.stdin = out_text, err, in_text
    try:
        with contextlib.suppress(SystemExit):
            try:
                main([str(a) for a in args])
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                raise
    finally:
        sys.stdout, sys.stderr, sys.stdin = old
    data = out.getvalue()
    return Result(code, data.decode("utf-8", "replace"), err.getvalue(), data)


def assert_clean_error(r: Result, code: int, *words: str) -> None:
    """A failure as users must see it: the exit code, one error line (and at most one hint
    line) naming ``words``, no traceback, nothing on stdout but (with --json) one JSON error
    document saying the same."""
    lines = r.err.strip().splitlines()
    assert r.code == code, r.err
    assert lines and lines[0].startswith("fedxray: error: "), r.err
    assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("hint: ")), r.err
    assert "Traceback" not in r.err and "internal error" not in r.err, r.err
    if r.out:  # only with --json: exactly one error document, saying the same
        doc = json.loads(r.out)
        assert doc["ok"] is False and doc["exit_code"] == code, r.out
        assert doc["error"] == lines[0].removeprefix("fedxray: error: "), r.out
    for w in words:
        assert w in r.err, (w, r.err)


SITES = ("hosp-a", "hosp-b", "hosp-c")


def make_federation(folder, name: str, *init_options, sites=SITES):
    """Sites' keys in ``folder`` (made once) and a federation ``name`` over them, its plan
    and round-1 model in ``folder/coordinator`` (or another ``-o`` in ``init_options``)."""
    for s in sites:
        if not (folder / f"{s}.key").exists():
            assert run_cli("keygen", s, "-o", folder, "-q").code == 0
    out = () if "-o" in init_options else ("-o", folder / "coordinator")
    r = run_cli("init", "--name", name, *out, "-q", *init_options,
                *(folder / f"{s}.pub" for s in sites))  # fmt: skip
    assert r.code == 0, r.err
    return r
