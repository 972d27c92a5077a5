"""Simulated sites are split by patient, never by image."""

from __future__ import annotations

import numpy as np
import pytest

from fedxray.data.shard import Shard
from fedxray.data.split import holdout_split
from fedxray.simulation.split import split_sites


def _shard(n_patients=60, per_patient=3, seed=0):
    rng = np.random.default_rng(seed)
    patients = np.repeat([f"p{i:03d}" for i in range(n_patients)], per_patient)
    plabel = rng.integers(0, 3, n_patients)
    labels = np.repeat(plabel, per_patient).astype(np.int64)
    n = len(labels)
    return Shard(
        images=np.zeros((n, 8, 8), np.uint8),
        labels=labels,
        classes=["normal", "bacterial", "viral"],
        image_size=8,
        patients=patients,
    )


@pytest.mark.parametrize("skew", [None, 0.3])
def test_split_sites_by_patient(skew):
    shard = _shard()
    parts = split_sites(shard, 3, seed=1, skew=skew)
    assert sum(len(p) for p in parts) == len(shard)
    sets = [set(p.patients.tolist()) for p in parts]
    assert all(sets)
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])


def test_iid_split_balances_classes_and_skew_does_not():
    shard = _shard(n_patients=300, per_patient=1)
    iid = split_sites(shard, 3, seed=2)
    skewed = split_sites(shard, 3, seed=2, skew=0.1)

    def spread(parts):
        mix = np.array([np.bincount(p.labels, minlength=3) / len(p) for p in parts])
        return float(np.abs(mix - mix.mean(axis=0)).max())

    assert spread(iid) < 0.1
    assert spread(skewed) > spread(iid)


def test_holdout_keeps_patients_whole():
    shard = _shard()
    train, held = holdout_split(shard, 0.15, seed=3)
    assert not set(train.patients.tolist()) & set(held.patients.tolist())
    assert 0.05 < len(held) / len(shard) < 0.3
