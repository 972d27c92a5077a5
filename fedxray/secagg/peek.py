"""Unverified header reads: name outputs and pick a round before the real work starts.

Nothing read here is trusted. The protocol steps verify every file in full; a header is
peeked only to choose a default file name or the round to aggregate, and reading just the
header keeps that cheap (a masked ResNet-18 update is 89 MB).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable
from pathlib import Path

from fedxray.errors import VerificationError

_MAX_HEADER = 1 << 20  # fedxray headers are small; a larger one is not worth peeking at


def peek_header(source: bytes | bytearray | memoryview | str | os.PathLike) -> dict | None:
    """The fedxray header (kind, round, sender, meta, ...) of a file or buffer, NOT verified.

    Returns None when it cannot be read; the verifying step then reports the real problem.
    """
    try:
        if isinstance(source, bytes | bytearray | memoryview):
            raw = bytes(memoryview(source)[:8])
            (hlen,) = struct.unpack("<Q", raw)
            head = bytes(memoryview(source)[8 : 8 + min(hlen, _MAX_HEADER)])
        else:
            with open(Path(source), "rb") as f:
                (hlen,) = struct.unpack("<Q", f.read(8))
                head = f.read(min(hlen, _MAX_HEADER))
        if len(head) != hlen:
            return None
        doc = json.loads(head)
        header = json.loads(doc["__metadata__"]["fedxray"])
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None
    return header if isinstance(header, dict) else None


def peek_round(source) -> int | None:
    header = peek_header(source)
    r = header.get("round") if header is not None else None
    return r if isinstance(r, int) and not isinstance(r, bool) else None


def common_round(items: Iterable[tuple[str, object]]) -> int:
    """The round that every (label, source) names; a clear VerificationError otherwise.

    Files whose header cannot be read are skipped here: verifying them fails later with the
    real reason.
    """
    rounds: dict[int, list[str]] = {}
    for label, source in items:
        r = peek_round(source)
        if r is not None:
            rounds.setdefault(r, []).append(label)
    if not rounds:
        raise VerificationError("none of the inputs is a readable fedxray file")
    if len(rounds) > 1:
        found = "; ".join(
            f"round {r}: {', '.join(labels[:3])}{' ...' if len(labels) > 3 else ''}"
            for r, labels in sorted(rounds.items())
        )
        raise VerificationError(
            f"the inputs are for different rounds ({found})",
            hint="leave out the files of other rounds, or pick one with --round N",
        )
    return next(iter(rounds))
