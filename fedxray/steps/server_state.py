"""The server optimiser's state between rounds: a coordinator-local safetensors file.

It holds the state before and after the last round unmasked (tensors ``before/...`` and
``after/...``) and that round's number and parent model. Unmasking the same round again starts
from ``before`` and so recomputes the same step instead of applying it twice; an older round
is refused.

With the plan's ``server.average_last`` K > 1 it also holds the averaging window: the last K
global models that unmask made (``window/I/...``, oldest first, with their rounds and hashes
in the metadata), the newest being the one the last round unmasked made. Unmasking that round
again starts from the window without it; the next round from the whole window. Abandoning a
round changes nothing here (its re-issued model has the weights already in the window).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class WindowModel:
    """A global model in the averaging window: its round (the round that trains from it),
    its file's hash and its weights."""

    round: int
    digest: str
    tensors: Mapping[str, np.ndarray]


def load_server_state(
    path: Path | None, plan: Plan, cfg: ServerConfig, round_number: int, parent: str, fresh: bool
) -> dict[str, np.ndarray]:
    """The optimiser state to start round ``round_number`` (made from model ``parent``) from.

    A missing file means a fresh start, which is refused mid-run unless ``fresh`` is set.
    """
    return load_server_round(path, plan, cfg, round_number, parent, fresh)[0]


def load_server_round(
    path: Path | None, plan: Plan, cfg: ServerConfig, round_number: int, parent: str, fresh: bool
) -> tuple[dict[str, np.ndarray], list[WindowModel]]:
    """The optimiser state and the averaging window to start round ``round_number`` from."""
    averaging = plan.settings.server.average_last > 1
    needs = f"the {cfg.optimizer} server optimiser" if cfg.slots else None
    needs = needs or ("averaging the last global models" if averaging else None)
    if path is None:
        if needs:
            raise FedxrayError(f"{needs} needs a server state file")
        return {}, []
    if not path.exists():
        if needs and round_number > 1 and not fresh:
            raise FedxrayError(
                f"server state {path} is missing, but round {round_number} continues a run "
                f"with {needs}",
                hint="restore the file, or start the server state afresh on purpose",
                option="fresh_server_state",
            )
        return {}, []
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
    window = _window(info, tensors, path)
    if st_round == round_number and info.get("parent") == parent:
        prefix = "before/"  # the same round again (e.g. the model file was lost): redo it
        window = window[:-1]  # without the model that the first run made
    elif st_round < round_number:
        prefix = "after/"
    else:
        raise ProtocolRefusal(
            f"the server state already includes round {st_round}; this sum is for round "
            f"{round_number}"
        )
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}, window


def _window(info: Mapping[str, str], tensors: Mapping[str, np.ndarray], path: Path):
    try:
        entries = json.loads(info.get("window", "[]"))
        return [
            WindowModel(
                int(e["round"]),
                str(e["digest"]),
                {k.split("/", 2)[2]: v for k, v in tensors.items() if k.startswith(f"window/{i}/")},
            )
            for i, e in enumerate(entries)
        ]
    except (ValueError, TypeError, KeyError):
        raise FedxrayError(f"server state {path} has a malformed averaging window") from None


def next_window(
    window: Sequence[WindowModel], parent: Mapping[str, np.ndarray], new: WindowModel, k: int
) -> list[WindowModel]:
    """The last ``k`` global models once ``new`` is made from the model ``parent``.

    The window must end with the weights the round started from. A model that an interrupted
    unmask recorded, after which its round was abandoned instead, never went out: it is
    dropped. Any other gap is refused rather than averaged over.
    """
    window = list(window)
    if window and not _same(window[-1].tensors, parent):
        window.pop()
        if window and not _same(window[-1].tensors, parent):
            raise FedxrayError(
                "the server state's averaging window does not end with this round's global model",
                hint="restore the server state, or start it afresh on purpose",
                option="fresh_server_state",
            )
    return [*window, new][-k:]


def _same(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[n], b[n]) for n in a)


def save_server_state(
    path: Path,
    plan: Plan,
    cfg: ServerConfig,
    round_number: int,
    parent: str,
    before: Mapping[str, np.ndarray],
    after: Mapping[str, np.ndarray],
    window: Sequence[WindowModel] = (),
) -> None:
    """Record the state before and after ``round_number`` and the averaging window after it
    (written atomically, mode 0600)."""
    tensors = {f"before/{k}": np.ascontiguousarray(v) for k, v in before.items()}
    tensors.update({f"after/{k}": np.ascontiguousarray(v) for k, v in after.items()})
    for i, m in enumerate(window):
        tensors.update({f"window/{i}/{k}": np.ascontiguousarray(v) for k, v in m.tensors.items()})
    info = {
        "format": SERVER_STATE_FORMAT,
        "federation": plan.federation_id,
        "optimizer": cfg.optimizer,
        "round": str(round_number),
        "parent": parent,
    }
    if window:
        info["window"] = json.dumps([{"round": m.round, "digest": m.digest} for m in window])
    write_atomic(path, save(tensors, metadata=info), force=True, mode=0o600)
