"""Per-epoch training checkpoints: one safetensors file with a JSON header (local only).

A checkpoint lets a crashed round continue from its last finished epoch. It never leaves the
site (it is a model trained on private data without aggregation) and it is only reused when
it was made from the same federation, round, global model, settings and shard, and from the
epochs the privacy ledger holds now (their record ids).
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from fedxray.data.shard import Shard
from fedxray.errors import FedxrayError
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


def training_tensors(model, optimizer) -> dict[str, torch.Tensor]:
    """The state an epoch starts from and ends with: weights and optimiser state, by name."""
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    for idx, st in optimizer.state_dict()["state"].items():
        for name, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"opt/{idx}/{name}"] = v
    return tensors


def tensors_hash(tensors: dict[str, torch.Tensor]) -> str:
    """Content hash of a training state (as :func:`training_tensors` names it)."""
    return state_hash({k: v.detach().to("cpu").numpy() for k, v in tensors.items()})


def load_training_state(tensors: dict[str, torch.Tensor], model, optimizer) -> None:
    """Put a state from :func:`training_tensors` (or a checkpoint) back into the objects."""
    model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model/")}
    model.load_state_dict(model_state, strict=True)
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("opt/"):
            _, idx, name = k.split("/", 2)
            opt_state.setdefault(int(idx), {})[name] = v.clone()
    sd = optimizer.state_dict()
    sd["state"] = opt_state
    optimizer.load_state_dict(sd)


def snapshot(model, optimizer) -> dict[str, torch.Tensor]:
    """A copy of the training state, to go back to."""
    return {k: v.detach().clone() for k, v in training_tensors(model, optimizer).items()}


class Resume:
    """A round's checkpoint: the model and optimiser after its latest finished epoch.

    ``keys`` say what the round was made from (federation, round, global model, settings,
    shard, noise); ``chain`` lists the ledger records (ids) of the epochs it embodies. A
    checkpoint with other keys, or whose records are not the ledger's current ones for
    those epochs, is not built on.
    """

    def __init__(self, folder: str | Path | None, federation_id: str, round_number: int, keys):
        self.keys = keys
        self.path = None if folder is None else checkpoint_path(folder, federation_id, round_number)

    def find(self, chain: Callable[[int], list]) -> tuple[int, list[float], dict] | None:
        """(epochs done, their losses, the state's tensors) of a usable checkpoint, or None.

        ``chain(n)`` gives the ledger's record ids for epochs 1..n."""
        found = None if self.path is None else load(self.path)
        if found is None:
            return None
        tensors, meta = found
        if any(meta.get(k) != v for k, v in self.keys.items()):
            return None  # another global model, settings or data: start the round afresh
        epoch = int(meta.get("epoch", 0))
        if epoch < 1 or meta.get("chain") != chain(epoch):
            return None  # the ledger does not account for it: do not build on it
        return epoch, [float(v) for v in meta["losses"]], tensors

    def make_folder(self) -> None:
        """Create the checkpoint folder: only once training will run, so that a refused run
        leaves nothing behind."""
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise FedxrayError(
                f"cannot create checkpoint folder {self.path.parent}: {e.strerror}"
            ) from None

    def save(self, epoch: int, losses: list[float], tensors: dict, chain: list) -> None:
        if self.path is not None:
            save(self.path, tensors, dict(self.keys, epoch=epoch, losses=losses, chain=chain))
