"""The names of round files: ``round-0003.model``, ``hospital-a-round-0003.masked``."""

from __future__ import annotations

from fedxray.artifact import KINDS


def round_file(kind: str, round_number: int, party: str | None = None) -> str:
    """The file of ``kind`` for round ``round_number``; a party's own files carry its name."""
    name = f"round-{round_number:04d}{KINDS[kind]}"
    return f"{party}-{name}" if party else name


def averaged_file(model_file: str) -> str:
    """Where the published average of a global model goes: ``round-0003.averaged.model``
    beside ``round-0003.model`` (the model the sites train from)."""
    stem, dot, suffix = model_file.rpartition(".")
    return f"{stem}.averaged.{suffix}" if dot else f"{model_file}.averaged"
