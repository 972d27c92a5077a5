"""Canary and reference-model bookkeeping, and the audit's input checks (no training)."""

from __future__ import annotations

import numpy as np
import pytest
from torch import nn

from fedxray.audit import (
    CanarySet,
    apply_canaries,
    audit_canaries,
    audit_membership,
    draw_canaries,
)
from fedxray.audit.models import model_logits, reference_logits
from fedxray.audit.run import canary_scores
from fedxray.data.shard import Shard
from fedxray.errors import FedxrayError

SIZE = 8
CLASSES = ["normal", "bacterial", "viral"]


def shard(n_patients=30, per_patient=2, patients=True, seed=0, prefix="p") -> Shard:
    rng = np.random.default_rng(seed)
    n = n_patients * per_patient
    images = rng.integers(0, 255, size=(n, SIZE, SIZE), dtype=np.uint8)
    pids = np.array([f"{prefix}{i // per_patient:03d}" for i in range(n)])
    return Shard(images=images, labels=np.arange(n) % 3, classes=list(CLASSES), image_size=SIZE,
                 patients=pids if patients else None)  # fmt: skip


class Echo(nn.Module):
    """Logits read off the image: pixel (0, c) for class c (a model whose output we choose)."""

    def forward(self, x):
        return x[:, 0, 0, :3]


def test_seeded_draw_is_reproducible_and_secret_draw_is_valid():
    s = shard()
    a, b = draw_canaries(s, 10, seed=3), draw_canaries(s, 10, seed=3)
    assert a == b and a.source == "seeded"
    assert draw_canaries(s, 10, seed=4) != a
    c = draw_canaries(s, 10)
    assert c.source == "secrets" and len(set(c.patients)) == 10
    assert set(c.patients) <= set(s.patients.tolist())
    assert all(1 <= x <= 2 for x in c.label_shift)
    assert CanarySet.from_dict(c.to_dict()) == c


def test_coins_are_fair():
    s = shard(n_patients=2001, per_patient=1)
    c = draw_canaries(s, 2000, seed=0)
    assert 900 < sum(c.included) < 1100  # Binomial(2000, 1/2): about 4.5 sd either side


def test_apply_canaries_flips_included_and_removes_excluded_entirely():
    s = shard()
    c = draw_canaries(s, 10, seed=1)
    train, canaries = apply_canaries(s, c)
    pos = {p: i for i, p in enumerate(c.patients)}
    inc = {p for p, x in zip(c.patients, c.included, strict=True) if x}
    exc = set(c.patients) - inc
    assert not exc & set(train.patients.tolist())  # no image of an excluded canary is trained on
    assert inc <= set(train.patients.tolist())
    assert len(train) == len(s) - 2 * len(exc)
    assert len(canaries) == 20 and set(canaries.patients.tolist()) == set(c.patients)
    for sub in (train, canaries):
        for img, lab, p in zip(sub.images, sub.labels, sub.patients, strict=True):
            j = int(np.flatnonzero((s.images == img).all(axis=(1, 2)))[0])  # the source image
            assert p == s.patients[j]
            if p in pos:
                assert lab == (s.labels[j] + c.label_shift[pos[p]]) % 3 != s.labels[j]
            else:
                assert lab == s.labels[j]


def test_apply_canaries_without_patient_ids_uses_images_as_units():
    s = shard(patients=False)
    c = draw_canaries(s, 5, seed=2)
    assert all(p.startswith("img") for p in c.patients)
    train, canaries = apply_canaries(s, c)
    assert train.patients is None and len(canaries) == 5
    assert len(train) == len(s) - (5 - sum(c.included))


def test_canary_errors_are_clear():
    s = shard(n_patients=5)
    with pytest.raises(FedxrayError, match="more than 5 patients"):
        draw_canaries(s, 5, seed=0)
    with pytest.raises(FedxrayError, match="positive integer"):
        draw_canaries(s, 0, seed=0)
    other = CanarySet(("nobody",), (True,), (1,), "seeded")
    with pytest.raises(FedxrayError, match="not in this shard"):
        apply_canaries(s, other)
    with pytest.raises(FedxrayError, match="invalid canary record"):
        CanarySet.from_dict({"patients": ["a"]})


def test_canary_scores_follow_canary_order_and_average_per_patient():
    s = shard(n_patients=6)
    c = draw_canaries(s, 4, seed=5)
    _, canaries = apply_canaries(s, c)
    imgs = canaries.images.copy()
    imgs[:, 0, :3] = 0  # every class equally likely -> log(1/3) ...
    for i, p in enumerate(canaries.patients):
        if p == c.patients[0]:
            imgs[i, 0, canaries.labels[i]] = 255  # ... except canary 0's (wrong) labels
    canaries = Shard(imgs, canaries.labels, CLASSES, SIZE, canaries.patients)
    scores = canary_scores(Echo(), canaries, c)
    assert scores[0] == scores.max() and np.allclose(scores[1:], np.log(1 / 3))
    rep = audit_canaries(Echo(), canaries, c, delta=1e-5, accountant_epsilon=8.0)
    assert rep.result.canaries == 4 and not rep.exceeds_accountant
    assert rep.to_dict()["accountant_epsilon"] == 8.0


def test_model_logits_restores_mode_and_matches_forward():
    model = Echo().train()
    out = model_logits(model, shard(n_patients=3).images, batch_size=2)
    assert out.shape == (6, 3) and out.dtype == np.float64 and model.training


def test_reference_models_train_on_non_members_only_and_leave_each_out_half_the_time():
    members, non = shard(prefix="m"), shard(n_patients=20, seed=1, prefix="n")
    seen = []

    def trainer(train: Shard, seed: int) -> nn.Module:
        seen.append(set(train.patients.tolist()))
        return Echo()

    images = np.concatenate([members.images, non.images])
    units = np.concatenate([members.patients, non.patients])
    logits, out = reference_logits(trainer, non, non.patients, images, units, n_models=6,
                                   rng=np.random.default_rng(0))  # fmt: skip
    assert logits.shape == (6, len(images), 3) and out.shape == (6, len(images))
    assert all(p.startswith("n") for s in seen for p in s)
    assert all(len(s) == 10 for s in seen)
    assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == set(non.patients.tolist())
    is_member = np.char.startswith(units.astype(str), "m")
    assert out[:, is_member].all()
    assert (out[:, ~is_member].sum(axis=0) == 3).all()  # OUT of exactly half the models
    for r, s in enumerate(seen):  # OUT exactly where the model did not train on the patient
        assert (out[r] == ~np.isin(units, list(s))).all()


def test_reference_models_without_patient_ids_use_the_callers_unit_names():
    members, non = shard(patients=False), shard(n_patients=10, patients=False, seed=1)
    trained = []

    def trainer(train: Shard, seed: int) -> nn.Module:
        trained.append({bytes(img) for img in train.images})
        return Echo()

    non_units = np.array([f"non-member:img{i}" for i in range(len(non))])
    units = np.concatenate([[f"member:img{i}" for i in range(len(members))], non_units])
    images = np.concatenate([members.images, non.images])
    _, out = reference_logits(trainer, non, non_units, images, units, n_models=2,
                              rng=np.random.default_rng(1))  # fmt: skip
    for r in range(2):  # IN exactly for the images that model r trained on
        was_trained = np.array([bytes(img) in trained[r] for img in images])
        assert (out[r] == ~was_trained).all() and was_trained.sum() == 10
    rep = audit_membership(Echo(), members, non, delta=1e-5, attack="lira-offline",
                           trainer=trainer, reference_models=2, seed=0)  # fmt: skip
    assert rep.members == len(members) and rep.non_members == len(non)


def test_audit_membership_refuses_bad_inputs():
    members, non = shard(prefix="m"), shard(prefix="m", seed=1)
    with pytest.raises(FedxrayError, match="among both"):
        audit_membership(Echo(), members, non, delta=1e-5, attack="loss-threshold")
    with pytest.raises(FedxrayError, match="unknown attack"):
        audit_membership(Echo(), members, shard(prefix="n"), delta=1e-5, attack="magic")
    with pytest.raises(FedxrayError, match="needs a trainer"):
        audit_membership(Echo(), members, shard(prefix="n"), delta=1e-5, attack="lira-offline")


def test_audit_membership_on_a_model_that_memorised_its_members():
    members, non = shard(n_patients=60, prefix="m"), shard(n_patients=60, seed=1, prefix="n")
    imgs = members.images.copy()
    imgs[:, 0, :3] = 0
    imgs[np.arange(len(imgs)), 0, members.labels] = 200  # "confident" on members only
    members = Shard(imgs, members.labels, CLASSES, SIZE, members.patients)
    non.images[:, 0, :3] = 0
    rep = audit_membership(Echo(), members, non, delta=1e-5, attack="loss-threshold", seed=0,
                           accountant_epsilon=float("inf"))  # fmt: skip
    assert rep.auc == 1.0 and rep.members == rep.non_members == 60
    assert rep.epsilon.lower > 2.0
