"""`fedxray train-local` in a child process that kills itself (SIGKILL) at a chosen point.

Used by tests/test_kill_replay.py through a multiprocessing fork server that has torch and
fedxray imported already, so each child starts in milliseconds. A point is (what, when, n):

* ("ledger" | "checkpoint" | "record" | "update", "before" | "after", n): at the n-th atomic
  write of that file, just before its rename (the new content is in a temporary file, the
  old file untouched) or just after it (the new file is in place, nothing after it ran);
* ("step", "after", n): after the n-th private optimiser step (inside an epoch).
"""

from __future__ import annotations

import os
import signal
import sys

SUFFIXES = {
    "ledger": ".ledger",
    "checkpoint": ".ckpt.safetensors",
    "record": ".record",
    "update": ".update",
}


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def arm(what: str, when: str, n: int) -> None:
    """Install the kill point in this process."""
    seen = [0]

    def hit() -> bool:
        seen[0] += 1
        return seen[0] == n

    if what == "step":
        from fedxray.training.dp_engine import PrivateOptimizer

        step = PrivateOptimizer.step

        def killing_step(self):
            step(self)
            if hit():
                _die()

        PrivateOptimizer.step = killing_step
        return
    suffix, real = SUFFIXES[what], os.replace

    def killing_replace(src, dst, *args, **kwargs):
        if not str(dst).endswith(suffix):
            return real(src, dst, *args, **kwargs)
        now = hit()
        if now and when == "before":
            _die()
        real(src, dst, *args, **kwargs)
        if now and when == "after":
            _die()
        return None

    os.replace = killing_replace


def train_local(argv: list[str], point: tuple | None, log: str, ready) -> None:
    """Run ``fedxray train-local`` with ``argv``; output to ``log``; ``ready`` is set just
    before the command starts (the parent may then kill at a random moment)."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    import torch

    torch.set_num_threads(1)
    from fedxray.cli.main import main

    if point is not None:
        arm(*point)
    ready.set()
    code = 0
    try:
        main(["train-local", *argv])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
