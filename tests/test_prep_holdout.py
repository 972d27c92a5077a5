"""`prep --holdout`: non-member patients split off by patient, never into the training shard."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedxray.data.shard_io import read_shard
from tests.cli_helpers import assert_clean_error, run_cli
from tests.conftest import REPO

SITE = REPO / "sample_data" / "hospital-c"  # the smallest sample site: 168 images


@pytest.fixture(scope="module")
def key(tmp_path_factory):
    folder = tmp_path_factory.mktemp("key")
    assert run_cli("keygen", "hospital-c", "-o", folder).code == 0
    return folder / "hospital-c.key"


def prep(*args):
    return run_cli("prep", SITE, "--size", "16", "--workers", "1", *args)


@pytest.fixture(scope="module")
def split(key, tmp_path_factory):
    folder = tmp_path_factory.mktemp("split")
    r = prep("--key", key, "-o", folder / "hospital-c.shard", "--holdout", "0.3", "--json")
    assert r.code == 0, r.err
    whole = folder / "whole.shard"
    assert prep("--key", key, "-o", whole).code == 0
    return folder, json.loads(r.out), r.err, read_shard(whole)


def test_held_out_patients_never_enter_the_training_shard(split):
    folder, doc, _, whole = split
    train = read_shard(folder / "hospital-c.shard")
    held = read_shard(folder / "hospital-c.holdout.shard")
    assert not set(train.patients) & set(held.patients)
    # Every image is in exactly one of the two, with its label and id.
    assert sorted([*train.image_ids, *held.image_ids]) == sorted(whole.image_ids)
    rows = {
        i: (p, lab) for i, p, lab in zip(whole.image_ids, whole.patients, whole.labels, strict=True)
    }
    for part in (train, held):
        for i, p, lab in zip(part.image_ids, part.patients, part.labels, strict=True):
            assert rows[i] == (p, lab)
    # Stratified by class, and about 30 % of the patients.
    assert set(held.labels.tolist()) == set(whole.labels.tolist())
    assert held.num_patients == pytest.approx(0.3 * whole.num_patients, abs=2)
    h = doc["holdout"]
    assert h["fraction"] == 0.3
    assert h["held_out"] == {"file": str(folder / "hospital-c.holdout.shard"),
                             "images": len(held), "patients": held.num_patients}  # fmt: skip
    assert h["training"]["images"] == len(train) and doc["images"] == len(whole)


def test_both_shards_stay_private_and_are_named_on_screen(split):
    folder, _, err, _ = split
    for name in ("hospital-c.shard", "hospital-c.holdout.shard"):
        assert (folder / name).stat().st_mode & 0o777 == 0o600
    assert "hospital-c.holdout.shard" in err and "they stay at this site" in err


def test_the_site_key_gives_the_same_split_every_time(key, split, tmp_path):
    folder = split[0]
    out = tmp_path / "again.shard"
    held = tmp_path / "held.shard"
    r = prep("--key", key, "-o", out, "--holdout", "0.3", "--holdout-output", held)
    assert r.code == 0, r.err
    before = read_shard(folder / "hospital-c.holdout.shard")
    assert np.array_equal(read_shard(held).image_ids, before.image_ids)


def test_nothing_is_written_when_the_held_out_shard_exists(split, tmp_path):
    (tmp_path / "a.holdout.shard").write_bytes(b"keep me")
    r = prep("-o", tmp_path / "a.shard", "--holdout", "0.3")
    assert_clean_error(r, 1, "output exists", "a.holdout.shard")
    assert not (tmp_path / "a.shard").exists()
    assert (tmp_path / "a.holdout.shard").read_bytes() == b"keep me"


@pytest.mark.parametrize("fraction", ["0", "1", "1.5", "-0.2"])
def test_a_fraction_outside_0_1_is_refused(tmp_path, fraction):
    r = prep("-o", tmp_path / "a.shard", "--holdout", fraction)
    assert_clean_error(r, 1, "between 0 and 1", "--holdout")
    assert not list(tmp_path.iterdir())


def test_holdout_output_needs_a_fraction_and_another_file(tmp_path):
    r = prep("-o", tmp_path / "a.shard", "--holdout-output", tmp_path / "b.shard")
    assert_clean_error(r, 1, "--holdout")
    r = prep(
        "-o", tmp_path / "a.shard", "--holdout", "0.2", "--holdout-output", tmp_path / "a.shard"
    )
    assert_clean_error(r, 1, "same file")
    assert not list(tmp_path.iterdir())


def test_a_failed_training_shard_takes_the_held_out_one_with_it(tmp_path, monkeypatch):
    import fedxray.steps.prep as step

    real = step.write_atomic
    calls = []

    def second_fails(path, data, **kw):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(path, data, **kw)

    monkeypatch.setattr(step, "write_atomic", second_fails)
    r = prep("-o", tmp_path / "a.shard", "--holdout", "0.3")
    assert r.code != 0 and len(calls) == 2
    assert not list(tmp_path.iterdir())
