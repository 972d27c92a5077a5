"""The patient is the clipped unit: all of a patient's images, one clipped gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedxray.data.shard import Shard
from fedxray.models.registry import build_model
from fedxray.models.scatterlinear import NormalisedLinear
from fedxray.training.dp_engine import DPEngine
from fedxray.training.sampling import UnitSampler

C = 0.5


def _models():
    torch.manual_seed(0)
    head = NormalisedLinear((7, 2, 2), 3)
    torch.nn.init.normal_(head.linear.weight, std=3.0)  # not at zero: gradients differ
    cnn = build_model("tinycnn", 16, 3, seed=0)
    return [(head, torch.randn(11, 7, 2, 2)), (cnn, torch.rand(11, 1, 16, 16))]


PATIENTS = np.array([0, 0, 0, 1, 2, 2, 3, 3, 3, 3, 4])
LABELS = torch.tensor([0, 1, 2, 0, 1, 1, 2, 0, 1, 2, 0])


def _engine_sum(model, x, keep):
    """The engine's clipped sum over patients ``keep`` (a patient's loss: the mean of theirs)."""
    idx = np.flatnonzero(np.isin(PATIENTS, keep))
    _, groups, counts = np.unique(PATIENTS[idx], return_inverse=True, return_counts=True)
    weight = torch.tensor(1.0 / counts[groups], dtype=torch.float32)
    engine = DPEngine(model, C)
    engine.zero_grad()
    engine.clipped_backward(
        lambda: F.cross_entropy(model(x[idx]), LABELS[idx], reduction="none") * weight,
        torch.from_numpy(groups),
    )
    engine.detach()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])


def _explicit_sum(model, x, keep):
    total = 0
    for p in keep:
        idx = np.flatnonzero(np.equal(PATIENTS, p))
        model.zero_grad()
        F.cross_entropy(model(x[idx]), LABELS[idx]).backward()  # the mean over their images
        g = torch.cat([q.grad.flatten() for q in model.parameters() if q.requires_grad])
        total = total + g * min(1.0, C / float(g.norm()))
    return total


@pytest.mark.parametrize("which", [0, 1], ids=["linear-head", "cnn"])
def test_per_patient_clipped_sum_equals_explicit_per_patient_gradients(which):
    model, x = _models()[which]
    everyone = list(range(5))
    got, want = _engine_sum(model, x, everyone), _explicit_sum(model, x, everyone)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("which", [0, 1], ids=["linear-head", "cnn"])
def test_removing_one_patient_moves_the_clipped_sum_by_at_most_C(which):
    model, x = _models()[which]
    full = _engine_sum(model, x, list(range(5)))
    for gone in range(5):  # patient 3 has four images, patient 4 one
        without = _engine_sum(model, x, [p for p in range(5) if p != gone])
        assert float((full - without).norm()) <= C * (1 + 1e-5)


def test_sampler_takes_all_of_a_patients_images_together():
    patients = np.array(["b", "a", "b", "c", "a", "b"])
    shard = Shard(images=np.zeros((6, 4, 4), np.uint8), labels=np.zeros(6, np.int64),
                  classes=["x", "y"], image_size=4, patients=patients)  # fmt: skip
    sampler = UnitSampler(shard, "patient")
    rng = np.random.default_rng(0)
    for _ in range(50):
        idx = sampler.sample(rng, 0.5)
        groups, weight = sampler.grouping(idx)
        for g in np.unique(groups):
            mine = idx[groups == g]
            (who,) = set(patients[mine])
            assert sorted(mine) == sorted(np.flatnonzero(patients == who))  # all of theirs
            assert np.allclose(weight[groups == g], 1 / len(mine))
    assert sorted(sampler.sample(rng, 1.0)) == list(range(6))  # full batch: everyone
