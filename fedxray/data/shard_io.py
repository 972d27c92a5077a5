"""Shard files: one safetensors file, checked on every read.

Tensors: ``images`` uint8 (or uint16) [N, S, S], ``labels`` int64 [N], and when present
``patients`` / ``image_ids`` as uint8 [N, W] (UTF-8, NUL-padded pseudonyms) and
``duplicate_ids`` as uint8 [D, W] (format 2: the ids of files left out as duplicates). The
``__metadata__`` entry ``fedxray`` holds JSON: kind, format, classes, image_size, count,
payload_sha256 (over every tensor's name, dtype, shape and bytes), created, report
(counts only). Nothing from source headers or file names is stored.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from datetime import UTC, datetime

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from fedxray.data.shard import Shard
from fedxray.errors import FedxrayError, VerificationError
from fedxray.fsio import read_input, write_atomic
from fedxray.geometry import DEFAULT_GEOMETRY, GEOMETRIES

KIND = "shard"
FORMAT = 2  # the newest format this version reads; a shard is written in the oldest that fits
META_KEY = "fedxray"
_TENSORS = ("images", "labels", "patients", "image_ids", "duplicate_ids")


def payload_sha256(tensors: dict[str, np.ndarray]) -> str:
    """Hash of all tensors in name order; any flipped byte or swapped tensor changes it."""
    h = hashlib.sha256(b"fedxray-shard-payload-v1\0")
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        h.update(f"{name}\0{a.dtype.str}\0{list(a.shape)}\0".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _encode_strings(values: np.ndarray, what: str) -> np.ndarray:
    raw = [str(v).encode("utf-8") for v in values]
    if any(b"\0" in r or not r for r in raw):
        raise ValueError(f"{what} must be non-empty and contain no NUL character")
    width = max((len(r) for r in raw), default=1)
    out = np.zeros((len(raw), width), dtype=np.uint8)
    for i, r in enumerate(raw):
        out[i, : len(r)] = np.frombuffer(r, dtype=np.uint8)
    return out


def _decode_strings(a: np.ndarray) -> np.ndarray:
    return np.array([bytes(row).rstrip(b"\0").decode("utf-8") for row in a], dtype=str)


def _check_shard(shard: Shard) -> None:
    n, s = len(shard.labels), shard.image_size
    if shard.images.dtype not in (np.uint8, np.uint16) or shard.images.shape != (n, s, s):
        raise ValueError(
            f"images must be uint8/uint16 [{n}, {s}, {s}], got "
            f"{shard.images.dtype} {list(shard.images.shape)}"
        )
    if shard.labels.ndim != 1 or shard.labels.dtype.kind not in "iu":
        raise ValueError("labels must be a 1-D array of class indices")
    if n and (shard.labels.min() < 0 or shard.labels.max() >= len(shard.classes)):
        raise ValueError("a label index is outside the class list")
    for name in ("patients", "image_ids"):
        v = getattr(shard, name)
        if v is not None and len(v) != n:
            raise ValueError(f"{name} has {len(v)} entries for {n} images")


def shard_bytes(shard: Shard, created: str | None = None) -> bytes:
    """The file content of a shard (write_shard writes exactly this)."""
    _check_shard(shard)
    tensors = {
        "images": np.ascontiguousarray(shard.images),
        "labels": np.ascontiguousarray(shard.labels, dtype=np.int64),
    }
    if shard.patients is not None:
        tensors["patients"] = _encode_strings(shard.patients, "patient pseudonyms")
    if shard.image_ids is not None:
        tensors["image_ids"] = _encode_strings(shard.image_ids, "image ids")
    if shard.duplicate_ids is not None and len(shard.duplicate_ids):
        tensors["duplicate_ids"] = _encode_strings(shard.duplicate_ids, "duplicate ids")
    report = shard.meta.get("report", {}) if isinstance(shard.meta, dict) else {}
    header = {
        "kind": KIND,
        # Format 1 readers refuse unknown tensors as malformed; format 2 makes them say
        # "upgrade" instead. A shard without duplicate ids stays readable by both.
        "format": 2 if "duplicate_ids" in tensors else 1,
        "classes": list(shard.classes),
        "image_size": int(shard.image_size),
        # The default is left out: such a shard reads (and hashes) as before the setting.
        **({} if shard.geometry == DEFAULT_GEOMETRY else {"geometry": shard.geometry}),
        "count": len(shard),
        "payload_sha256": payload_sha256(tensors),
        "created": created or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "pseudonyms": shard.meta.get("pseudonyms") if isinstance(shard.meta, dict) else None,
        "report": report,
    }
    return st_save(tensors, metadata={META_KEY: json.dumps(header, sort_keys=True)})


def write_shard(path: str | os.PathLike, shard: Shard, force: bool = False) -> None:
    """Write atomically (complete file or none), readable by the owner only: it holds images."""
    write_atomic(path, shard_bytes(shard), force=force, mode=0o600)


def read_shard(path: str | os.PathLike) -> Shard:
    """Read and verify a shard; VerificationError when corrupt, truncated or not a shard."""
    return shard_from_bytes(read_input(path, "shard"), path)


def is_shard(data: bytes) -> bool:
    """Whether ``data`` claims to be a shard (its header says so); nothing is verified."""
    try:
        _header(data, "")
    except VerificationError:
        return False
    except FedxrayError:  # a newer format: reading it says so
        return True
    return True


def shard_from_bytes(data: bytes, path: str | os.PathLike = "shard") -> Shard:
    """:func:`read_shard` of a file's bytes; ``path`` names the file in messages."""
    header = _header(data, path)
    try:
        tensors = st_load(data)
    except Exception:  # safetensors raises its own error types for damaged files
        raise VerificationError(f"corrupt or truncated shard: {path}") from None
    if payload_sha256(tensors) != header.get("payload_sha256"):
        raise VerificationError(f"corrupt shard: its content does not match its checksum: {path}")
    return _to_shard(tensors, header, path)


def _header(data: bytes, path) -> dict:
    not_shard = VerificationError(f"not a fedxray shard (or damaged): {path}")
    if len(data) < 9 or data[8:9] != b"{":  # safetensors: size, then a JSON object
        raise not_shard
    (size,) = struct.unpack("<Q", data[:8])
    if size > len(data) - 8:
        raise VerificationError(f"truncated shard: {path}")
    try:
        st_header = json.loads(data[8 : 8 + size])
        header = json.loads(st_header["__metadata__"][META_KEY])
    except (ValueError, KeyError, TypeError):
        raise not_shard from None
    if not isinstance(header, dict):
        raise not_shard
    kind = header.get("kind")
    if kind != KIND:
        raise VerificationError(f"{path} is a {kind or 'unknown'} file, not a shard")
    fmt = header.get("format")
    if not isinstance(fmt, int) or fmt < 1:
        raise not_shard
    if fmt > FORMAT:
        raise FedxrayError(
            f"{path} is shard format {fmt}; this fedxray reads formats 1 to {FORMAT}",
            hint="upgrade fedxray",
        )
    return header


def _to_shard(tensors: dict[str, np.ndarray], header: dict, path) -> Shard:
    bad = VerificationError(f"malformed shard: {path}")
    if set(tensors) - set(_TENSORS) or "images" not in tensors or "labels" not in tensors:
        raise bad
    if "duplicate_ids" in tensors and header.get("format") < 2:
        raise bad
    classes, size = header.get("classes"), header.get("image_size")
    geometry = header.get("geometry", DEFAULT_GEOMETRY)
    if not isinstance(classes, list) or not isinstance(size, int) or geometry not in GEOMETRIES:
        raise bad
    images, labels = tensors["images"], tensors["labels"]
    n = len(labels)
    patients = _decode_strings(tensors["patients"]) if "patients" in tensors else None
    ids = _decode_strings(tensors["image_ids"]) if "image_ids" in tensors else None
    dups = _decode_strings(tensors["duplicate_ids"]) if "duplicate_ids" in tensors else None
    shard = Shard(
        images=images,
        labels=labels,
        classes=[str(c) for c in classes],
        image_size=size,
        patients=patients,
        image_ids=ids,
        duplicate_ids=dups,
        meta={k: v for k, v in header.items() if k not in ("kind",)},
        geometry=geometry,
    )
    try:
        _check_shard(shard)
    except ValueError:
        raise bad from None
    if labels.dtype != np.int64 or header.get("count") != n:
        raise bad
    return shard
