"""Splitting one prepared dataset across simulated sites, always by patient."""

from __future__ import annotations

import numpy as np

from fedxray.data.shard import Shard
from fedxray.errors import FedxrayError


def patient_keys(shard: Shard) -> np.ndarray:
    """One key per image: its patient pseudonym, or the image's own index when unknown."""
    if shard.patients is None:
        return np.array([f"img{i}" for i in range(len(shard))])
    return np.asarray(shard.patients)


def _patient_labels(keys: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique patients and the majority label of each (for stratifying)."""
    uniq, inverse = np.unique(keys, return_inverse=True)
    counts = np.zeros((len(uniq), int(labels.max()) + 1), dtype=np.int64)
    np.add.at(counts, (inverse, labels), 1)
    return uniq, counts.argmax(axis=1)


def subset(shard: Shard, index: np.ndarray) -> Shard:
    index = np.sort(index)
    return Shard(
        images=shard.images[index],
        labels=shard.labels[index],
        classes=list(shard.classes),
        image_size=shard.image_size,
        patients=None if shard.patients is None else shard.patients[index],
        image_ids=None if shard.image_ids is None else shard.image_ids[index],
        meta=dict(shard.meta),
    )


def holdout_split(shard: Shard, fraction: float, seed: int) -> tuple[Shard, Shard]:
    """(train, held-out): a stratified split of patients, never of images."""
    keys = patient_keys(shard)
    uniq, plabel = _patient_labels(keys, shard.labels)
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(plabel):
        members = rng.permutation(uniq[plabel == c])
        held.extend(members[: max(1, round(fraction * len(members)))])
    is_held = np.isin(keys, np.array(held))
    if is_held.all() or not is_held.any():
        raise FedxrayError("too few patients to hold out a validation set")
    return subset(shard, np.flatnonzero(~is_held)), subset(shard, np.flatnonzero(is_held))


def split_sites(shard: Shard, n_sites: int, seed: int, skew: float | None = None) -> list[Shard]:
    """Split patients across ``n_sites``: IID (stratified round-robin) or Dirichlet(skew) per class.

    Smaller ``skew`` (alpha) gives more unequal class mixes between sites.
    """
    if n_sites < 1:
        raise FedxrayError("the number of sites must be at least 1", option="sites")
    keys = patient_keys(shard)
    uniq, plabel = _patient_labels(keys, shard.labels)
    if len(uniq) < n_sites:
        raise FedxrayError(f"{len(uniq)} patients cannot be split across {n_sites} sites")
    rng = np.random.default_rng(seed)
    owner = np.empty(len(uniq), dtype=np.int64)
    for c in np.unique(plabel):
        idx = rng.permutation(np.flatnonzero(plabel == c))
        if skew is None:
            owner[idx] = (np.arange(len(idx)) + rng.integers(n_sites)) % n_sites
        else:
            if skew <= 0:
                raise FedxrayError("the class skew must be positive", option="skew")
            share = rng.dirichlet(np.full(n_sites, float(skew)))
            cuts = (np.cumsum(share)[:-1] * len(idx)).astype(int)
            for site, part in enumerate(np.split(idx, cuts)):
                owner[part] = site
    # Every site needs patients: move one from the largest site to any empty one.
    for site in range(n_sites):
        if not (owner == site).any():
            donor = np.bincount(owner, minlength=n_sites).argmax()
            owner[np.flatnonzero(owner == donor)[0]] = site
    key_owner = dict(zip(uniq.tolist(), owner.tolist(), strict=True))
    image_owner = np.array([key_owner[k] for k in keys.tolist()])
    return [subset(shard, np.flatnonzero(image_owner == s)) for s in range(n_sites)]
