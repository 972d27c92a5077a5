"""Iterate averaging: the sites' moving average and the coordinator's mean of K models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedxray.training.averaging import EMA, attach_ema, averaged_state, mean_state
from tests.test_training import run, settings, sub


def _iterates(decay: float, steps: int = 6):
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.5)
    attach_ema(opt, decay)
    seen = []
    opt.register_step_post_hook(lambda *a: seen.append(model.weight.detach().clone()))
    x = torch.randn(8, 3)
    for _ in range(steps):
        opt.zero_grad()
        model(x).pow(2).sum().backward()
        opt.step()
    return model, opt, seen


def test_the_site_average_is_the_debiased_moving_average_of_the_iterates():
    decay = 0.8
    model, opt, seen = _iterates(decay)
    n = len(seen)
    weights = np.array([decay ** (n - i) for i in range(1, n + 1)])
    expected = sum(w * s.double() for w, s in zip(weights, seen, strict=True)) / weights.sum()
    got = averaged_state(model, opt)["weight"]
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-6)
    assert not torch.equal(got, model.weight)  # the last iterate is not the average


def test_no_decay_attaches_nothing():
    model, opt, _ = _iterates(0.0)
    assert all(EMA not in st for st in opt.state.values())
    assert all(torch.equal(averaged_state(model, opt)[k], v) for k, v in model.state_dict().items())


def test_the_mean_of_k_models_is_exact():
    rng = np.random.default_rng(1)
    models = [{"a": rng.normal(size=(4, 3)).astype(np.float32),
               "b": rng.normal(size=5).astype(np.float32)} for _ in range(3)]  # fmt: skip
    got = mean_state(models)
    for name in ("a", "b"):
        exact = np.mean([m[name].astype(np.float64) for m in models], axis=0)
        assert got[name].dtype == np.float32
        np.testing.assert_array_equal(got[name], exact.astype(np.float32))
    assert mean_state(models[:1])["a"] is not models[0]["a"]
    np.testing.assert_array_equal(mean_state(models[:1])["a"], models[0]["a"])
    with pytest.raises(ValueError):
        mean_state([])


def test_the_update_of_a_site_with_ema_is_its_average_and_survives_a_crash(tmp_path):
    plain = run(sub(tmp_path, "plain"))
    whole = run(sub(tmp_path, "ema"), settings(ema_decay=0.7))
    assert any(not np.array_equal(plain.delta[k], whole.delta[k]) for k in plain.delta)
    assert whole.losses == plain.losses  # the same training: only the update differs

    def crash(done, total):
        if done == 4:  # the middle of the second epoch
            raise RuntimeError("power cut")

    again = sub(tmp_path, "crashed")
    with pytest.raises(RuntimeError):
        run(again, settings(ema_decay=0.7), progress=crash)
    resumed = run(again, settings(ema_decay=0.7))
    assert resumed.resumed_from_epoch == 1 and resumed.replayed_epochs == 1
    for k in whole.delta:
        np.testing.assert_array_equal(resumed.delta[k], whole.delta[k])


def test_ema_off_keeps_the_fingerprint_and_the_checkpoint_of_before(tmp_path):
    off = settings()
    assert "ema_decay" not in str(off.fingerprint())  # a hash; the field is left out of it
    assert off.fingerprint() != settings(ema_decay=0.5).fingerprint()
    run(tmp_path, off)
    from safetensors import safe_open

    (ckpt,) = (tmp_path / "ckpt").iterdir()
    with safe_open(str(ckpt), framework="np") as f:
        assert not [k for k in f.keys() if "ema" in k]  # noqa: SIM118 - safe_open API
