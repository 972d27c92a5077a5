"""One round of local training across the ranks of a torchrun job (fedxray.distributed).

Rank 0 runs :func:`fedxray.training.loop.train_round` as a single process would: it alone
reads and writes the ledger and the checkpoints, and it decides each epoch (its recorded
seed, the state it starts from). It tells the other ranks:

* ``start``: the settings and the noise multiplier (or ``abort`` when nothing will train);
* ``epoch``: the epoch's seed and the training state (model and optimiser) to start from;
* ``done``: the round is over.

After ``done`` or ``abort`` every rank waits for the others (:func:`distributed.settle`)
before it leaves the process group.

The other ranks' side is :func:`fedxray.training.follow.follow_round`.

Within an epoch every rank draws the same Poisson sample from the same seed, takes its
contiguous share of each physical batch of sampled privacy units (:func:`share_step`),
clips its units' gradients, and the clipped sums are all-reduced before the one noise
draw, which every rank makes identically from the epoch's noise seed: the same step as in
one process.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from fedxray import distributed
from fedxray.training import checkpoint

# What rank 0 last told the other ranks: they wait for a message only while "waiting".
_lead = {"state": "waiting"}


def lead_start(settings: Any, sigma: float | None) -> None:
    """Rank 0: training begins with ``settings`` and noise multiplier ``sigma``."""
    _send({"kind": "start", "settings": settings, "sigma": sigma})


@contextlib.contextmanager
def lead_epoch(seed: str, model, optimizer):
    """Rank 0: run one epoch from ``seed``, the others with it from the same state. An epoch
    that fails leaves the others in a collective: they are stopped, not told."""
    if distributed.world().leader:
        _send({"kind": "epoch", "seed": seed,
               "state": _cpu(checkpoint.training_tensors(model, optimizer))})  # fmt: skip
        _lead["state"] = "busy"
    yield
    _lead["state"] = "waiting"


def lead_done() -> None:
    """Rank 0: the round is over (after an epoch that failed the others are not told)."""
    _close({"kind": "done"})


def abort() -> None:
    """Rank 0 stops before or between epochs (an error): the others stop quietly."""
    _close({"kind": "abort"})


def _close(message: dict) -> None:
    """The last message, when the others wait for one; then every rank settles."""
    if _lead["state"] == "waiting" and _send(message):
        distributed.settle()
    _lead["state"] = "closed"


def reset() -> None:
    _lead["state"] = "waiting"


def _send(message: dict) -> bool:
    """Rank 0: send ``message`` to the others; whether it was sent."""
    world = distributed.world()
    if world.distributed and world.leader and _lead["state"] != "closed":
        distributed.broadcast(message)
        return True
    return False


def _cpu(tensors: dict) -> dict:
    return {k: v.detach().cpu() for k, v in tensors.items()}


def share_step(idx: np.ndarray, unit_of: np.ndarray) -> tuple[np.ndarray, int, int]:
    """This rank's share of a chunk ``idx`` of a step's image indices, whole privacy units
    only (``unit_of``: each entry's unit; a unit's images are consecutive), so per-unit
    clipping is exactly that of one process: (its entries, how many entries come before it,
    how many after). The counts let a rank advance the augmentation stream past the others'
    draws."""
    world = distributed.world()
    if not world.distributed:
        return idx, 0, 0
    starts = np.flatnonzero(np.r_[True, unit_of[1:] != unit_of[:-1]]) if len(idx) else []
    bounds = np.r_[starts, len(idx)].astype(int)
    part = world.share(len(starts))
    lo, hi = int(bounds[part.start]), int(bounds[part.stop])
    return idx[lo:hi], lo, len(idx) - hi
