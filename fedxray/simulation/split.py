"""Splitting one prepared dataset across simulated sites, always by patient
(the patient-level helpers live in fedxray.data.split)."""

from __future__ import annotations

import numpy as np

from fedxray.data.shard import Shard
from fedxray.data.split import patient_keys, patient_labels, subset
from fedxray.errors import FedxrayError


def split_sites(shard: Shard, n_sites: int, seed: int, skew: float | None = None) -> list[Shard]:
    """Split patients across ``n_sites``: IID (stratified round-robin) or Dirichlet(skew) per class.

    Smaller ``skew`` (alpha) gives more unequal class mixes between sites.
    """
    if n_sites < 1:
        raise FedxrayError("the number of sites must be at least 1", option="sites")
    keys = patient_keys(shard)
    uniq, plabel = patient_labels(keys, shard.labels)
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
