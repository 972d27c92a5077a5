"""The shard: one site's prepared, de-identified dataset (never leaves the site)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedxray.errors import FedxrayError
from fedxray.geometry import DEFAULT_GEOMETRY

# Below this many patients a site's round carries little: with three classes, about 17
# patients a class or fewer; and under the expected batch size (64 by default) every DP epoch
# is one step over the whole shard, without the privacy amplification of subsampling (more
# than twice the noise of a 1000-patient site at the same epsilon). docs/data.md has the
# numbers.
MIN_USEFUL_PATIENTS = 50


@dataclass
class Shard:
    """In-memory view of a shard.

    images:   uint8 or uint16 array [N, H, W] (H == W == image_size), air dark, made in
              ``geometry`` (pad or stretch: fedxray.imaging.normalize).
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
    geometry: str = DEFAULT_GEOMETRY

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_patients(self) -> int:
        if self.patients is None:
            return len(self)
        return len(np.unique(self.patients))


def small_shard_warning(shard: Shard) -> str | None:
    """A warning when ``shard`` has too few patients for a useful training round."""
    n = shard.num_patients
    if n >= MIN_USEFUL_PATIENTS:
        return None
    unit = "patients" if shard.patients is not None else "images (no patient ids)"
    return (
        f"this shard has only {n} {unit}, fewer than {MIN_USEFUL_PATIENTS}: its update will "
        "carry little signal and much noise (see docs/data.md, How big a shard should be)"
    )


def check_geometry(shard: Shard, geometry: str, name: str = "shard") -> None:
    """Refuse a shard whose images were fitted into the square otherwise than the plan says:
    a model does not carry over from one geometry to the other (docs/data.md)."""
    if shard.geometry != geometry:
        raise FedxrayError(
            f"{name} holds images in geometry {shard.geometry}, the plan's is {geometry}",
            hint="prepare the images again with the plan: fedxray prep --plan PLAN",
        )
