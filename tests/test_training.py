"""DP-SGD engine, patient-level sampling, budget refusal, resume, determinism."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedxray.data.shard import Shard
from fedxray.errors import BudgetExceededError, FedxrayError, ProtocolRefusal
from fedxray.models import MODEL_NAMES, build_model, state_to_numpy
from fedxray.models.inputs import preprocess, to_unit_range
from fedxray.training import dp_engine
from fedxray.training.augment import augment
from fedxray.training.ledger import Ledger
from fedxray.training.loop import train_round
from fedxray.training.sampling import UnitSampler, resolve_unit
from fedxray.training.settings import TrainSettings

SIZE = 16


def tiny_shard(n=40, patients=True, seed=0) -> Shard:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = (rng.random((n, SIZE, SIZE)) * 80).astype(np.uint8)
    images[labels == 1, 4:12, 4:12] += 150  # a learnable signal
    pids = np.array([f"p{i // 2}" for i in range(n)]) if patients else None
    return Shard(images=images, labels=labels, classes=["normal", "pneumonia"], image_size=SIZE,
                 patients=pids)  # fmt: skip


def settings(**kw) -> TrainSettings:
    base = dict(
        arch="smallcnn", image_size=SIZE, classes=("normal", "pneumonia"), local_epochs=2,
        rounds=3, batch_size=8, lr=0.05, target_epsilon=8.0, delta=1e-3, max_grad_norm=1.0,
    )  # fmt: skip
    base.update(kw)
    return TrainSettings(**base)


def global_state(arch="smallcnn", size=SIZE):
    return state_to_numpy(build_model(arch, size, 2, seed=0))


def sub(tmp_path, name):
    folder = tmp_path / name
    folder.mkdir()
    return folder


def run(tmp_path, s=None, shard=None, **kw):
    args = dict(ledger_path=tmp_path / "ledger.json", federation_id="fed-1", round_number=1,
                seed=11, checkpoint_dir=tmp_path / "ckpt")  # fmt: skip
    args.update(kw)
    if args["checkpoint_dir"] is not None:
        args["checkpoint_dir"].mkdir(exist_ok=True)
    return train_round(global_state(), shard or tiny_shard(), s or settings(), **args)


# -- the engine against Opacus ------------------------------------------------------------------
class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.gn = nn.GroupNorm(2, 4)
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False)
        self.tokens = nn.Linear(6, 6)  # applied to every position: [B, T, C] input
        self.gn2 = nn.GroupNorm(3, 6)  # on [B, C]
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = F.relu(self.gn(self.conv(x)))
        x = F.relu(self.conv2(x)).flatten(2).transpose(1, 2)
        x = F.relu(self.tokens(x)).mean(1)
        return self.fc(self.gn2(x))


def _opacus_clipped_sum(model, x, y):
    """Per-example norms from Opacus' per-sample gradients, a clip C at their median, and
    the clipped sum (so some examples are clipped and some are not)."""
    from opacus import GradSampleModule

    gsm = GradSampleModule(model, loss_reduction="sum")
    F.cross_entropy(gsm(x), y, reduction="sum").backward()
    params = list(model.parameters())
    norms = torch.cat([p.grad_sample.flatten(1) for p in params], 1).norm(dim=1)
    clip = float(norms.median())
    scale = (clip / (norms + 1e-6)).clamp(max=1.0)
    out = [torch.einsum("b,b...->...", scale, p.grad_sample) for p in params]
    gsm._close()
    for p in params:
        p.grad, p.grad_sample = None, None
    return norms, clip, out


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
@pytest.mark.parametrize("mode", ["materialise", "ghost", "chunked"])
@pytest.mark.parametrize("net", ["tiny", "smallcnn", "resnet18"])
def test_engine_matches_opacus_per_sample_gradients(monkeypatch, mode, net):
    if mode == "ghost":
        monkeypatch.setattr(dp_engine, "_GHOST_RATIO", 0)  # every conv uses the ghost norm
    if mode == "chunked":
        monkeypatch.setattr(dp_engine, "_GHOST_RATIO", 10**9)
        monkeypatch.setattr(dp_engine, "_MATERIALISE_ELEMENTS", 0)
        monkeypatch.setattr(dp_engine, "_CHUNK_ELEMENTS", 1)  # one example per chunk
    torch.manual_seed(0)
    size = 32 if net == "resnet18" else 12
    model = (_Tiny() if net == "tiny" else build_model(net, size, 3, seed=1)).double()
    x = torch.randn(5, 1, size, size, dtype=torch.double)
    y = torch.tensor([0, 1, 2, 0, 1])
    ref_norms, clip, ref = _opacus_clipped_sum(model, x, y)
    engine = dp_engine.DPEngine(model, clip)
    losses, norms = engine.clipped_backward(lambda: F.cross_entropy(model(x), y, reduction="none"))
    assert losses.shape == (5,)
    torch.testing.assert_close(norms, ref_norms, rtol=1e-9, atol=1e-9)
    for p, r in zip(model.parameters(), ref, strict=True):
        torch.testing.assert_close(p.grad, r, rtol=1e-9, atol=1e-10)
    assert (norms > clip * 1.001).any() and (norms < clip * 0.999).any()


def test_engine_refuses_unsupported_layers_and_inplace_changes():
    with pytest.raises(FedxrayError, match="not supported"):
        dp_engine.DPEngine(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)), 1.0)

    class Inplace(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(x).relu_()

    m = Inplace()
    engine = dp_engine.DPEngine(m, 1.0)
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    with pytest.raises(FedxrayError, match="in place"):
        engine.clipped_backward(lambda: F.cross_entropy(m(x), y, reduction="none"))


# -- patient-level sampling ---------------------------------------------------------------------
def test_patient_with_many_images_is_sampled_as_one_unit():
    n_other = 60
    patients = np.array(["big"] * 50 + [f"o{i}" for i in range(n_other)])
    shard = Shard(images=np.zeros((110, 4, 4), np.uint8), labels=np.zeros(110, np.int64),
                  classes=["a", "b"], image_size=4, patients=patients)  # fmt: skip
    assert resolve_unit(shard) == "patient"
    sampler = UnitSampler(shard, "patient")
    assert sampler.num_units == 61
    rng = np.random.default_rng(0)
    big_hits, sizes = 0, []
    for _ in range(400):
        idx = sampler.sample(rng, 0.5)
        from_big = int(np.sum(idx < 50))
        assert from_big in (0, 50)  # all of the patient's images, or none
        big_hits += from_big > 0
        groups, _ = sampler.grouping(idx)
        assert groups.max(initial=-1) + 1 == len(set(patients[idx]))  # one group per patient
        sizes.append(len(set(patients[idx])))
    assert 0.4 < big_hits / 400 < 0.6  # the patient is sampled at rate q, not 50 q
    assert np.mean(sizes) == pytest.approx(61 * 0.5, rel=0.05)
    assert resolve_unit(dataclasses.replace(shard, patients=None)) == "image"
    with pytest.raises(FedxrayError, match="patient"):
        resolve_unit(dataclasses.replace(shard, patients=None), "patient")


def test_one_patient_moves_the_clipped_sum_by_at_most_C():
    torch.manual_seed(0)
    model = build_model("smallcnn", SIZE, 2, seed=0)
    clip = 0.5
    engine = dp_engine.DPEngine(model, clip)
    x = torch.randn(6, 1, SIZE, SIZE) * 3
    y = torch.tensor([0, 1, 0, 1, 0, 1])

    def summed(xs, ys):
        engine.zero_grad()
        engine.clipped_backward(lambda: F.cross_entropy(model(xs), ys, reduction="none"))
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    with_patient = summed(x, y)
    without = summed(x[1:], y[1:])
    assert 0 < (with_patient - without).norm() <= clip * (1 + 1e-5)


def test_noise_std_is_sigma_c_over_expected_batch():
    # An empty Poisson batch leaves only noise: the step is -lr * N(0, (sigma C / (qN))^2).
    model = build_model("smallcnn", SIZE, 2, seed=0)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    s = settings(max_grad_norm=2.0)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    private = dp_engine.PrivateOptimizer(
        opt, dp_engine.DPEngine(model, s.max_grad_norm), noise_multiplier=1.5,
        expected_batch_size=0.2 * 50,
        generator=dp_engine.NoiseGenerator(np.random.SeedSequence(0)),
    )  # fmt: skip
    private.zero_grad()
    private.step()  # nothing was sampled: no clipped gradient, only noise
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    expected = 1.5 * 2.0 / (0.2 * 50)
    assert (before - after).std().item() == pytest.approx(expected, rel=0.02)


def test_private_step_hands_the_clipped_sum_to_all_reduce_before_the_noise():
    # The hook where processes sharing a batch will add up their clipped sums (issue 15).
    model = build_model("smallcnn", SIZE, 2, seed=0)
    x, y = torch.randn(3, 1, SIZE, SIZE), torch.tensor([0, 1, 0])
    seen = []

    def all_reduce(grads):
        seen.append([g.clone() for g in grads])
        for g in grads:
            g.mul_(2.0)  # as if a second process had the same sum

    before = [p.detach().clone() for p in model.parameters()]
    private = dp_engine.PrivateOptimizer(
        torch.optim.SGD(model.parameters(), lr=1.0), dp_engine.DPEngine(model, 1.0),
        noise_multiplier=0.0, expected_batch_size=4.0, all_reduce=all_reduce,
    )  # fmt: skip
    private.zero_grad()
    private.backward(lambda: F.cross_entropy(model(x), y, reduction="none"))
    private.step()
    assert len(seen) == 1 and len(seen[0]) == len(before)
    for p, b, g in zip(model.parameters(), before, seen[0], strict=True):
        torch.testing.assert_close(b - p.detach(), 2.0 * g / 4.0)  # reduced, then averaged


# -- train_round ---------------------------------------------------------------------------------
def test_round_trains_spends_and_records(tmp_path):
    s = settings()
    r = run(tmp_path, s)
    assert r.dp and r.privacy_unit == "patient" and r.privacy_delta == 1e-3
    assert set(r.delta) == set(global_state())
    assert all(v.dtype == np.float32 for v in r.delta.values())
    assert any(np.abs(v).max() > 0 for v in r.delta.values())
    assert r.num_examples == 40 and r.num_patients == 20
    assert len(r.losses) == 2 and r.steps == 2 * 3
    ledger = Ledger.load(tmp_path / "ledger.json", "fed-1")
    assert ledger.epsilon() == pytest.approx(r.epsilon)
    assert ledger.unit == "patient" and ledger.noise_multiplier == r.noise_multiplier
    # Calibrated for 3 rounds: one round spends clearly less than the target.
    assert 0 < r.epsilon < s.target_epsilon * 0.8
    rows = ledger.rounds()
    assert [(row.round, row.epochs, row.finished) for row in rows] == [(1, 2, True)]


def test_every_model_trains_one_dp_step(tmp_path):
    for arch in MODEL_NAMES:
        size = 32 if arch in ("resnet18", "scatter-linear") else SIZE
        shard = dataclasses.replace(tiny_shard(n=6), image_size=size,
                                    images=np.zeros((6, size, size), np.uint8) + 100)  # fmt: skip
        s = settings(arch=arch, image_size=size, local_epochs=1, rounds=1, batch_size=6)
        g = global_state(arch, size)
        r = train_round(g, shard, s, ledger_path=tmp_path / f"{arch}.json",
                        federation_id="f", round_number=1, seed=0)  # fmt: skip
        assert r.steps == 1
        assert all(np.isfinite(v).all() for v in r.delta.values())
        assert any(np.abs(v).max() > 0 for v in r.delta.values())


def test_budget_refusal_trains_and_writes_nothing(tmp_path):
    s = settings(local_epsilon_cap=0.5, target_epsilon=100.0, rounds=1)
    # Calibrating to the cap succeeds; then a plan for MORE steps than calibrated is refused.
    r = run(tmp_path, s)
    assert r.epsilon <= 0.5
    ledger_bytes = (tmp_path / "ledger.json").read_bytes()
    ckpt = sorted((tmp_path / "ckpt").iterdir())
    again = dataclasses.replace(s, rounds=2)
    with pytest.raises(BudgetExceededError, match=r"over the local cap 0\.5; nothing was trained"):
        run(tmp_path, again, round_number=2)
    assert (tmp_path / "ledger.json").read_bytes() == ledger_bytes
    assert sorted((tmp_path / "ckpt").iterdir()) == ckpt


def test_impossible_budget_on_a_fresh_site_writes_no_ledger(tmp_path):
    with pytest.raises(BudgetExceededError, match="too small"):
        run(tmp_path, settings(target_epsilon=1e-4))
    with pytest.raises(ProtocolRefusal, match="beyond the plan"):
        run(tmp_path, settings(rounds=1), round_number=2)
    assert not (tmp_path / "ledger.json").exists()
    assert list((tmp_path / "ckpt").iterdir()) == []


def test_stricter_local_cap_later_refuses_the_round(tmp_path):
    r = run(tmp_path, settings())
    with pytest.raises(BudgetExceededError, match="local cap"):
        run(tmp_path, settings(local_epsilon_cap=r.epsilon * 1.01), round_number=2)
    assert Ledger.load(tmp_path / "ledger.json", "fed-1").epochs_recorded(2) == 0


def test_resume_after_kill_matches_an_uninterrupted_run(tmp_path):
    whole = run(sub(tmp_path, "a"))

    b = tmp_path / "b"
    b.mkdir()

    def kill_after_first_epoch(done, total):
        if done == total // 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(b, progress=kill_after_first_epoch)
    assert Ledger.load(b / "ledger.json", "fed-1").epochs_recorded(1) == 1
    resumed = run(b)
    assert resumed.resumed_from_epoch == 1 and resumed.steps == 3
    assert resumed.losses == whole.losses
    for k in whole.delta:
        np.testing.assert_array_equal(resumed.delta[k], whole.delta[k])
    assert resumed.epsilon == pytest.approx(whole.epsilon, rel=1e-12)  # no double count
    # Re-running the finished round returns the same update and spends nothing more.
    again = run(b)
    assert again.steps == 0 and again.epsilon == resumed.epsilon
    for k in whole.delta:
        np.testing.assert_array_equal(again.delta[k], whole.delta[k])
    assert Ledger.load(b / "ledger.json", "fed-1").epochs_recorded(1) == 2


def test_crash_mid_epoch_is_replayed_and_counted_once(tmp_path):
    whole = run(sub(tmp_path, "whole"))

    def crash(done, total):
        if done == 4:  # the middle of the second epoch
            raise RuntimeError("power cut")

    with pytest.raises(RuntimeError):
        run(tmp_path, progress=crash)
    ledger = Ledger.load(tmp_path / "ledger.json", "fed-1")
    assert [e["status"] for e in ledger.entries(1)] == ["done", "started"]  # counted up front
    r = run(tmp_path)
    assert r.resumed_from_epoch == 1 and r.replayed_epochs == 1 and r.steps == 3
    assert r.epsilon == whole.epsilon  # the replayed epoch is not counted again
    for k in whole.delta:
        np.testing.assert_array_equal(r.delta[k], whole.delta[k])
    ledger = Ledger.load(tmp_path / "ledger.json", "fed-1")
    assert ledger.epochs_recorded(1) == 2 and ledger.round_finished(1)
    assert all(e["seed"] is None for e in ledger.entries())  # erased once the round finished


def test_checkpoint_from_another_global_model_is_not_reused(tmp_path):
    run(tmp_path)
    other = {k: v + 0.01 for k, v in global_state().items()}
    r = train_round(other, tiny_shard(), settings(), ledger_path=tmp_path / "ledger.json",
                    federation_id="fed-1", round_number=1, seed=11,
                    checkpoint_dir=tmp_path / "ckpt")  # fmt: skip
    assert r.resumed_from_epoch == 0 and r.steps == 6


def test_seed_makes_runs_reproducible(tmp_path):
    a = run(sub(tmp_path, "a"), checkpoint_dir=None)
    b = run(sub(tmp_path, "b"), checkpoint_dir=None)
    c = run(sub(tmp_path, "c"), checkpoint_dir=None,
            seed=12)  # fmt: skip
    assert all(np.array_equal(a.delta[k], b.delta[k]) for k in a.delta)
    assert any(not np.array_equal(a.delta[k], c.delta[k]) for k in a.delta)


def test_non_private_baseline_is_recorded_and_blocks_dp(tmp_path):
    s = settings(class_weights="balanced")
    r = run(tmp_path, s, dp=False)
    assert not r.dp and r.epsilon == float("inf") and r.noise_multiplier is None
    assert r.steps == 2 * 5  # plain minibatches over all 40 images
    with pytest.raises(BudgetExceededError, match="without DP"):
        run(tmp_path, settings(), round_number=2)
    with pytest.raises(FedxrayError, match="balanced"):
        run(sub(tmp_path, "x"), s)


def test_dp_training_learns_a_simple_signal(tmp_path):
    shard = tiny_shard(n=200)
    s = settings(local_epochs=12, rounds=1, batch_size=40, lr=0.5, target_epsilon=50.0)
    r = run(tmp_path, s, shard=shard, checkpoint_dir=None)
    assert r.losses[-1] < r.losses[0] * 0.8


def test_input_checks(tmp_path):
    with pytest.raises(FedxrayError, match="px"):
        run(tmp_path, settings(image_size=32))
    with pytest.raises(FedxrayError, match="classes"):
        run(tmp_path, settings(classes=("a", "b")))
    with pytest.raises(FedxrayError, match="invalid training settings"):
        settings(delta=2.0)
    with pytest.raises(FedxrayError, match="unknown field"):
        TrainSettings.from_dict(dict(settings().to_dict(), colour="red"))
    assert TrainSettings.from_dict(json.loads(json.dumps(settings().to_dict()))) == settings()
    assert not (tmp_path / "ledger.json").exists()


# -- augmentation -------------------------------------------------------------------------------
def test_augmentation_keeps_range_and_anatomy_side():
    img = np.zeros((8, 32, 32), np.uint8)
    img[:, 4:28, 3:14] = 200  # bright on the image's left
    x = to_unit_range(img)
    a1 = augment(x, torch.Generator().manual_seed(0))
    a2 = augment(x, torch.Generator().manual_seed(0))
    assert torch.equal(a1, a2)
    assert a1.shape == x.shape and a1.min() >= 0 and a1.max() <= 1
    assert not torch.equal(a1, x)
    left, right = a1[..., :16].mean((1, 2, 3)), a1[..., 16:].mean((1, 2, 3))
    assert (left > 3 * right).all()  # never flipped
    assert preprocess(img).shape == (8, 1, 32, 32)


def test_physical_batch_size_does_not_change_the_maths(tmp_path):
    s = settings(augment=False, local_epochs=1, rounds=1, batch_size=16)
    calls = []
    big = run(
        sub(tmp_path, "a"), s, checkpoint_dir=None, progress=lambda d, t: calls.append((d, t))
    )
    small = run(sub(tmp_path, "b"), dataclasses.replace(s, physical_batch_size=3),
                checkpoint_dir=None)  # fmt: skip
    for k in big.delta:
        np.testing.assert_allclose(small.delta[k], big.delta[k], rtol=1e-4, atol=1e-6)
    assert calls == [(i, 2) for i in (1, 2)]  # 20 patients, expected batch 16: 2 steps
