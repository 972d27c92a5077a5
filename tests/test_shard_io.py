"""Shard files: round trip, atomic refusal to overwrite, integrity checks."""

from __future__ import annotations

import json
import stat
import struct

import numpy as np
import pytest
from safetensors.numpy import save as st_save

from fedxray.data.shard import Shard
from fedxray.data.shard_io import FORMAT, payload_sha256, read_shard, shard_bytes, write_shard
from fedxray.errors import FedxrayError, VerificationError


def _shard(n: int = 5, size: int = 8, patients: bool = True) -> Shard:
    rng = np.random.default_rng(0)
    return Shard(
        images=rng.integers(0, 256, (n, size, size), dtype=np.uint8),
        labels=np.arange(n, dtype=np.int64) % 3,
        classes=["normal", "bacterial", "viral"],
        image_size=size,
        patients=np.array([f"{i // 2:032x}" for i in range(n)]) if patients else None,
        image_ids=np.array([f"{i + 100:032x}" for i in range(n)]),
        meta={"report": {"files_seen": n + 2}, "pseudonyms": "random"},
    )


def test_round_trip(tmp_path):
    s = _shard()
    write_shard(tmp_path / "a.shard", s)
    r = read_shard(tmp_path / "a.shard")
    assert np.array_equal(r.images, s.images) and r.images.dtype == np.uint8
    assert np.array_equal(r.labels, s.labels) and r.labels.dtype == np.int64
    assert list(r.patients) == list(s.patients) and list(r.image_ids) == list(s.image_ids)
    assert r.classes == s.classes and r.image_size == 8 and len(r) == 5
    assert r.num_patients == 3
    assert r.meta["report"] == {"files_seen": 7} and r.meta["format"] == 1
    assert r.meta["pseudonyms"] == "random" and r.meta["created"].endswith("Z")
    # it holds patient images: owner-only permissions
    assert stat.S_IMODE((tmp_path / "a.shard").stat().st_mode) == 0o600


def test_round_trip_without_patients_and_uint16(tmp_path):
    s = _shard(patients=False)
    s.images = s.images.astype(np.uint16) * 257
    write_shard(tmp_path / "a.shard", s)
    r = read_shard(tmp_path / "a.shard")
    assert r.patients is None and r.images.dtype == np.uint16
    assert np.array_equal(r.images, s.images)


def test_duplicate_ids_round_trip_as_format_2(tmp_path):
    s = _shard()
    s.duplicate_ids = np.array([f"{i + 900:032x}" for i in range(2)])
    data = shard_bytes(s)
    (tmp_path / "a.shard").write_bytes(data)
    r = read_shard(tmp_path / "a.shard")
    assert list(r.duplicate_ids) == list(s.duplicate_ids) and r.meta["format"] == 2
    # The tensor is covered by the checksum, and a format 1 header may not carry it.
    (tmp_path / "old").write_bytes(_with_header(data, format=1))
    with pytest.raises(VerificationError, match="malformed"):
        read_shard(tmp_path / "old")
    s.duplicate_ids = np.array([], dtype=str)  # nothing left out: format 1, as before
    (tmp_path / "b.shard").write_bytes(shard_bytes(s))
    r = read_shard(tmp_path / "b.shard")
    assert r.duplicate_ids is None and r.meta["format"] == 1


def test_refuses_to_overwrite(tmp_path):
    write_shard(tmp_path / "a.shard", _shard())
    with pytest.raises(FedxrayError, match="exists"):
        write_shard(tmp_path / "a.shard", _shard(3))
    assert len(read_shard(tmp_path / "a.shard")) == 5
    write_shard(tmp_path / "a.shard", _shard(3), force=True)
    assert len(read_shard(tmp_path / "a.shard")) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["a.shard"]  # no temporary files left


def test_flipped_byte_is_detected(tmp_path):
    write_shard(tmp_path / "a.shard", _shard())
    data = bytearray((tmp_path / "a.shard").read_bytes())
    data[-20] ^= 0x01  # inside the tensor data
    (tmp_path / "a.shard").write_bytes(bytes(data))
    with pytest.raises(VerificationError, match="checksum"):
        read_shard(tmp_path / "a.shard")


@pytest.mark.parametrize("keep", [0, 5, 100, -10])
def test_truncated_is_detected(tmp_path, keep):
    write_shard(tmp_path / "a.shard", _shard())
    data = (tmp_path / "a.shard").read_bytes()
    (tmp_path / "a.shard").write_bytes(data[:keep])
    with pytest.raises(VerificationError):
        read_shard(tmp_path / "a.shard")


def test_not_a_shard(tmp_path):
    (tmp_path / "x").write_text("hello, I am a text file, long enough to look like a header")
    with pytest.raises(VerificationError, match="not a fedxray shard"):
        read_shard(tmp_path / "x")
    plain = st_save({"a": np.zeros(3, np.float32)})  # a safetensors file, not ours
    (tmp_path / "y").write_bytes(plain)
    with pytest.raises(VerificationError, match="not a fedxray shard"):
        read_shard(tmp_path / "y")
    with pytest.raises(FedxrayError, match="not found"):
        read_shard(tmp_path / "missing.shard")


def _with_header(data: bytes, **changes) -> bytes:
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    meta = json.loads(header["__metadata__"]["fedxray"])
    meta.update(changes)
    header["__metadata__"]["fedxray"] = json.dumps(meta)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data[8 + size :]


def test_other_kind_and_newer_format(tmp_path):
    data = shard_bytes(_shard())
    (tmp_path / "m").write_bytes(_with_header(data, kind="model"))
    with pytest.raises(VerificationError, match="model file, not a shard"):
        read_shard(tmp_path / "m")
    (tmp_path / "f").write_bytes(_with_header(data, format=FORMAT + 1))
    with pytest.raises(FedxrayError, match=f"format {FORMAT + 1}") as ei:
        read_shard(tmp_path / "f")
    assert not isinstance(ei.value, VerificationError)
    (tmp_path / "ok").write_bytes(_with_header(data, note="extra keys are fine"))
    assert len(read_shard(tmp_path / "ok")) == 5


def test_header_lies_about_classes(tmp_path):
    # labels index 3 classes; a header edited to list 2 must be refused
    (tmp_path / "c").write_bytes(_with_header(shard_bytes(_shard()), classes=["a", "b"]))
    with pytest.raises(VerificationError, match="malformed"):
        read_shard(tmp_path / "c")


def test_payload_hash_covers_names_and_shapes():
    a = np.arange(6, dtype=np.uint8)
    assert payload_sha256({"x": a}) != payload_sha256({"y": a})
    assert payload_sha256({"x": a}) != payload_sha256({"x": a.reshape(2, 3)})


@pytest.mark.parametrize(
    "change",
    [
        {"images": np.zeros((5, 8, 9), np.uint8)},
        {"images": np.zeros((5, 8, 8), np.float32)},
        {"labels": np.array([0, 1, 2, 3, 0])},
        {"labels": np.array([0, 1, -1, 0, 0])},
        {"patients": np.array(["a", "b"])},
    ],
)
def test_write_rejects_inconsistent_shards(tmp_path, change):
    s = _shard()
    for k, v in change.items():
        setattr(s, k, v)
    with pytest.raises(ValueError):
        write_shard(tmp_path / "a.shard", s)
    assert not (tmp_path / "a.shard").exists()
