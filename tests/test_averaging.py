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


# -- the coordinator's published average ------------------------------------------------------
def _fed(tmp_path, k):
    from tests.test_secagg_protocol import Fed

    return Fed(tmp_path, n_sites=3, server={"optimizer": "fedavg", "lr": 1.0, "average_last": k})


def _round(fed, model: bytes, r: int, *, record: bool = True, total: bytes | None = None):
    """Round ``r`` from ``model``: three sites' updates, summed (or ``total``) and unmasked."""
    from fedxray.steps.unmask import unmask

    total = total or _sum(fed, model, r)
    coord = fed.dirs["coordinator"]
    return unmask(total, [], fed.plan, fed.coord, model, coord / "server.state",
                  state_dir=coord if record else None)  # fmt: skip


def _sum(fed, model: bytes, r: int) -> bytes:
    from fedxray.modelfile import load_model_artifact
    from fedxray.steps.mask import mask_update

    parent = load_model_artifact(model, fed.plan).digest
    masked = [
        mask_update(fed.update(s, r, seed=10 * r + i, parent=parent), fed.plan, fed.sites[s],
                    fed.dirs[s]).data
        for i, s in enumerate(fed.sites)
    ]  # fmt: skip
    return fed.aggregate(masked, r)[0]


def _weights(data: bytes, fed):
    from fedxray.modelfile import load_model_artifact

    return dict(load_model_artifact(data, fed.plan).tensors)


def _mean(models):
    return {n: np.mean([m[n].astype(np.float64) for m in models], axis=0).astype(np.float32)
            for n in models[0]}  # fmt: skip


def _equal(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[n], b[n]) for n in a)


def test_the_published_model_is_the_mean_of_the_last_k_and_sites_train_from_the_iterate(
    tmp_path,
):
    fed = _fed(tmp_path, 3)
    model, iterates = fed.model, []
    for r in range(1, 5):
        res = _round(fed, model, r)
        # The model the sites continue from is the FedAvg step from the last global model,
        # exactly as without averaging (to the fixed-point rounding of secure aggregation).
        base, n = _weights(model, fed), sum(fed.counts.values())
        for name, w in _weights(res.model, fed).items():
            step = sum(c * fed.deltas[s][name].astype(np.float64) for s, c in fed.counts.items())
            np.testing.assert_allclose(w, base[name] + step / n, atol=1e-6)
        iterates.append(_weights(res.model, fed))
        assert res.averaged_rounds == list(range(max(2, r - 1), r + 2))
        assert _equal(_weights(res.averaged, fed), _mean(iterates[-3:]))
        assert r == 1 or not _equal(_weights(res.averaged, fed), iterates[-1])
        model = res.model
    from fedxray.modelfile import averaged_rounds, load_model_artifact

    pub = load_model_artifact(res.averaged, fed.plan, round_number=5)
    assert averaged_rounds(pub) == [3, 4, 5]
    assert pub.header.parent == load_model_artifact(res.model, fed.plan).digest


def test_without_averaging_nothing_is_published_and_the_state_holds_no_models(tmp_path):
    from safetensors import safe_open

    fed = _fed(tmp_path, 1)
    res = _round(fed, fed.model, 1)
    assert (
        res.averaged is None
        and res.averaged_rounds is None
        and "averaged_model" not in (res.to_dict())
    )
    with safe_open(str(fed.dirs["coordinator"] / "server.state"), framework="np") as f:
        assert not [k for k in f.keys() if k.startswith("window/")]  # noqa: SIM118
        assert "window" not in (f.metadata() or {})


def test_a_redone_or_abandoned_round_keeps_the_right_window(tmp_path):
    from fedxray.steps.abandon import abandon_round

    fed = _fed(tmp_path, 2)
    coord = fed.dirs["coordinator"]
    m2 = _round(fed, fed.model, 1)
    total = _sum(fed, m2.model, 2)
    m3 = _round(fed, m2.model, 2, total=total)
    again = _round(fed, m2.model, 2, total=total)  # once more (its model file was lost)
    assert again.averaged_rounds == [2, 3]
    assert _equal(_weights(again.averaged, fed), _weights(m3.averaged, fed))
    # Round 3 is abandoned: round 4 trains from round 3's weights, re-issued.
    m4 = abandon_round(m3.model, fed.plan, fed.coord, coord).model
    m5 = _round(fed, m4, 4)
    assert m5.averaged_rounds == [3, 5]  # the re-issued weights are in the window once
    expected = _mean([_weights(m3.model, fed), _weights(m5.model, fed)])
    assert _equal(_weights(m5.averaged, fed), expected)


def test_a_model_recorded_by_an_interrupted_unmask_then_abandoned_is_not_averaged(tmp_path):
    from fedxray.steps.abandon import abandon_round

    fed = _fed(tmp_path, 3)
    m2 = _round(fed, fed.model, 1)
    # Round 2's unmask saved the server state, then died before the round was recorded as
    # unmasked or its model was written: the coordinator abandons round 2 instead.
    _round(fed, m2.model, 2, record=False)
    m3 = abandon_round(m2.model, fed.plan, fed.coord, fed.dirs["coordinator"]).model
    m4 = _round(fed, m3, 3)
    assert m4.averaged_rounds == [2, 4]
    assert _equal(
        _weights(m4.averaged, fed), _mean([_weights(m2.model, fed), _weights(m4.model, fed)])
    )


def test_sites_and_abandon_refuse_the_published_average(tmp_path):
    from fedxray.errors import ProtocolRefusal
    from fedxray.steps.abandon import abandon_round
    from fedxray.steps.site_memory import SiteFiles
    from fedxray.steps.train_local import train_local

    fed = _fed(tmp_path, 2)
    res = _round(fed, fed.model, 1)
    with pytest.raises(ProtocolRefusal, match="published average of rounds 2"):
        abandon_round(res.averaged, fed.plan, fed.coord, fed.dirs["coordinator"])
    key = fed.sites["alpha"]
    with pytest.raises(ProtocolRefusal, match="trains from the global model itself"):
        train_local(res.averaged, tmp_path / "none.shard", fed.plan, key,
                    files=SiteFiles.beside_key(fed.dirs["alpha"] / "alpha.key"))  # fmt: skip


def test_a_missing_server_state_is_not_silently_a_shorter_window(tmp_path):
    from fedxray.errors import FedxrayError

    fed = _fed(tmp_path, 3)
    m2 = _round(fed, fed.model, 1)
    (fed.dirs["coordinator"] / "server.state").unlink()
    with pytest.raises(FedxrayError, match="averaging the last global models"):
        _round(fed, m2.model, 2)


def test_unmask_writes_the_average_beside_the_next_model(tmp_path):
    from fedxray.modelfile import load_model_artifact
    from fedxray.steps.mask import mask_update
    from fedxray.steps.shared import Party
    from fedxray.steps.unmask import unmask_files
    from tests.cli_helpers import run_cli

    fed = _fed(tmp_path, 2)
    coord = fed.dirs["coordinator"]
    (coord / "round-0001.model").write_bytes(fed.model)
    parent = load_model_artifact(fed.model, fed.plan).digest
    masked = [
        mask_update(fed.update(s, 1, parent=parent), fed.plan, fed.sites[s], fed.dirs[s]).data
        for s in fed.sites
    ]
    total, _ = fed.aggregate(masked, 1)
    (coord / "round-0001.sum").write_bytes(total)
    me = Party(fed.plan, fed.coord, coord / "coordinator.key")
    res = unmask_files(me, coord / "round-0001.sum", [])
    assert res.path == coord / "round-0002.model"
    assert res.averaged_path == coord / "round-0002.averaged.model"
    assert res.to_dict()["averaged_model"] == str(res.averaged_path)
    assert res.averaged_path.read_bytes() == res.averaged and res.path.read_bytes() == res.model
    # Run again after the model was lost: the average is not replaced without --force.
    from fedxray.errors import FedxrayError

    res.path.unlink()
    with pytest.raises(FedxrayError, match="exists"):
        unmask_files(me, coord / "round-0001.sum", [])
    assert not res.path.exists()
    r = run_cli("inspect", res.averaged_path)
    assert r.code == 0 and "averaged" in r.err
