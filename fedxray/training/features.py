"""A fixed front end's features of a shard: computed once, kept in a private cache.

The features of a fixed front end (fedxray.models.frontend) depend on the images alone, so a
site computes them once per shard and front end and reuses them in every round: a round is
then a few milliseconds of linear algebra. The cache file is named by the front end's key and
a hash of the shard's pixels, so other settings or other images never meet stale features.
It holds features of private images: written atomically with mode 0600 in the site's own
folder (beside its checkpoints), never inside anything that is sent.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from fedxray.fsio import make_folder, write_atomic
from fedxray.models.frontend import FixedFrontEnd
from fedxray.models.inputs import to_unit_range

BATCH = 64  # images per forward pass of the front end: memory only
FORMAT_VERSION = "1"
# progress(done, total): computing features can take minutes on a CPU (once per shard); the
# training loop reports its steps the same way (fedxray.training.loop).
Progress = Callable[[int, int], None]


def pixels_hash(images: np.ndarray) -> str:
    arr = np.ascontiguousarray(images)
    h = hashlib.sha256(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


def cache_path(folder: Path, front_end: FixedFrontEnd, images: np.ndarray) -> Path:
    key = hashlib.sha256(f"{FORMAT_VERSION}\0{front_end.key}".encode()).hexdigest()[:16]
    return Path(folder) / f"features-{key}-{pixels_hash(images)[:32]}.npy"


def compute(
    front_end: FixedFrontEnd,
    images: np.ndarray,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
) -> np.ndarray:
    """Features float32 [N, *output_shape] of uint8/uint16 images [N, H, W]."""
    out = np.empty((len(images), *front_end.output_shape), dtype=np.float32)
    front_end.to(device)
    with torch.no_grad():
        for start in range(0, len(images), BATCH):
            x = to_unit_range(images[start : start + BATCH]).to(device)
            out[start : start + BATCH] = front_end(x).float().cpu().numpy()
            if progress is not None:
                progress(min(start + BATCH, len(images)), len(images))
    return out


def shard_features(
    front_end: FixedFrontEnd,
    images: np.ndarray,
    cache_dir: str | Path | None,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
) -> np.ndarray:
    """The features of ``images``: from the cache in ``cache_dir`` when present and whole,
    else computed (and cached when ``cache_dir`` is given); ``progress`` hears of the images
    computed, never of a cache hit."""
    expected = (len(images), *front_end.output_shape)
    path = None if cache_dir is None else cache_path(Path(cache_dir), front_end, images)
    if path is not None and path.is_file():
        try:
            cached = np.load(path, allow_pickle=False)
            if cached.shape == expected and cached.dtype == np.float32:
                return cached
        except (OSError, ValueError):
            pass  # unreadable (a damaged disk, an old format): computed again and replaced
    feats = compute(front_end, images, device, progress)
    if path is not None:
        make_folder(path.parent, mode=0o700)
        buf = io.BytesIO()
        np.save(buf, feats, allow_pickle=False)
        write_atomic(path, buf.getvalue(), force=True, mode=0o600)
    return feats
