"""Several processes for one command: torch.distributed, as launched by ``torchrun``.

A site with many CPU cores or several GPUs runs ``torchrun --nproc-per-node N -m fedxray
train-local ...`` (or ``fedxray train-local --nproc N``, which starts the same through
torch.distributed's own launcher). Each process is a *rank*; the process group is gloo on
the CPU and NCCL on GPUs. Rank 0 leads: it alone reads and writes the site's files (ledger,
checkpoints, site record, update, reports); the other ranks follow its messages and never
write anything.

Outside torchrun (no ``WORLD_SIZE`` in the environment, or 1) every function here is the
single-process no-op, so the library runs unchanged.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import signal
import sys
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedxray.errors import EXIT_WORKER, FedxrayError

# How long a rank waits in a collective (for a peer that hangs) before giving up. A rank that
# dies is noticed at once (its connections close); this bounds the wait for one that hangs,
# and for rank 0 while it verifies the inputs and checks the budget before training.
TIMEOUT_ENV = "FEDXRAY_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 300
RESUME_HINT = "run the same command again: it resumes from the last finished epoch"
# Set for the processes that `--nproc` starts: their launcher reports a lost process.
LAUNCHED_ENV = "FEDXRAY_NPROC_LAUNCHED"


class WorkerLost(FedxrayError):
    """Another process of a multi-process run stopped (died, was killed, or timed out)."""

    exit_code = EXIT_WORKER


def env_rank() -> int:
    """This process's rank as torchrun set it (0 outside torchrun); no torch import."""
    return int(os.environ.get("RANK", "0") or 0)


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def is_follower() -> bool:
    """Whether this process is a rank other than 0: it must stay silent and write nothing."""
    return env_world_size() > 1 and env_rank() != 0


@dataclass(frozen=True)
class World:
    """The processes of one run: this one's rank, how many there are, the tensors' device."""

    rank: int = 0
    size: int = 1
    device: Any = None  # the device this rank computes on (torch.device) when joined

    @property
    def leader(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def share(self, count: int) -> slice:
        """This rank's contiguous share of ``count`` items (whole items, in order): the
        first ``count % size`` ranks take one more."""
        base, extra = divmod(count, self.size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))


_world = World()


def world() -> World:
    """The run this process belongs to (a single process until :func:`join`)."""
    return _world


def join(device: str) -> World:
    """Join the process group that torchrun describes in the environment: gloo for the CPU,
    NCCL for CUDA (each rank then takes GPU LOCAL_RANK). Outside torchrun: one process."""
    global _world
    size = env_world_size()
    if size <= 1 or _world.distributed:
        return _world
    import torch
    import torch.distributed as dist

    from fedxray.devices import resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda":
        if dev.index is not None:
            raise FedxrayError(
                f"with several processes each one takes its own GPU; {device} names one",
                option="device",
                value="cuda",
            )
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
        backend = "nccl"
    elif dev.type == "cpu":
        backend = "gloo"
    else:
        raise FedxrayError(f"device {device} cannot run several processes", hint="use cpu or cuda")
    seconds = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=seconds))
    except (RuntimeError, ValueError) as e:
        raise WorkerLost(f"the processes of this run could not connect: {_first_line(e)}") from e
    _world = World(dist.get_rank(), dist.get_world_size(), dev)
    return _world


def leave() -> None:
    """Leave the process group (at the end of a command)."""
    global _world
    if not _world.distributed:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        with contextlib.suppress(Exception):  # a peer already gone: nothing left to close
            dist.destroy_process_group()
    _world = World()


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _collective(fn, *args):
    """Run a collective; a peer that died or hung becomes one clear error (exit 6)."""
    try:
        return fn(*args)
    except (RuntimeError, ConnectionError) as e:
        if os.environ.get(LAUNCHED_ENV):  # the launcher says which process stopped, once
            raise SystemExit(EXIT_WORKER) from e
        raise WorkerLost(
            "another process of this run stopped; the step was abandoned on every process",
            hint=RESUME_HINT,
        ) from e


def settle() -> None:
    """Wait until every rank has got here: the run's last message has reached every rank.
    Only where all ranks end a stage together (never after an error mid-step). Without it a
    rank could close its connections while another still received from it, and gloo then
    aborts a process at exit (SIGABRT) after it has done its work."""
    if not _world.distributed:
        return
    import torch.distributed as dist

    _collective(dist.barrier)


# -- training ------------------------------------------------------------------------------
def all_reduce_sum(tensors: Sequence) -> None:
    """Add up ``tensors`` (in place) over all ranks; every rank gets the same sums."""
    if not _world.distributed:
        return
    import torch.distributed as dist

    for t in tensors:
        _collective(dist.all_reduce, t)


def sum_floats(*values: float) -> tuple[float, ...]:
    """The sums of a few numbers over all ranks (e.g. loss statistics), in float64."""
    if not _world.distributed:
        return tuple(float(v) for v in values)
    import torch

    t = torch.tensor(values, dtype=torch.float64, device=_world.device)
    all_reduce_sum([t])
    return tuple(float(v) for v in t.cpu())


def broadcast(message: Any = None) -> Any:
    """Rank 0's ``message`` (any picklable object) on every rank. Only between the processes
    of one run, which torchrun started from one command line: never from a file."""
    if not _world.distributed:
        return message
    import torch.distributed as dist

    box = [message if _world.leader else None]
    _collective(dist.broadcast_object_list, box, 0, None, _world.device)
    return box[0]


# -- inference -----------------------------------------------------------------------------
def gather_rows(rows: np.ndarray) -> np.ndarray:
    """Every rank's rows (this rank's :meth:`World.share` of the items), concatenated in rank
    order: the rows of all items in their original order, on every rank."""
    if not _world.distributed:
        return rows
    import torch.distributed as dist

    parts: list[Any] = [None] * _world.size
    _collective(dist.all_gather_object, parts, rows)
    settle()
    return np.concatenate([p for p in parts if len(p)])  # a rank may have had no items


# -- launching -----------------------------------------------------------------------------
def launch(argv: Sequence[str], nproc: int) -> int:
    """Run ``fedxray ARGV`` in ``nproc`` processes with torch.distributed's launcher (what
    ``torchrun --standalone --nproc-per-node N -m fedxray ARGV`` does); the exit code.

    Rank 0 reports as a single process would, and its exit code (e.g. 4, budget) is the
    run's. When another rank fails or is killed, every rank stops and this raises WorkerLost.
    """
    from torch.distributed.elastic.multiprocessing.api import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if env_world_size() > 1:
        raise FedxrayError("--nproc under torchrun: let torchrun start the processes")
    # The launcher's own log lines (which rank got which signal) are not for the user.
    logging.getLogger("torch.distributed").setLevel(logging.CRITICAL)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ[LAUNCHED_ENV] = "1"
    # The launcher keeps a folder of its own per run (error files); left to it, one more
    # torchelastic_* folder would stay in the temporary folder after every run.
    with tempfile.TemporaryDirectory(prefix="fedxray-nproc-") as launcher_dir:
        config = LaunchConfig(
            min_nodes=1,
            max_nodes=1,
            nproc_per_node=nproc,
            run_id=f"fedxray-{uuid.uuid4().hex[:12]}",
            rdzv_backend="c10d",
            rdzv_endpoint="localhost:0",
            max_restarts=0,
            monitor_interval=0.1,
            logs_specs=DefaultLogsSpecs(log_dir=launcher_dir),
        )
        try:
            elastic_launch(config, sys.executable)("-m", "fedxray", *argv)
        except ChildFailedError as e:
            return failure_code(e.failures, nproc)
    return 0


def failure_code(failures: dict, nproc: int) -> int:
    """The exit code of a run in which some ranks failed: rank 0's own when it stopped with a
    fedxray error (it has said why; the launcher then stops the others); else WorkerLost
    naming the process that stopped first: one killed by a signal, else one that failed on
    its own, rather than one that only lost a peer (6) or that the launcher stopped (SIGTERM)."""
    codes = {f.local_rank: f.exitcode for f in failures.values()}
    lead = codes.get(0)
    if lead is not None and 0 < lead < EXIT_WORKER:
        return lead

    def blame(item: tuple[int, int]) -> tuple[int, int]:
        rank, code = item
        if code < 0 and code != -signal.SIGTERM:
            return 0, rank
        return (1 if code not in (EXIT_WORKER, -signal.SIGTERM) else 2), rank

    rank, code = min(codes.items(), key=blame)
    # A process that stopped on an error of its own (not killed, not a lost peer): the launcher
    # stopped rank 0 before it could say why; one process says it.
    own_error = code is not None and 0 < code != EXIT_WORKER
    hint = "run the same command with --nproc 1 to see its error" if own_error else RESUME_HINT
    raise WorkerLost(f"process {rank} of {nproc} {_how(code)}; the run stopped on every process",
                     hint=hint)  # fmt: skip


def _how(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"was killed ({signal.Signals(-code).name})"
        except ValueError:
            return f"was killed (signal {-code})"
    return f"failed (exit code {code})"
