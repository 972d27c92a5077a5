"""The server optimiser's state between rounds: a coordinator-local safetensors file.

It holds the state before and after the last round unmasked (tensors ``before/...`` and
``after/...``) and that round's number and parent model. Unmasking the same round again starts
from ``before`` and so recomputes the same step instead of applying it twice; an older round
is refused.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save

from fedxray.errors import FedxrayError, ProtocolRefusal
from fedxray.fsio import write_atomic
from fedxray.plan import Plan
from fedxray.secagg.server import ServerConfig

SERVER_STATE_FORMAT = "fedxray-server-state-v1"


def server_state_path(state_dir: str | os.PathLike, plan: Plan) -> Path:
    """Where the coordinator keeps the optimiser state: beside its secagg state file."""
    tag = hashlib.sha256(plan.federation_id.encode()).hexdigest()[:12]
    return Path(state_dir) / f"{plan.coordinator.name}.{tag}.server.safetensors"


def load_server_state(
    path: Path | None, plan: Plan, cfg: ServerConfig, round_number: int, parent: str, fresh: bool
) -> dict[str, np.ndarray]:
    """The optimiser state to start round ``round_number`` (made from model ``parent``) from.

    A missing file means a fresh start, which is refused mid-run unless ``fresh`` is set.
    """
    if path is None:
        if cfg.slots:
            raise FedxrayError(f"the {cfg.optimizer} server optimiser needs a server state file")
        return {}
    if not path.exists():
        if cfg.slots and round_number > 1 and not fresh:
            raise FedxrayError(
                f"server state {path} is missing, but round {round_number} continues a "
                f"{cfg.optimizer} run",
                hint="restore the file, or start the optimiser state afresh on purpose",
                option="fresh_server_state",
            )
        return {}
    try:
        with safe_open(str(path), framework="np") as f:
            info = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open API
        st_round = int(info.get("round", "-1"))
    except (SafetensorError, OSError, ValueError) as e:
        raise FedxrayError(f"server state {path} is unreadable ({e})") from None
    if info.get("format") != SERVER_STATE_FORMAT or info.get("federation") != plan.federation_id:
        raise FedxrayError(f"{path} is not this federation's server state")
    if info.get("optimizer") != cfg.optimizer:
        raise FedxrayError(
            f"server state {path} belongs to the {info.get('optimizer')} optimiser, "
            f"the plan uses {cfg.optimizer}"
        )
    if st_round == round_number and info.get("parent") == parent:
        prefix = "before/"  # the same round again (e.g. the model file was lost): redo it
    elif st_round < round_number:
        prefix = "after/"
    else:
        raise ProtocolRefusal(
            f"the server state already includes round {st_round}; this sum is for round "
            f"{round_number}"
        )
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def save_server_state(
    path: Path,
    plan: Plan,
    cfg: ServerConfig,
    round_number: int,
    parent: str,
    before: Mapping[str, np.ndarray],
    after: Mapping[str, np.ndarray],
) -> None:
    """Record the state before and after ``round_number`` (written atomically, mode 0600)."""
    tensors = {f"before/{k}": np.ascontiguousarray(v) for k, v in before.items()}
    tensors.update({f"after/{k}": np.ascontiguousarray(v) for k, v in after.items()})
    info = {
        "format": SERVER_STATE_FORMAT,
        "federation": plan.federation_id,
        "optimizer": cfg.optimizer,
        "round": str(round_number),
        "parent": parent,
    }
    write_atomic(path, save(tensors, metadata=info), force=True, mode=0o600)
