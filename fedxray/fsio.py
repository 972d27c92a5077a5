"""Reading inputs (files or stdin) and writing outputs atomically (files or stdout)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import tempfile
from pathlib import Path

from fedxray.errors import FedxrayError

STDIO = "-"  # as a path: standard input or standard output


def is_stdio(path: str | os.PathLike | None) -> bool:
    """Whether ``path`` is the marker for standard input or output."""
    return path is not None and str(path) == STDIO


def shown(path: str | os.PathLike, stream: str = "standard output") -> str:
    """How messages name an output (or input) path."""
    return stream if is_stdio(path) else str(path)


def input_name(path: str | os.PathLike) -> str:
    """How messages name an input: its file name, or standard input."""
    return "standard input" if is_stdio(path) else Path(path).name


def read_input(path: str | os.PathLike, what: str = "file") -> bytes:
    """Read a whole input once; ``-`` reads standard input."""
    if is_stdio(path):
        return sys.stdin.buffer.read()
    p = Path(path)
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise FedxrayError(f"{what} not found: {p}") from None
    except IsADirectoryError:
        raise FedxrayError(f"{what} is a directory, expected a file: {p}") from None
    except PermissionError:
        raise FedxrayError(f"permission denied reading {what}: {p}") from None
    except OSError as e:
        raise FedxrayError(f"cannot read {what} {p}: {e.strerror}") from None


def check_writable(path: str | os.PathLike, force: bool = False) -> None:
    """Fail early (before any work) if ``path`` exists and ``force`` is not given."""
    if is_stdio(path):
        return
    p = Path(path)
    if p.exists() and not force:
        raise FedxrayError(
            f"output exists: {p}", hint="overwrite it only on purpose", option="force"
        )
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise FedxrayError(f"output folder does not exist: {parent}")


def write_atomic(
    path: str | os.PathLike,
    data: bytes,
    *,
    force: bool = False,
    mode: int = 0o644,
    exclusive: bool = False,
) -> None:
    """Write ``data`` so that ``path`` is either absent or complete, never partial.

    The bytes go to a temporary file in the target folder, are flushed and fsynced, then
    renamed over the target. ``exclusive`` refuses an existing target even with ``force``
    (private keys). ``-`` writes to standard output.
    """
    if is_stdio(path):
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    p = Path(path)
    if exclusive and p.exists():
        raise FedxrayError(f"refusing to overwrite {p}", hint="private keys are never replaced")
    check_writable(p, force=force)
    folder = p.parent if str(p.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            # link() fails if the target appeared meanwhile: no race can replace a key.
            try:
                os.link(tmp, p)
            except FileExistsError:
                raise FedxrayError(f"refusing to overwrite {p}") from None
            os.unlink(tmp)
        else:
            os.replace(tmp, p)
        _fsync_dir(folder)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _fsync_dir(folder: Path) -> None:
    try:
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


@contextlib.contextmanager
def exclusive_lock(target: str | os.PathLike, busy: str, hint: str):
    """Hold a non-blocking exclusive flock on ``target`` (a folder, or a lock file it creates).

    A second process gets FedxrayError(busy, hint) at once instead of waiting: two runs that
    touch the same ledger or protocol state must never interleave.
    """
    p = Path(target)
    try:
        if p.is_dir():
            fd = os.open(p, os.O_RDONLY | os.O_DIRECTORY)
        else:
            fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as e:
        raise FedxrayError(f"cannot lock {p}: {e.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FedxrayError(busy, hint=hint) from None
        yield
    finally:
        os.close(fd)  # closing releases the lock
