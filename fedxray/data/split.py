"""Splitting a shard by patient, never by image: subsets, and a stratified held-out part.

Used by `prep --holdout` (non-members for `fedxray audit`), by the simulation (its held-out
test data and its sites) and by the audit (canaries, reference models).
"""

from __future__ import annotations

import numpy as np

from fedxray.data.shard import Shard
from fedxray.errors import FedxrayError


def patient_keys(shard: Shard) -> np.ndarray:
    """One key per image: its patient pseudonym, or the image's own index when unknown."""
    if shard.patients is None:
        return np.array([f"img{i}" for i in range(len(shard))])
    return np.asarray(shard.patients)


def patient_labels(keys: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique patients and the majority label of each (for stratifying)."""
    uniq, inverse = np.unique(keys, return_inverse=True)
    counts = np.zeros((len(uniq), int(labels.max()) + 1), dtype=np.int64)
    np.add.at(counts, (inverse, labels), 1)
    return uniq, counts.argmax(axis=1)


def subset(shard: Shard, index: np.ndarray) -> Shard:
    """The images at ``index`` (in shard order), with their labels, patients and ids."""
    index = np.sort(index)
    return Shard(
        images=shard.images[index],
        labels=shard.labels[index],
        classes=list(shard.classes),
        image_size=shard.image_size,
        patients=None if shard.patients is None else shard.patients[index],
        image_ids=None if shard.image_ids is None else shard.image_ids[index],
        meta=dict(shard.meta),
        geometry=shard.geometry,
    )


def holdout_split(shard: Shard, fraction: float, seed: int) -> tuple[Shard, Shard]:
    """(kept, held-out): a stratified split of patients, never of images.

    Per class (a patient's majority label), round(fraction x patients), at least one, are
    held out; every image of a held-out patient goes to the held-out part.
    """
    if not 0 < fraction < 1:
        raise FedxrayError(
            f"the fraction to hold out must be between 0 and 1, got {fraction}",
            option="holdout",
        )
    keys = patient_keys(shard)
    uniq, plabel = patient_labels(keys, shard.labels)
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(plabel):
        members = rng.permutation(uniq[plabel == c])
        held.extend(members[: max(1, round(fraction * len(members)))])
    is_held = np.isin(keys, np.array(held))
    if is_held.all() or not is_held.any():
        raise FedxrayError(f"{len(uniq)} patient(s) are too few to hold some out and keep the rest")
    return subset(shard, np.flatnonzero(~is_held)), subset(shard, np.flatnonzero(is_held))
