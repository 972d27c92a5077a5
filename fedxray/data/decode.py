"""Decoding many radiographs for `prep`, in this process or in worker processes.

Every file goes through the one shared pixel path (fedxray.imaging.load_radiograph) and its
plausibility checks; a file that fails becomes a ("skip", reason, message) result, so one bad
file never stops the run. Only the small output images travel back from the workers.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import signal
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from fedxray.geometry import DEFAULT_GEOMETRY
from fedxray.imaging import SkipImage, load_radiograph

# Starting a worker process costs about a second; below this many files each, it loses.
MIN_FILES_PER_WORKER = 64
Progress = Callable[[int, int], None]


def pixel_digest(pixels: np.ndarray, source_shape: tuple[int, int]) -> bytes:
    """Exact-duplicate key: the output pixels, and the source's size (like with like).

    Output pixels rather than file bytes, so a copy with edited headers is still a
    duplicate; with the source size, so two different images that happen to give the same
    output (e.g. two blank ones of different sizes) are not.
    """
    h = hashlib.sha256(f"{source_shape[0]}x{source_shape[1]}\0".encode())
    h.update(pixels.tobytes())
    return h.digest()


def decode_one(path: Path, image_size: int, geometry: str = DEFAULT_GEOMETRY) -> tuple:
    try:
        r = load_radiograph(path, image_size, geometry)
    except SkipImage as e:
        return ("skip", e.reason, e.message)
    except MemoryError:
        return ("skip", "unreadable", "not enough memory to decode this image")
    except Exception as e:  # a file no decoder anticipated must not stop the whole run
        return ("skip", "unreadable", f"cannot decode: {type(e).__name__}: {e}"[:300])
    if not r.plausibility.ok:
        return ("skip", "implausible", r.plausibility.message)
    return ("ok", r.pixels, r.patient_token, r.kind, r.source_shape)


def _decode_star(args: tuple[Path, int, str]) -> tuple:
    return decode_one(*args)


def _ignore_sigint() -> None:
    # Ctrl-C is handled once, by the parent, which cancels the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def effective_workers(requested: int, files: int) -> int:
    """Worker processes worth starting for this many files (1: decode in this process)."""
    return max(1, min(requested, files // MIN_FILES_PER_WORKER))


def decode_all(
    paths: list[Path],
    image_size: int,
    workers: int,
    progress: Progress | None,
    geometry: str = DEFAULT_GEOMETRY,
) -> Iterator[tuple]:
    """Decode results in the order of ``paths``, as they come (a generator)."""
    total = len(paths)
    if progress:
        progress(0, total)
    if workers <= 1:
        for i, p in enumerate(paths, start=1):
            yield decode_one(p, image_size, geometry)
            if progress:
                progress(i, total)
        return
    # spawn: the parent may hold torch/OpenMP threads that fork would copy half-initialised.
    ctx = multiprocessing.get_context("spawn")
    chunk = max(1, min(16, total // (workers * 8)))
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_ignore_sigint)
    try:
        tasks = ((p, image_size, geometry) for p in paths)
        for i, res in enumerate(pool.map(_decode_star, tasks, chunksize=chunk), start=1):
            yield res
            if progress:
                progress(i, total)
    except BaseException:
        # Ctrl-C or an error in the caller: drop queued work, do not wait for it.
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
