"""Per-epoch training checkpoints: one safetensors file with a JSON header (local only).

A checkpoint lets a crashed round continue from its last finished epoch. It never leaves the
site (it is a model trained on private data without aggregation) and it is only reused when
it was made from the same federation, round, global model, settings and shard.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from fedxray.data.shard import Shard
from fedxray.fsio import write_atomic

FORMAT = "fedxray-train-checkpoint"
VERSION = 1


def checkpoint_path(folder: str | Path, federation_id: str, round_number: int) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", federation_id)[:64]
    tag = hashlib.sha256(federation_id.encode()).hexdigest()[:8]  # distinct ids stay distinct
    return Path(folder) / f"{safe}-{tag}-round{int(round_number)}.ckpt.safetensors"


def save(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    header = {"fedxray": json.dumps(dict(meta, format=FORMAT, version=VERSION), sort_keys=True)}
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    write_atomic(path, st_save(cpu, metadata=header), force=True, mode=0o600)


def load(path: Path) -> tuple[dict[str, torch.Tensor], dict] | None:
    """(tensors, meta), or None when absent or unusable (the round then starts afresh)."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    try:
        (n,) = struct.unpack("<Q", data[:8])
        meta = json.loads(json.loads(data[8 : 8 + n])["__metadata__"]["fedxray"])
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            return None
        return st_load(data), meta
    except (struct.error, ValueError, KeyError, TypeError, SafetensorError):
        return None


def state_hash(state: dict[str, np.ndarray]) -> str:
    """Content hash of a name -> array mapping (names, shapes, dtypes and bytes)."""
    h = hashlib.sha256()
    for name in sorted(state):
        a = np.ascontiguousarray(state[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}\n".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def shard_hash(shard: Shard) -> str:
    parts = {"images": shard.images, "labels": shard.labels}
    if shard.patients is not None:
        parts["patients"] = np.asarray(shard.patients).astype(str).astype("U")
    h = hashlib.sha256(state_hash(parts).encode())
    h.update(json.dumps(list(shard.classes)).encode())
    return h.hexdigest()
