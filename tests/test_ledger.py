"""The privacy ledger: persistence, refusal of corrupt files, locking, composition."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fedxray.errors import FedxrayError
from fedxray.training import accounting
from fedxray.training.ledger import Ledger, ledger_lock

REPO = Path(__file__).resolve().parents[1]


def calibrated(path, fid="fed", sigma=1.2, delta=1e-5):
    ledger = Ledger.load(path, fid)
    ledger.calibrate(noise_multiplier=sigma, delta=delta, unit="patient", sample_rate=0.1,
                     total_steps=100)  # fmt: skip
    return ledger


def test_missing_ledger_is_empty(tmp_path):
    ledger = Ledger.load(tmp_path / "ledger.json", "fed")
    assert ledger.epsilon() == 0.0 and ledger.rounds() == [] and ledger.calibration is None
    assert ledger.site.total_epsilon() == 0.0 and not ledger.site.exists
    assert len(ledger.site.ledger_id) == 32  # a random id, fixed once the file is written
    assert not (tmp_path / "ledger.json").exists()


def test_records_survive_reload_and_match_the_accountant(tmp_path):
    path = tmp_path / "ledger.json"
    ledger = calibrated(path)
    e1 = ledger.record_epoch(round_number=1, epoch=1, steps=10, noise_multiplier=1.2,
                             sample_rate=0.1)["epsilon_after"]  # fmt: skip
    ledger.record_epoch(round_number=1, epoch=2, steps=10, noise_multiplier=1.2, sample_rate=0.1)
    ledger.finish_round(1)
    e3 = ledger.record_epoch(round_number=2, epoch=1, steps=10, noise_multiplier=1.2,
                             sample_rate=0.1)["epsilon_after"]  # fmt: skip
    ledger.save()
    assert os.stat(path).st_mode & 0o777 == 0o600
    again = Ledger.load(path, "fed")
    assert again.to_dict() == ledger.to_dict()
    assert again.site.ledger_id == ledger.site.ledger_id
    assert again.epsilon() == pytest.approx(accounting.epsilon([(1.2, 0.1, 30)], 1e-5))
    assert e1 < e3 == pytest.approx(again.epsilon())
    rows = again.rounds()
    assert [(r.round, r.epochs, r.steps, r.finished) for r in rows] == [
        (1, 2, 20, True),
        (2, 1, 10, False),
    ]
    assert rows[0].epsilon_spent + rows[1].epsilon_spent == pytest.approx(rows[1].epsilon_total)
    assert rows[1].epsilon_total == pytest.approx(again.epsilon())
    # Other federations in the same file are separate and untouched.
    other = Ledger.load(path, "other")
    assert other.epsilon() == 0.0
    other.save()
    assert Ledger.load(path, "fed").to_dict() == ledger.to_dict()


def test_corrupt_ledger_stops_training_instead_of_resetting(tmp_path):
    path = tmp_path / "ledger.json"
    for content in (b"{not json", b'{"format": "something-else", "federations": {}}', b"[]"):
        path.write_bytes(content)
        with pytest.raises(FedxrayError, match="corrupt"):
            Ledger.load(path, "fed")
        assert path.read_bytes() == content


def test_calibration_is_stored_once(tmp_path):
    ledger = calibrated(tmp_path / "l.json")
    with pytest.raises(FedxrayError, match="already calibrated"):
        ledger.calibrate(noise_multiplier=0.5, delta=1e-5, unit="image", sample_rate=0.1,
                         total_steps=1)  # fmt: skip
    fresh = Ledger.load(tmp_path / "m.json", "fed")
    with pytest.raises(FedxrayError, match="before calibration"):
        fresh.record_epoch(round_number=1, epoch=1, steps=1, noise_multiplier=1.0, sample_rate=1)


def test_non_private_epoch_makes_epsilon_infinite(tmp_path):
    ledger = Ledger.load(tmp_path / "l.json", "fed")
    entry = ledger.record_epoch(round_number=1, epoch=1, steps=5, noise_multiplier=None,
                                sample_rate=1.0)  # fmt: skip
    assert entry["epsilon_after"] is None and ledger.epsilon() == math.inf and ledger.non_private
    ledger.save()  # infinity is stored as null: the file stays valid JSON
    doc = json.loads((tmp_path / "l.json").read_text())
    assert doc["federations"]["fed"]["rounds"]["1"]["epsilon_after"] is None
    assert Ledger.load(tmp_path / "l.json", "fed").rounds()[0].epsilon_total == math.inf


def test_lock_excludes_a_second_run(tmp_path):
    path = tmp_path / "ledger.json"
    with ledger_lock(path):
        second = ledger_lock(path)
        with pytest.raises(FedxrayError, match="another training run"):
            second.__enter__()
    with ledger_lock(path):  # released
        pass
    assert list(tmp_path.iterdir()) == []


_ROUND_SCRIPT = textwrap.dedent(
    """
    import sys, numpy as np, torch
    torch.set_num_threads(1)
    from fedxray.data.shard import Shard
    from fedxray.models import build_model, state_to_numpy
    from fedxray.training.loop import train_round
    from fedxray.training.settings import TrainSettings
    ledger, rounds, epochs, round_number = sys.argv[1], *map(int, sys.argv[2:5])
    rng = np.random.default_rng(0)
    shard = Shard(images=(rng.random((200, 16, 16)) * 255).astype(np.uint8),
                  labels=np.arange(200) % 2, classes=["a", "b"], image_size=16,
                  patients=np.array([f"p{i // 2}" for i in range(200)]))
    s = TrainSettings(arch="smallcnn", image_size=16, classes=("a", "b"), local_epochs=epochs,
                      rounds=rounds, batch_size=2, lr=0.05, target_epsilon=4.0, delta=1e-3,
                      max_grad_norm=1.0)
    g = state_to_numpy(build_model("smallcnn", 16, 2, seed=0))
    r = train_round(g, shard, s, ledger_path=ledger, federation_id="fed",
                    round_number=round_number, seed=round_number)
    print(repr(r.epsilon))
    """
)


def _round_in_subprocess(ledger, rounds, epochs, round_number) -> float:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, "-c", _ROUND_SCRIPT, str(ledger), str(rounds), str(epochs),
         str(round_number)],
        capture_output=True, text=True, env=env, check=True, timeout=300,
    )  # fmt: skip
    return float(out.stdout.strip().splitlines()[-1])


def _round_in_process(ledger, rounds, epochs, round_number) -> float:
    old = sys.argv
    sys.argv = ["-", str(ledger), str(rounds), str(epochs), str(round_number)]
    try:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(_ROUND_SCRIPT, {})
    finally:
        sys.argv = old
    return float(out.getvalue().strip())


def test_ledger_composes_across_processes(tmp_path):
    # Two 1-epoch rounds, each in its own process, spend what one 2-epoch run spends.
    # (100 patients, expected batch 2: sample rate 0.02, 50 steps per epoch.)
    split = tmp_path / "split.json"
    e1 = _round_in_subprocess(split, rounds=2, epochs=1, round_number=1)
    e2 = _round_in_subprocess(split, rounds=2, epochs=1, round_number=2)
    whole_ledger = tmp_path / "whole.json"
    whole = _round_in_process(whole_ledger, rounds=1, epochs=2, round_number=1)
    assert 0 < e1 < e2
    assert e2 == pytest.approx(whole, rel=1e-9)
    assert 4.0 * 0.98 < whole <= 4.0  # calibrated once, to end at the target
    a, b = Ledger.load(split, "fed"), Ledger.load(tmp_path / "whole.json", "fed")
    assert a.noise_multiplier == b.noise_multiplier
    assert sum(r.steps for r in a.rounds()) == sum(r.steps for r in b.rounds()) == 100
    assert a.epsilon() == pytest.approx(e2)
