"""The signed file container: build, parse, peek and signature checks (nothing about plans).

Layout: a plain safetensors file whose ``__metadata__`` holds two strings, ``fedxray`` (the
header as canonical JSON) and ``signature`` (Ed25519, hex). The signature covers the SHA-256 of
the whole safetensors header (length prefix, tensor index, padding, fedxray header) with the
signature's hex digits replaced by zeros; the fedxray header carries the SHA-256 of the tensor
data. So one flipped byte anywhere (header padding, tensor index, payload, even the signature)
makes verification fail, and the tensor data is hashed once. The bytes are read once, verified,
then parsed from the same buffer without copying it.

An artifact's id (``digest``, what children name as their parent) is the SHA-256 of its signed
header: it pins the payload through the payload hash inside.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np
from cryptography.exceptions import InvalidSignature
from safetensors.numpy import save as _safetensors_save

from fedxray.errors import VerificationError

if TYPE_CHECKING:
    from fedxray.keys import PrivateIdentity, PublicIdentity

FORMAT_VERSION = 1
SIGNING_DOMAIN = b"fedxray-artifact-v1\0"
SIG_HEX_LEN = 128
_PLACEHOLDER = "0" * SIG_HEX_LEN

# kind -> file suffix; the suffix tells a technician what a file is.
KINDS = {
    "plan": ".plan",
    "card": ".pub",
    "model": ".model",
    "update": ".update",
    "masked": ".masked",
    "sum": ".sum",
    "closure": ".closure",
    "reveal": ".reveal",
}

_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U64": np.uint64,
    "U32": np.uint32,
    "U16": np.uint16,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class Header:
    kind: str
    federation: str
    round: int
    sender: str
    created: str
    parent: str
    payload_sha256: str
    meta: dict = field(default_factory=dict)
    format: int = FORMAT_VERSION

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Artifact:
    header: Header
    tensors: dict[str, np.ndarray]
    digest: str  # artifact_id(): what children name as their parent
    signature: str

    @property
    def kind(self) -> str:
        return self.header.kind


def canonical_json(obj) -> str:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


def _signed_digest(head: bytes, sig_start: int) -> bytes:
    """SHA-256 over domain + header, with the signature's hex digits taken as zeros."""
    h = hashlib.sha256(SIGNING_DOMAIN)
    h.update(head[:sig_start])
    h.update(_PLACEHOLDER.encode())
    h.update(head[sig_start + SIG_HEX_LEN :])
    return h.digest()


def artifact_id(head: bytes) -> str:
    """The id of an artifact: SHA-256 of its complete (signed) header bytes."""
    return hashlib.sha256(b"fedxray-artifact-id-v1\0" + head).hexdigest()


_PAYLOAD_MARK = b'payload_sha256\\":\\"' + b"0" * 64


@dataclass(frozen=True)
class SignedArtifact:
    """A freshly built artifact: its bytes and the hashes computed while building it."""

    data: bytes
    digest: str  # artifact id, as Artifact.digest
    payload_sha256: str  # hash of the tensor data, as in the header


def build_artifact(
    kind: str,
    *,
    federation: str,
    round: int,
    sender: str,
    parent: str,
    meta: dict,
    tensors: dict[str, np.ndarray],
    signer: PrivateIdentity,
    created: str | None = None,
) -> SignedArtifact:
    """Serialise and sign an artifact (``created``: its time, by default now)."""
    if kind not in KINDS:
        raise ValueError(f"unknown artifact kind {kind!r}")
    if signer.name != sender:
        raise ValueError("the sender must sign its own artifacts")
    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    header = Header(
        kind=kind,
        federation=federation,
        round=int(round),
        sender=sender,
        created=created or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        parent=parent,
        payload_sha256="0" * 64,  # patched in place below, once the payload is laid out
        meta=meta,
    )
    metadata = {"fedxray": canonical_json(header.to_dict()), "signature": _PLACEHOLDER}
    unsigned = _safetensors_save(arrays, metadata=metadata)
    head_end = 8 + struct.unpack("<Q", unsigned[:8])[0]
    head = _canonical_metadata_order(bytearray(unsigned[:head_end]), metadata)
    sig_marker = f'"{_PLACEHOLDER}"'.encode()
    if head.count(_PAYLOAD_MARK) != 1 or head.count(sig_marker) != 1:
        raise RuntimeError("unexpected safetensors layout")
    payload = memoryview(unsigned)[head_end:]
    pos = head.index(_PAYLOAD_MARK) + len(_PAYLOAD_MARK) - 64
    payload_sha256 = hashlib.sha256(payload).hexdigest()
    head[pos : pos + 64] = payload_sha256.encode()
    sig_start = head.index(sig_marker) + 1
    signature = signer.sign(_signed_digest(bytes(head), sig_start)).hex()
    head[sig_start : sig_start + SIG_HEX_LEN] = signature.encode()
    # One copy of the payload: the patched header and the data, joined.
    return SignedArtifact(b"".join((head, payload)), artifact_id(bytes(head)), payload_sha256)


def _canonical_metadata_order(head: bytearray, metadata: dict[str, str]) -> bytearray:
    """The safetensors header with its metadata entries in one fixed order.

    safetensors writes the metadata map in hash order, which changes from process to process;
    the same artifact must give the same bytes (a re-made update is accepted by ``mask``), so
    the two entries are put in sorted order (same length: only their order changes).
    """

    def text(keys) -> bytes:
        return json.dumps({k: metadata[k] for k in keys}, separators=(",", ":")).encode()

    ordered, swapped = text(sorted(metadata)), text(sorted(metadata, reverse=True))
    if head.count(ordered) + head.count(swapped) != 1:
        raise RuntimeError("unexpected safetensors layout")
    start = max(head.find(ordered), head.find(swapped))
    head[start : start + len(ordered)] = ordered
    return head


def _fail(msg: str) -> VerificationError:
    return VerificationError(msg)


def _parse_head(head_bytes: bytes, what: str) -> tuple[dict, str, Header]:
    """(tensor index, signature hex, fedxray header) of a safetensors header, unverified."""
    try:
        head = json.loads(head_bytes)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _fail(f"{what} is corrupt or not a fedxray artifact (unreadable header)") from None
    if not isinstance(head, dict) or not isinstance(head.get("__metadata__"), dict):
        raise _fail(f"{what} is not a fedxray artifact (no fedxray header)")
    meta = head.pop("__metadata__")
    sig = meta.get("signature")
    hdr_json = meta.get("fedxray")
    if (
        not isinstance(sig, str)
        or not isinstance(hdr_json, str)
        or set(meta) != {"fedxray", "signature"}
    ):
        raise _fail(f"{what} is not a fedxray artifact (no fedxray header)")
    if len(sig) != SIG_HEX_LEN or any(c not in "0123456789abcdef" for c in sig):
        raise _fail(f"{what} has a malformed signature")
    try:
        h = json.loads(hdr_json)
        header = Header(
            kind=str(h["kind"]),
            federation=str(h["federation"]),
            round=_integer(h["round"]),
            sender=str(h["sender"]),
            created=str(h["created"]),
            parent=str(h["parent"]),
            payload_sha256=str(h["payload_sha256"]),
            meta=_object(h["meta"]),
            format=_integer(h["format"]),
        )
    except (ValueError, KeyError, TypeError, RecursionError):
        raise _fail(f"{what} has a malformed fedxray header") from None
    if header.format != FORMAT_VERSION:
        raise _fail(
            f"{what} has format version {header.format}; this fedxray reads {FORMAT_VERSION}"
        )
    return head, sig, header


def _integer(value) -> int:
    """A header number: a JSON integer, never a float, text or a boolean."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"not an integer: {value!r}")
    return value


def _object(value) -> dict:
    if not isinstance(value, dict):
        raise TypeError(f"not a JSON object: {value!r}")
    return value


def _header_length(prefix: bytes, size: int, what: str) -> int:
    if len(prefix) < 8:
        raise _fail(f"{what} is empty or truncated (not a fedxray artifact)")
    (hlen,) = struct.unpack("<Q", prefix[:8])
    if hlen > MAX_HEADER or 8 + hlen > size:
        raise _fail(f"{what} is truncated or not a fedxray artifact")
    return hlen


def parse_unverified(data: bytes, what: str = "file") -> tuple[Artifact, bytes]:
    """Check the container's structure and return (artifact, signed digest).

    Nothing here is trusted yet: callers must verify the signature over the digest.
    """
    hlen = _header_length(data[:8], len(data), what)
    head_bytes = bytes(data[8 : 8 + hlen])
    index, sig, header = _parse_head(head_bytes, what)
    marker = f'"{sig}"'.encode()
    if head_bytes.count(marker) != 1:
        raise _fail(f"{what} has a malformed signature")
    message = _signed_digest(data[: 8 + hlen], 8 + head_bytes.index(marker) + 1)
    payload = memoryview(data).toreadonly()[8 + hlen :]
    tensors = _parse_tensors(index, payload, what)
    if hashlib.sha256(payload).hexdigest() != header.payload_sha256:
        raise _fail(f"{what} is corrupt: payload checksum mismatch")
    return Artifact(header, tensors, artifact_id(bytes(data[: 8 + hlen])), sig), message


def read_header(source: bytes | memoryview | str | os.PathLike, what: str = "file") -> Header:
    """The header of a file or buffer, NOT verified, without reading or hashing the tensors."""
    if isinstance(source, bytes | bytearray | memoryview):
        view = memoryview(source)
        hlen = _header_length(bytes(view[:8]), len(view), what)
        return _parse_head(bytes(view[8 : 8 + hlen]), what)[2]
    with open(source, "rb") as f:
        hlen = _header_length(f.read(8), 8 + MAX_HEADER, what)
        head = f.read(hlen)
    if len(head) != hlen:
        raise _fail(f"{what} is truncated or not a fedxray artifact")
    return _parse_head(head, what)[2]


def peek_header(source: bytes | memoryview | str | os.PathLike) -> Header | None:
    """:func:`read_header`, or None when the header cannot be read.

    For choosing a default file name or a round before the real work, which verifies every
    file in full and then reports why a file is unreadable.
    """
    try:
        return read_header(source)
    except (OSError, VerificationError):
        return None


def _parse_tensors(index: dict, payload: memoryview, what: str) -> dict[str, np.ndarray]:
    entries = []
    for name, spec in index.items():
        try:
            dtype = np.dtype(_DTYPES[spec["dtype"]]).newbyteorder("<")
            shape = tuple(int(s) for s in spec["shape"])
            start, end = (int(x) for x in spec["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise _fail(f"{what} has a malformed tensor index") from None
        if any(s < 0 for s in shape) or end - start != math.prod(shape) * dtype.itemsize:
            raise _fail(f"{what} has a malformed tensor index")
        entries.append((start, end, name, dtype, shape))
    entries.sort(key=lambda e: (e[0], e[1]))
    pos = 0
    tensors: dict[str, np.ndarray] = {}
    for start, end, name, dtype, shape in entries:
        if start != pos:
            raise _fail(f"{what} has a malformed tensor index (gap or overlap)")
        if end > len(payload):
            raise _fail(f"{what} is truncated")
        n = math.prod(shape)
        arr = (
            np.frombuffer(payload, dtype=dtype, count=n, offset=start)
            if n
            else np.zeros(0, dtype=dtype)
        )
        tensors[name] = arr.reshape(shape)
        pos = end
    if pos != len(payload):
        raise _fail(f"{what} is truncated or has trailing bytes")
    return tensors


def verify_signature(art: Artifact, digest: bytes, signer: PublicIdentity, what: str) -> None:
    try:
        signer.verify_key.verify(bytes.fromhex(art.signature), digest)
    except InvalidSignature:
        raise _fail(
            f"{what}: signature check failed (file altered or not signed by {signer.name})"
        ) from None
