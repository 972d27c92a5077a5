"""The centring release (round 1 of a scatter-linear plan): one DP release of the mean
feature into the model's ``center``, counted in the ledger, with the training noise
calibrated so that epsilon after the last round stays within the plan's target."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedxray.data.shard import Shard
from fedxray.models.registry import build_model, state_to_numpy
from fedxray.training import accounting, centering
from fedxray.training.dp_engine import NoiseGenerator
from fedxray.training.features import compute
from fedxray.training.ledger import Ledger
from fedxray.training.loop import train_round
from fedxray.training.sampling import UnitSampler
from fedxray.training.settings import TrainSettings

SIZE = 32


def _shard(n=36) -> Shard:
    rng = np.random.default_rng(0)
    labels = np.arange(n) % 3
    images = (rng.random((n, SIZE, SIZE)) * 90).astype(np.uint8)
    images[labels == 1, 8:24, 8:24] += 120
    patients = np.array([f"p{i // 3}" for i in range(n)])  # three images each
    return Shard(images=images, labels=labels, classes=["a", "b", "c"], image_size=SIZE,
                 patients=patients)  # fmt: skip


def _settings(**kw) -> TrainSettings:
    base = dict(arch="scatter-linear", image_size=SIZE, classes=("a", "b", "c"), rounds=3,
                local_epochs=2, batch_size=64, lr=10.0, bias_lr=2.0, full_batch=True,
                centering=True, augment=False, target_epsilon=8.0, delta=1e-5,
                max_grad_norm=1.0)  # fmt: skip
    base.update(kw)
    return TrainSettings(**base)


def _rounds(tmp_path, s, dp=True, upto=None):
    state = state_to_numpy(build_model("scatter-linear", SIZE, 3, seed=0))
    results = []
    for r in range(1, (upto or s.rounds) + 1):
        res = train_round(state, _shard(), s, ledger_path=tmp_path / "ledger.json",
                          federation_id="fed", round_number=r, seed=7, dp=dp,
                          features_dir=tmp_path / "features")  # fmt: skip
        results.append(res)
        state = {k: state[k] + res.delta[k] for k in state}
    return results, state


def test_round_one_changes_nothing_but_the_center(tmp_path):
    (first,), _ = _rounds(tmp_path, _settings(), upto=1)
    assert float(np.abs(first.delta["head.linear.weight"]).max()) == 0
    assert float(np.abs(first.delta["head.linear.bias"]).max()) == 0
    center = first.delta["head.center"]
    assert 0 < float(np.linalg.norm(center)) <= 1 + 1e-6  # projected onto the unit ball
    assert first.noise_multiplier == 5.0


def test_without_dp_the_center_is_the_mean_of_the_patients_means(tmp_path):
    (first,), _ = _rounds(tmp_path, _settings(), dp=False, upto=1)
    shard = _shard()
    model = build_model("scatter-linear", SIZE, 3)
    z = model.head.embed(torch.from_numpy(compute(model.front_end, shard.images))).numpy()
    patients = np.unique(shard.patients)
    want = np.mean([z[shard.patients == p].mean(0) for p in patients], axis=0)
    assert np.allclose(first.delta["head.center"], want, atol=1e-5)


def test_epsilon_after_every_round_is_within_the_budget_with_the_release_counted(tmp_path):
    s = _settings()
    results, _ = _rounds(tmp_path, s)
    ledger = Ledger.load(tmp_path / "ledger.json", "fed")
    history = ledger.history()
    assert history[0] == (5.0, 1.0, 1)  # the release, counted first
    sigma = ledger.noise_multiplier
    assert history[1:] == [(sigma, 1.0, 1)] * (2 * 2)  # 2 training rounds x 2 full-batch steps
    eps = accounting.epsilon(history, 1e-5)
    assert results[-1].epsilon == pytest.approx(eps)
    assert 0.99 * 8.0 < eps <= 8.0
    # Not counting the release would have allowed less noise: it is really paid for.
    assert sigma > accounting.calibrate_noise(8.0, 1e-5, 1.0, 4)
    assert all(r.epsilon <= 8.0 for r in results)


def test_one_patient_moves_the_released_sum_by_at_most_one():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(12, 20))
    z /= np.linalg.norm(z, axis=1, keepdims=True)  # unit-norm features, as the head makes
    patients = np.array([0, 0, 0, 1, 2, 2, 3, 3, 3, 3, 4, 5])
    shard = Shard(images=np.zeros((12, 4, 4), np.uint8), labels=np.zeros(12, np.int64),
                  classes=["x", "y"], image_size=4, patients=patients.astype(str))  # fmt: skip
    noise = NoiseGenerator(np.random.SeedSequence(0))

    def total(keep):
        idx = np.flatnonzero(np.isin(patients, keep))
        sub = Shard(images=shard.images[idx], labels=shard.labels[idx], classes=shard.classes,
                    image_size=4, patients=shard.patients[idx])  # fmt: skip
        sampler = UnitSampler(sub, "patient")
        mean = centering.noisy_mean(torch.from_numpy(z[idx]), sampler, None, noise)
        return mean.numpy() * len(keep) if float(mean.norm()) < 1 else None

    everyone = total(list(range(6)))
    for gone in range(6):
        without = total([p for p in range(6) if p != gone])
        assert np.linalg.norm(everyone - without) <= 1 + 1e-9


def test_the_first_round_reports_its_features_and_later_rounds_reuse_them(tmp_path):
    s, state, heard = _settings(), state_to_numpy(build_model("scatter-linear", SIZE, 3)), []
    for r in (1, 2):
        res = train_round(state, _shard(), s, ledger_path=tmp_path / "ledger.json",
                          federation_id="fed", round_number=r, seed=7,
                          features_dir=tmp_path / "features",
                          features_progress=lambda *a, r=r: heard.append((r, *a)))  # fmt: skip
        state = {k: state[k] + res.delta[k] for k in state}
    assert heard and heard[-1] == (1, 36, 36)  # round 1 computed all 36 images, round 2 none
    assert [d for _, d, _ in heard] == sorted(d for _, d, _ in heard)
