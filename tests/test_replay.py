"""The privacy-critical paths of training, each pinned by a test that fails on the bug named
in issue 12: patient sampling, --no-dp after DP, a changed unit or delta, checkpoints of
other data, seeds, and the replay of interrupted epochs (counted once)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from fedxray.data.shard import Shard
from fedxray.errors import BudgetExceededError, FedxrayError
from fedxray.steps.privacy import privacy_report
from fedxray.training import dp_engine, replay, sampling
from fedxray.training.ledger import Ledger, SiteLedger
from fedxray.training.replay import epoch_seed
from tests.test_training import run, settings, sub, tiny_shard


def interleaved_shard(patients=20, images_each=3) -> Shard:
    """Patients' images interleaved: a, b, c, ..., a, b, c, ... (not side by side)."""
    base = tiny_shard(n=patients * images_each)
    pids = np.array([f"p{i % patients}" for i in range(patients * images_each)])
    return dataclasses.replace(base, patients=pids)


def crash_at(step):
    def progress(done, total):
        if done == step:
            raise KeyboardInterrupt

    return progress


def _whole_patients(shard, idx):
    """Every sampled patient comes with all of their images, side by side."""
    groups, _ = sampling.UnitSampler(shard, "patient").grouping(idx)
    for g in np.unique(groups):
        (who,) = set(shard.patients[idx[groups == g]])
        assert sorted(idx[groups == g]) == sorted(np.flatnonzero(shard.patients == who))
    return True


def test_interleaved_patients_come_whole_in_a_step():
    shard = interleaved_shard()
    sampler = sampling.UnitSampler(shard, "patient")
    rng = np.random.default_rng(0)
    for _ in range(300):
        assert _whole_patients(shard, sampler.sample(rng, 0.6))


def test_interleaved_patients_in_a_training_round(tmp_path, monkeypatch):
    shard = interleaved_shard()
    steps = []
    sample = sampling.UnitSampler.sample

    def recording(self, rng, q):
        steps.append(sample(self, rng, q))
        return steps[-1]

    monkeypatch.setattr(sampling.UnitSampler, "sample", recording)
    run(tmp_path, settings(batch_size=12), shard=shard, checkpoint_dir=None)
    assert len(steps) == 2 * 2 and sum(map(len, steps)) > 20
    for idx in steps:
        assert _whole_patients(shard, idx)


def test_no_dp_round_after_dp_rounds_makes_epsilon_infinite(tmp_path):
    s = settings(rounds=3)
    first = run(tmp_path, s)
    assert math.isfinite(first.epsilon)
    baseline = run(tmp_path, s, round_number=2, dp=False)
    assert baseline.epsilon == math.inf
    ledger = Ledger.load(tmp_path / "ledger.json", "fed-1")
    assert ledger.epsilon() == math.inf and ledger.site.total_epsilon() == math.inf
    assert ledger.rounds()[-1].epsilon_total == math.inf
    report = privacy_report(tmp_path / "ledger.json")
    assert report.federations[0].epsilon == math.inf and report.total_epsilon == math.inf
    with pytest.raises(BudgetExceededError, match="without DP"):
        run(tmp_path, s, round_number=3)


@pytest.mark.parametrize(("change", "message"), [
    ({"privacy_unit": "image"}, "privacy unit changed"),
    ({"delta": 1e-4}, "delta changed"),
])  # fmt: skip
def test_privacy_unit_or_delta_cannot_change_halfway(tmp_path, change, message):
    run(tmp_path, settings())
    before = (tmp_path / "ledger.json").read_bytes()
    with pytest.raises(FedxrayError, match=message):
        run(tmp_path, settings(**change), round_number=2)
    assert (tmp_path / "ledger.json").read_bytes() == before


def test_a_checkpoint_of_other_data_or_settings_is_not_reused(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, progress=crash_at(4))  # in epoch 2: epoch 1's checkpoint is written
    other_pixels = dataclasses.replace(tiny_shard(), images=tiny_shard(seed=5).images)
    r = run(tmp_path, shard=other_pixels)
    assert r.resumed_from_epoch == 0 and r.replayed_epochs == 0
    # The records of the other shard's epochs stay counted, and the site is told what it cost.
    assert Ledger.load(tmp_path / "ledger.json", "fed-1").epochs_recorded(1) == 4
    assert any("the shard changed" in w for w in r.warnings)
    assert any("instead of" in w for w in r.warnings)
    b = sub(tmp_path, "settings")
    with pytest.raises(KeyboardInterrupt):
        run(b, progress=crash_at(4))
    assert run(b, settings(lr=0.07)).resumed_from_epoch == 0


def test_seed_none_never_falls_back_to_a_fixed_seed(tmp_path):
    torch.manual_seed(0)
    np.random.seed(0)
    a = run(sub(tmp_path, "a"), seed=None, checkpoint_dir=None)
    torch.manual_seed(0)
    np.random.seed(0)
    b = run(sub(tmp_path, "b"), seed=None, checkpoint_dir=None)
    assert all(not np.array_equal(a.delta[k], b.delta[k]) for k in a.delta)
    seeds = {epoch_seed(None, "f", 1, 1, 0) for _ in range(4)}
    assert len(seeds) == 4 and all(len(s) == 64 for s in seeds)  # 256 fresh bits each
    torch.manual_seed(0)
    np.random.seed(0)
    draws = [dp_engine.NoiseGenerator().normal((8,), torch.float32, "cpu") for _ in range(2)]
    assert not torch.equal(*draws)


def test_an_explicit_seed_is_reproducible_but_never_reused_for_a_new_attempt():
    assert epoch_seed(7, "f", 1, 2, 0) == epoch_seed(7, "f", 1, 2, 0)
    seeds = {epoch_seed(7, "f", r, e, a) for r in (1, 2) for e in (1, 2) for a in (0, 1)}
    assert len(seeds) == 8
    rng_a, aug_a, _ = replay.epoch_streams(epoch_seed(7, "f", 1, 1, 0))
    rng_b, aug_b, _ = replay.epoch_streams(epoch_seed(7, "f", 1, 1, 1))
    assert rng_a.random() != rng_b.random() and aug_a != aug_b


def test_crash_between_checkpoint_and_ledger_marks_the_epoch_done(tmp_path, monkeypatch):
    whole = run(sub(tmp_path, "whole"))
    saves, real = [], SiteLedger.save

    def failing_save(self):
        saves.append(1)
        if len(saves) == 3:  # new ledger, epoch 1 started, epoch 1 done <- here
            raise KeyboardInterrupt
        real(self)

    monkeypatch.setattr(SiteLedger, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path)
    monkeypatch.setattr(SiteLedger, "save", real)
    statuses = [e["status"] for e in Ledger.load(tmp_path / "ledger.json", "fed-1").entries()]
    assert statuses == ["started"]
    r = run(tmp_path)
    assert (r.resumed_from_epoch, r.replayed_epochs, r.epsilon) == (1, 0, whole.epsilon)
    for k in whole.delta:
        np.testing.assert_array_equal(r.delta[k], whole.delta[k])


def test_lost_checkpoint_mid_round_replays_the_finished_epochs_free(tmp_path):
    whole = run(sub(tmp_path, "whole"))
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, progress=crash_at(4))
    for f in (tmp_path / "ckpt").iterdir():
        f.unlink()
    r = run(tmp_path)
    assert (r.resumed_from_epoch, r.replayed_epochs, r.steps) == (0, 2, 6)
    assert r.epsilon == whole.epsilon and not r.warnings
    for k in whole.delta:
        np.testing.assert_array_equal(r.delta[k], whole.delta[k])


def test_a_replay_that_gives_another_result_is_never_used(tmp_path, monkeypatch):
    # As on a GPU whose kernels are not deterministic: the replayed result differs from the
    # recorded one, so it is thrown away and the epoch runs with fresh randomness (counted).
    whole = run(sub(tmp_path, "whole"))
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, progress=crash_at(4))
    for f in (tmp_path / "ckpt").iterdir():
        f.unlink()
    monkeypatch.setattr(replay.RoundReplay, "replay_matches", lambda self, e, h: False)
    r = run(tmp_path)
    assert r.replayed_epochs == 0 and r.epsilon > whole.epsilon
    assert any("another result" in w for w in r.warnings)
    ledger = Ledger.load(tmp_path / "ledger.json", "fed-1")
    assert [e["status"] for e in ledger.entries()] == ["abandoned", "abandoned", "done", "done"]


def test_a_finished_round_without_its_checkpoint_is_counted_again_and_says_so(tmp_path):
    first = run(tmp_path)
    for f in (tmp_path / "ckpt").iterdir():
        f.unlink()
    again = run(tmp_path)
    assert again.epsilon > first.epsilon
    assert any("seed was erased" in w for w in again.warnings)
    assert Ledger.load(tmp_path / "ledger.json", "fed-1").epochs_recorded(1) == 4


def test_an_interrupted_round_leaves_the_last_round_possible(tmp_path):
    # The case: 2 rounds of 4 epochs calibrated to end at the budget; a kill once the
    # ledger holds 2 epochs used to count one twice, and the last round was then refused.
    s = settings(rounds=2, local_epochs=4)
    whole = sub(tmp_path, "whole")
    run(whole, s)
    uninterrupted = run(whole, s, round_number=2).epsilon
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, s, progress=crash_at(4))  # in epoch 2, after epoch 1's checkpoint
    assert run(tmp_path, s).replayed_epochs == 1
    last = run(tmp_path, s, round_number=2)
    assert last.epsilon == uninterrupted
    assert s.target_epsilon * (1 - 1e-3) < last.epsilon <= s.target_epsilon


def test_a_federation_without_dp_leaves_no_guarantee_for_any_other(tmp_path):
    run(tmp_path, settings(), dp=False)
    with pytest.raises(BudgetExceededError, match="without DP: no privacy guarantee remains"):
        run(tmp_path, settings(), federation_id="fed-2")
    assert SiteLedger.load(tmp_path / "ledger.json").total_epsilon() == math.inf
