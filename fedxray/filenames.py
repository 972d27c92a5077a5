"""The names of round files: ``round-0003.model``, ``hospital-a-round-0003.masked``."""

from __future__ import annotations

from fedxray.artifact import KINDS


def round_file(kind: str, round_number: int, party: str | None = None) -> str:
    """The file of ``kind`` for round ``round_number``; a party's own files carry its name."""
    name = f"round-{round_number:04d}{KINDS[kind]}"
    return f"{party}-{name}" if party else name
