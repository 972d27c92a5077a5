"""The shard: one site's prepared, de-identified dataset (never leaves the site)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Shard:
    """In-memory view of a shard.

    images:   uint8 or uint16 array [N, H, W] (H == W == image_size), air dark.
    labels:   int64 array [N], indices into ``classes``.
    patients: array [N] of patient pseudonyms (str, keyed hashes) or None when unknown.
    image_ids: array [N] of str, keyed hashes of the source path (to match reader CSVs).
    duplicate_ids: array [D] of str, the same keyed hashes for the files prep left out as
        exact duplicates of a kept image (so a reader's row for one is not taken for a typo).
    """

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    image_size: int
    patients: np.ndarray | None = None
    image_ids: np.ndarray | None = None
    duplicate_ids: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_patients(self) -> int:
        if self.patients is None:
            return len(self)
        return len(np.unique(self.patients))
