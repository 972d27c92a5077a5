"""Signed artifact files: tensors in the safetensors layout plus a signed fedxray header.

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

import hashlib
import json
import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np
from cryptography.exceptions import InvalidSignature
from safetensors.numpy import save as _safetensors_save

from fedxray.errors import VerificationError

if TYPE_CHECKING:
    from fedxray.keys import PrivateIdentity, PublicIdentity
    from fedxray.plan import Plan

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
        return {
            "format": self.format,
            "kind": self.kind,
            "federation": self.federation,
            "round": self.round,
            "sender": self.sender,
            "created": self.created,
            "parent": self.parent,
            "payload_sha256": self.payload_sha256,
            "meta": self.meta,
        }


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


def file_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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
) -> bytes:
    """Serialise and sign an artifact; returns the file's bytes."""
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
        created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        parent=parent,
        payload_sha256="0" * 64,  # patched in place below, once the payload is laid out
        meta=meta,
    )
    unsigned = _safetensors_save(
        arrays,
        metadata={"fedxray": canonical_json(header.to_dict()), "signature": _PLACEHOLDER},
    )
    head_end = 8 + struct.unpack("<Q", unsigned[:8])[0]
    head = bytearray(unsigned[:head_end])
    sig_marker = f'"{_PLACEHOLDER}"'.encode()
    if head.count(_PAYLOAD_MARK) != 1 or head.count(sig_marker) != 1:
        raise RuntimeError("unexpected safetensors layout")
    payload = memoryview(unsigned)[head_end:]
    pos = head.index(_PAYLOAD_MARK) + len(_PAYLOAD_MARK) - 64
    head[pos : pos + 64] = hashlib.sha256(payload).hexdigest().encode()
    sig_start = head.index(sig_marker) + 1
    signature = signer.sign(_signed_digest(bytes(head), sig_start)).hex()
    head[sig_start : sig_start + SIG_HEX_LEN] = signature.encode()
    # One copy of the payload: the patched header and the data, joined.
    return b"".join((head, payload))


def _fail(msg: str) -> VerificationError:
    return VerificationError(msg)


def parse_unverified(data: bytes, what: str = "file") -> tuple[Artifact, bytes]:
    """Check the container's structure and return (artifact, signed digest).

    Nothing here is trusted yet: callers must verify the signature over the digest.
    """
    if len(data) < 8:
        raise _fail(f"{what} is empty or truncated (not a fedxray artifact)")
    (hlen,) = struct.unpack("<Q", data[:8])
    if hlen > MAX_HEADER or 8 + hlen > len(data):
        raise _fail(f"{what} is truncated or not a fedxray artifact")
    head_bytes = bytes(data[8 : 8 + hlen])
    try:
        head = json.loads(head_bytes)
    except (UnicodeDecodeError, ValueError):
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
    marker = f'"{sig}"'.encode()
    if head_bytes.count(marker) != 1:
        raise _fail(f"{what} has a malformed signature")
    message = _signed_digest(data[: 8 + hlen], 8 + head_bytes.index(marker) + 1)
    try:
        h = json.loads(hdr_json)
        header = Header(
            kind=str(h["kind"]),
            federation=str(h["federation"]),
            round=int(h["round"]),
            sender=str(h["sender"]),
            created=str(h["created"]),
            parent=str(h["parent"]),
            payload_sha256=str(h["payload_sha256"]),
            meta=dict(h["meta"]),
            format=int(h["format"]),
        )
    except (ValueError, KeyError, TypeError):
        raise _fail(f"{what} has a malformed fedxray header") from None
    if header.format != FORMAT_VERSION:
        raise _fail(
            f"{what} has format version {header.format}; this fedxray reads {FORMAT_VERSION}"
        )
    payload = memoryview(data).toreadonly()[8 + hlen :]
    tensors = _parse_tensors(head, payload, what)
    if hashlib.sha256(payload).hexdigest() != header.payload_sha256:
        raise _fail(f"{what} is corrupt: payload checksum mismatch")
    return Artifact(header, tensors, artifact_id(bytes(data[: 8 + hlen])), sig), message


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


def load_artifact(
    data: bytes,
    *,
    plan: Plan,
    kind: str,
    round: int | None = None,
    sender: str | Iterable[str] | None = None,
    parent: str | None = None,
    what: str = "file",
) -> Artifact:
    """Verify ``data`` against the plan and the caller's expectations, then return it.

    Checks, in order: structure and payload hash, kind, federation, sender is a member (and one of
    ``sender`` if given), signature with the sender's key from the plan, round, parent.
    """
    art, message = parse_unverified(data, what)
    h = art.header
    if h.kind != kind:
        raise _fail(f"{what} is a {h.kind!r} file, expected {kind!r}")
    if h.federation != plan.federation_id:
        raise _fail(
            f"{what} belongs to federation {h.federation[:12]}, not to {plan.name} "
            f"({plan.federation_id[:12]})"
        )
    member = plan.member(h.sender)
    if member is None:
        raise _fail(f"{what} was sent by {h.sender!r}, who is not a member of {plan.name}")
    if sender is not None:
        allowed = {sender} if isinstance(sender, str) else set(sender)
        if h.sender not in allowed:
            raise _fail(f"{what} was sent by {h.sender!r}, expected {', '.join(sorted(allowed))}")
    verify_signature(art, message, member, what)
    if round is not None and h.round != round:
        raise _fail(f"{what} is for round {h.round}, expected round {round}")
    if parent is not None and h.parent != parent:
        raise _fail(
            f"{what} was made from a different parent ({h.parent[:12]}, expected {parent[:12]})"
        )
    return art


def check_tensor_layout(
    art: Artifact, layout: dict[str, tuple[tuple[int, ...], str]], what: str
) -> None:
    """Tensor names, shapes and dtypes must be exactly ``layout``; all values finite."""
    names = set(art.tensors)
    if names != set(layout):
        missing = sorted(set(layout) - names)[:3]
        extra = sorted(names - set(layout))[:3]
        raise _fail(
            f"{what} does not match the plan's model (missing {missing}, unexpected {extra})"
        )
    for name, (shape, dtype) in layout.items():
        t = art.tensors[name]
        if tuple(t.shape) != tuple(shape) or t.dtype != np.dtype(dtype):
            raise _fail(
                f"{what}: tensor {name} is {t.dtype}{list(t.shape)}, the plan's model needs "
                f"{np.dtype(dtype)}{list(shape)}"
            )
        if t.dtype.kind == "f" and not np.isfinite(t).all():
            raise _fail(f"{what}: tensor {name} has non-finite values")
