"""Reading inputs (files or stdin) and writing outputs atomically (files or stdout).

Every failure of the operating system here becomes a FedxrayError naming the path as the
caller gave it: a full disk, a quota, a read-only medium or a missing permission is a
condition to fix, not a bug to report.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedxray.errors import FedxrayError

STDIO = "-"  # as a path: standard input or standard output


def is_stdio(path: str | os.PathLike | None) -> bool:
    """Whether ``path`` is the marker for standard input or output."""
    return path is not None and str(path) == STDIO


def shown(path: str | os.PathLike, stream: str = "standard output") -> str:
    """How messages name an output (or input) path."""
    return stream if is_stdio(path) else str(path)


def input_name(path: str | os.PathLike) -> str:
    """How messages name an input: the path as given, or standard input."""
    return "standard input" if is_stdio(path) else str(path)


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def free_bytes(folder: str | os.PathLike) -> int | None:
    """Bytes an unprivileged user may still write in ``folder``'s file system (None: unknown)."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def size_text(n: int) -> str:
    """A byte count as people read it: 512 bytes, 3.4 kB, 12.0 MB, 1.2 GB."""
    if n < 1000:
        return f"{n} bytes"
    for unit in ("kB", "MB", "GB", "TB"):
        n /= 1000
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


def output_error(path: str | os.PathLike | None, e: OSError, needed: int | None = None):
    """A failed write or folder creation as one FedxrayError naming ``path`` as given.

    ``needed``: the bytes the write needed, when known; a full disk then says how many, and
    how many are free.
    """
    where = "the output" if path is None else shown(path)
    if e.errno in NO_SPACE:
        if e.errno == errno.EDQUOT:
            message = f"cannot write {where}: disk quota exceeded"
        else:
            message = f"cannot write {where}: no space left on the device"
        folder = Path(path).parent if path is not None and not is_stdio(path) else None
        free = free_bytes(folder if folder is not None and str(folder) else ".")
        if needed is not None and e.errno == errno.ENOSPC:
            message += f" (needs {size_text(needed)}"
            message += ")" if free is None else f", {size_text(free)} free)"
        return FedxrayError(message, hint="free some space, or write elsewhere, and run again")
    if e.errno in (errno.EACCES, errno.EPERM):
        return FedxrayError(f"permission denied writing {where}")
    if e.errno == errno.EROFS:
        return FedxrayError(f"cannot write {where}: read-only file system")
    if e.errno == errno.ENOENT:
        return FedxrayError(f"cannot write {where}: its folder does not exist")
    return FedxrayError(f"cannot write {where}: {e.strerror or e}")


def make_folder(path: str | os.PathLike, mode: int = 0o777) -> None:
    """``mkdir -p``, failing with one line (full disk, permission) instead of a traceback."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True, mode=mode)
    except FileExistsError:
        raise FedxrayError(f"{path} exists and is not a folder") from None
    except OSError as e:
        raise output_error(path, e) from None


def read_input(path: str | os.PathLike, what: str = "file") -> bytes:
    """Read a whole input once; ``-`` reads standard input."""
    if is_stdio(path):
        return sys.stdin.buffer.read()
    p = Path(path)
    try:
        return p.read_bytes()
    except OSError as e:
        raise _read_error(p, what, e) from None


def check_readable(path: str | os.PathLike, what: str = "file") -> None:
    """Fail now, as read_input would, on an input that cannot be read (without reading it)."""
    if is_stdio(path):
        return
    p = Path(path)
    try:
        with p.open("rb"):
            pass
    except OSError as e:
        raise _read_error(p, what, e) from None


def _read_error(p: Path, what: str, e: OSError) -> FedxrayError:
    if isinstance(e, FileNotFoundError):
        return FedxrayError(f"{what} not found: {p}")
    if isinstance(e, IsADirectoryError):
        return FedxrayError(f"{what} is a directory, expected a file: {p}")
    if isinstance(e, PermissionError):
        return FedxrayError(f"permission denied reading {what}: {p}")
    return FedxrayError(f"cannot read {what} {p}: {e.strerror}")


def read_state_file(path: Path, valid: Callable[[Any], bool], error: str, hint: str) -> Any:
    """A JSON state file this party keeps: None when there is none; FedxrayError(error, hint)
    when it does not parse or ``valid`` refuses it (never a guess from a damaged file)."""
    try:
        doc = json.loads(Path(path).read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):  # UnicodeDecodeError is a ValueError
        raise FedxrayError(error, hint=hint) from None
    if not valid(doc):
        raise FedxrayError(error, hint=hint)
    return doc


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
        try:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        except BrokenPipeError:
            raise  # the reader went away: the command line stops quietly
        except OSError as e:
            raise output_error(path, e, len(data)) from None
        return
    p = Path(path)
    if exclusive and p.exists():
        raise FedxrayError(f"refusing to overwrite {p}", hint="private keys are never replaced")
    check_writable(p, force=force)
    folder = p.parent if str(p.parent) else Path(".")
    try:
        _write_replace(p, folder, data, mode, exclusive)
    except OSError as e:
        raise output_error(path, e, len(data)) from None


def _write_replace(p: Path, folder: Path, data: bytes, mode: int, exclusive: bool) -> None:
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


class Undo:
    """What one run creates, removed again if the run fails: never what existed before.

    ``with Undo() as undo:``, then ``undo.folder(path)`` for an output folder (created with
    its missing parents: on failure a folder this run created is removed with everything in
    it, and one that was empty before is emptied again; one that held files is left alone)
    and ``undo.file(path)`` before writing a file (removed on failure if it was new).
    """

    def __init__(self) -> None:
        self._made: list[Path] = []  # removed (folders: with their contents)
        self._emptied: list[Path] = []  # folders that were empty: their contents removed

    def folder(self, path: str | os.PathLike) -> Path:
        p = Path(path)
        missing, q = [], p
        while not q.exists() and not q.is_symlink() and q != q.parent:
            missing.append(q)
            q = q.parent
        if not missing and p.is_dir() and not any(p.iterdir()):
            self._emptied.append(p)
        make_folder(p)
        self._made += reversed(missing)  # outermost first, so it is removed last
        return p

    def file(self, path: str | os.PathLike) -> Path:
        p = Path(path)
        if not p.exists() and not p.is_symlink():
            self._made.append(p)
        return p

    def __enter__(self) -> Undo:
        return self

    def __exit__(self, kind, error, tb) -> None:
        if kind is None:
            return
        leftovers = [c for folder in self._emptied for c in _children(folder)]
        for p in [*reversed(self._made), *leftovers]:
            with contextlib.suppress(OSError):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()


def _children(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError:
        return []
