"""Canaries for the one-run audit: which patients, their flipped labels, and the coins.

A canary is one patient (the privacy unit) of the site's shard whose images all get a wrong
label, shifted by the same random non-zero amount: a model only predicts that label for those
images if it trained on them. Each canary is then included in training by an independent
fair coin; an excluded canary is removed ENTIRELY (its correctly labelled images too), so the
two worlds differ by adding or removing exactly one unit, as the DP guarantee is stated.
The coins come from the operating system's entropy (``secrets``) unless a seed is given
(tests and benchmarks). The CanarySet is the bookkeeping: it stays at the site.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import numpy as np

from fedxray.data.shard import Shard
from fedxray.data.split import patient_keys, subset
from fedxray.errors import FedxrayError

SEEDED = "seeded"
SECRETS = "secrets"


@dataclass(frozen=True)
class CanarySet:
    patients: tuple[str, ...]  # canary units (patient pseudonyms, or img<i>), in audit order
    included: tuple[bool, ...]  # the coin of each canary
    label_shift: tuple[int, ...]  # new label = (label + shift) % classes, shift in 1..C-1
    source: str  # SEEDED or SECRETS

    def __post_init__(self):
        n = len(self.patients)
        if len(self.included) != n or len(self.label_shift) != n:
            raise ValueError("a canary set needs one coin and one label shift per patient")
        if len(set(self.patients)) != n:
            raise ValueError("canary patients must be distinct")

    def __len__(self) -> int:
        return len(self.patients)

    def to_dict(self) -> dict:
        return {
            "patients": list(self.patients),
            "included": [bool(x) for x in self.included],
            "label_shift": [int(x) for x in self.label_shift],
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, d: dict) -> CanarySet:
        try:
            return cls(
                patients=tuple(str(p) for p in d["patients"]),
                included=tuple(bool(x) for x in d["included"]),
                label_shift=tuple(int(x) for x in d["label_shift"]),
                source=str(d["source"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise FedxrayError(f"invalid canary record: {e}") from None


def draw_canaries(shard: Shard, k: int, *, seed: int | None = None) -> CanarySet:
    """Choose ``k`` canary patients of ``shard``, a wrong label and a fair coin for each."""
    units = np.unique(patient_keys(shard))
    n_classes = len(shard.classes)
    if not isinstance(k, int) or k < 1:
        raise FedxrayError(f"the number of canaries must be a positive integer, got {k!r}")
    if k >= len(units):
        raise FedxrayError(
            f"{k} canaries need more than {k} patients; the shard has {len(units)}",
            hint="use fewer canaries: most patients must stay ordinary training data",
        )
    if seed is None:
        sysrand = secrets.SystemRandom()
        chosen = sysrand.sample(sorted(units.tolist()), k)
        coins = [secrets.randbits(1) == 1 for _ in range(k)]
        shifts = [1 + secrets.randbelow(n_classes - 1) for _ in range(k)]
        source = SECRETS
    else:
        rng = np.random.default_rng(seed)
        chosen = units[rng.permutation(len(units))[:k]].tolist()
        coins = (rng.random(k) < 0.5).tolist()
        shifts = rng.integers(1, n_classes, size=k).tolist()
        source = SEEDED
    return CanarySet(
        patients=tuple(str(p) for p in chosen),
        included=tuple(bool(c) for c in coins),
        label_shift=tuple(int(s) for s in shifts),
        source=source,
    )


def apply_canaries(shard: Shard, canaries: CanarySet) -> tuple[Shard, Shard]:
    """(training shard, canary shard).

    Training: every non-canary image unchanged, plus the included canaries' images with their
    wrong labels. Canary shard: every canary's images with the wrong labels (for scoring),
    in shard order; its ``patients`` say which canary each image belongs to.
    """
    keys = patient_keys(shard).astype(str)
    missing = set(canaries.patients) - set(keys.tolist())
    if missing:
        raise FedxrayError(f"{len(missing)} canary patient(s) are not in this shard")
    pos = {p: i for i, p in enumerate(canaries.patients)}
    which = np.array([pos.get(p, -1) for p in keys.tolist()], dtype=np.int64)
    is_canary = which >= 0
    shift = np.zeros(len(shard), dtype=np.int64)
    shift[is_canary] = np.asarray(canaries.label_shift, dtype=np.int64)[which[is_canary]]
    flipped = Shard(
        images=shard.images,
        labels=(np.asarray(shard.labels, dtype=np.int64) + shift) % len(shard.classes),
        classes=list(shard.classes),
        image_size=shard.image_size,
        patients=keys if shard.patients is None else shard.patients,
        image_ids=shard.image_ids,
        meta=dict(shard.meta),
        geometry=shard.geometry,
    )
    coin = np.zeros(len(shard), dtype=bool)
    coin[is_canary] = np.asarray(canaries.included, dtype=bool)[which[is_canary]]
    train = subset(flipped, np.flatnonzero(~is_canary | coin))
    if shard.patients is None:
        train.patients = None  # the img<i> keys were only for bookkeeping
    return train, subset(flipped, np.flatnonzero(is_canary))
