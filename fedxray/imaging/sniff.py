"""Recognise a file's format from its first bytes (never from its name)."""

from __future__ import annotations

import struct

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
HEAD_BYTES = 132

# Groups a DICOM data set without preamble and meta header usually starts with.
_RAW_DICOM_GROUPS = {0x0002, 0x0008}


def sniff(head: bytes) -> str | None:
    """'dicom', 'png', 'jpeg' or None, from the first HEAD_BYTES bytes of a file."""
    if head.startswith(PNG_MAGIC):
        return "png"
    if head.startswith(JPEG_MAGIC):
        return "jpeg"
    if head[128:132] == b"DICM":
        return "dicom"
    # Old exports often lack the 128-byte preamble: the file then opens with a tag.
    if len(head) >= 8:
        group, element = struct.unpack("<HH", head[:4])
        if group in _RAW_DICOM_GROUPS and element < 0x0100:
            return "dicom"
    return None


def read_head(path) -> bytes:
    with open(path, "rb") as f:
        return f.read(HEAD_BYTES)
