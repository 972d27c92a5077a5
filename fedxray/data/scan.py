"""Finding the files under prep's inputs: sorted, hidden ones skipped, links checked.

`predict` scans exactly the same way (fedxray.steps.predict.scan_inputs).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from fedxray.errors import FedxrayError


def check_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """The inputs as paths, each an existing folder or file; else one clear error."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if not inputs:
        raise FedxrayError("no input folder or file given")
    roots = []
    for raw in inputs:
        p = Path(raw)
        if not p.exists():
            if p.is_symlink():
                raise FedxrayError(f"input is a {broken_link(p)}: {p}")
            raise FedxrayError(f"input not found: {p}")
        if not (p.is_dir() or p.is_file()):
            raise FedxrayError(f"input is neither a folder nor a file: {p}")
        roots.append(p)
    return roots


class FoundFile(NamedTuple):
    path: Path
    rel: str  # '/'-separated, relative to the input
    real: Path | None  # symlinks resolved; None for a link that loops or dangles


def scan_files(root: Path, exclude: set[Path]) -> list[FoundFile]:
    """Files under root (sorted, hidden ones skipped) with their '/'-separated relative path."""
    if root.is_file():
        real = _real(root)
        return [] if real in exclude else [FoundFile(root, root.name, real)]
    found = []
    for folder, dirs, files in os.walk(root, onerror=_walk_error):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(folder) / name
            real = _real(path)
            if real is not None and real in exclude:
                continue
            found.append(FoundFile(path, path.relative_to(root).as_posix(), real))
    return found


def _real(path: Path) -> Path | None:
    """The file a path names, links resolved; None when a link loops or points nowhere."""
    try:
        return path.resolve(strict=True)
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop (Python < 3.13)
        return None


def broken_link(path: Path) -> str:
    """What is wrong with a symbolic link that names no file (a loop, or nothing there)."""
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "symbolic link loop (the link points back to itself)"
    return f"broken symbolic link (to {os.readlink(path)}, which does not exist)"


def _walk_error(e: OSError) -> None:
    raise FedxrayError(f"cannot read folder {e.filename}: {e.strerror}")
