"""Prepared kermany224 shards cached under /tmp, and the patient splits of one seed.

The shards are built with fedxray's own ``prepare`` (same decoding, windowing, resizing and
de-duplication as ``fedxray prep``) under a fixed pseudonym secret, so patient pseudonyms and
image ids are identical at every image size and the splits of a seed match across sizes.
The 224 px shard defines the image set; other sizes are re-ordered to its image ids.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedxray.data.prep import prepare
from fedxray.data.shard import Shard
from fedxray.data.shard_io import read_shard, write_shard
from fedxray.data.split import holdout_split, patient_keys, subset
from fedxray.simulation.split import split_sites

DATA = Path(os.environ.get("FEDXRAY_DATA", "/work/shared/data/kermany224/train"))
CACHE = Path(os.environ.get("FXR_CACHE", "/tmp/fxr"))
# Only makes the pseudonyms reproducible across sizes; never a real site's secret.
_SECRET = b"fedxray-research-benchmark-secret"
HOLDOUT_FRACTION = 0.15
N_SITES = 3


def shard_at(size: int) -> Shard:
    """The prepared training split at ``size`` px (prepared once, then read from the cache)."""
    path = CACHE / f"kermany224-train-{size}.shard"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        shard, _ = prepare([DATA], image_size=size, secret=_SECRET, workers=1)
        if size != 224:
            shard = _align(shard, shard_at(224))
        write_shard(path, shard)
    return read_shard(path)


def _align(shard: Shard, reference: Shard) -> Shard:
    """``shard`` re-ordered to the reference's image ids (same images, same order)."""
    where = {k: i for i, k in enumerate(shard.image_ids.tolist())}
    missing = [k for k in reference.image_ids.tolist() if k not in where]
    if missing:
        raise RuntimeError(f"{len(missing)} reference images are missing at this size")
    return subset_ordered(shard, np.array([where[k] for k in reference.image_ids.tolist()]))


def subset_ordered(shard: Shard, index: np.ndarray) -> Shard:
    return Shard(
        images=shard.images[index],
        labels=shard.labels[index],
        classes=list(shard.classes),
        image_size=shard.image_size,
        patients=shard.patients[index],
        image_ids=shard.image_ids[index],
        meta=dict(shard.meta),
    )


@dataclass(frozen=True)
class Split:
    """Image indices (into the 224 px order) of the hold-out and of each site, for one seed."""

    seed: int
    holdout: np.ndarray
    sites: tuple[np.ndarray, ...]

    @property
    def train(self) -> np.ndarray:
        return np.sort(np.concatenate(self.sites))


def make_split(seed: int, n_sites: int = N_SITES) -> Split:
    """15 % of patients held out (stratified), the rest split by patient over the sites."""
    full = shard_at(224)
    index_shard = Shard(
        images=np.zeros((len(full), 1, 1), dtype=np.uint8),  # splits only index images
        labels=full.labels,
        classes=full.classes,
        image_size=1,
        patients=full.patients,
        image_ids=np.arange(len(full)).astype(str),
    )
    train, held = holdout_split(index_shard, HOLDOUT_FRACTION, seed)
    sites = split_sites(train, n_sites, seed)
    as_index = lambda s: np.sort(s.image_ids.astype(np.int64))  # noqa: E731
    split = Split(seed, as_index(held), tuple(as_index(s) for s in sites))
    _check_split(full, split)
    return split


def _check_split(full: Shard, split: Split) -> None:
    keys = patient_keys(full)
    held = set(keys[split.holdout].tolist())
    seen: set[str] = set()
    for s in split.sites:
        pats = set(keys[s].tolist())
        assert not (pats & held), "a held-out patient trains at a site"
        assert not (pats & seen), "a patient is at two sites"
        seen |= pats
    assert len(split.train) + len(split.holdout) == len(full)


def patient_index(patients: np.ndarray) -> tuple[np.ndarray, int]:
    """Dense patient ids [N] (0..P-1) and P, for per-patient gradient sums."""
    _, inverse = np.unique(patients, return_inverse=True)
    return inverse.astype(np.int64), int(inverse.max()) + 1


__all__ = ["Split", "make_split", "patient_index", "shard_at", "subset"]
