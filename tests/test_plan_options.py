"""Plan options that every site must train with: privacy unit, class weights, augmentation.

Each goes init option -> signed plan -> every site's training settings, and `verify` shows
it; a value no site could honour is refused at init with one line.
"""

from __future__ import annotations

import json

import pytest

from fedxray import keys
from fedxray.plan import create_plan, plan_from_bytes
from fedxray.settings import FederationSettings, SettingError
from fedxray.settings_options import settings_from_options
from fedxray.training.settings import TrainSettings
from tests.cli_helpers import run_cli
from tests.test_training import run, settings, tiny_shard


def _plan(**options):
    coord = keys.generate("coordinator")
    sites = [keys.generate(n).public for n in "abc"]
    settings = settings_from_options(model="tinycnn", image_size=32, **options)
    return plan_from_bytes(create_plan("f", coord, sites, settings))


def test_the_options_reach_every_sites_training_settings():
    plan = _plan(privacy_unit="image", class_weights="1,2,0.5", augment=False)
    t = TrainSettings.from_plan(plan.settings)
    assert (t.privacy_unit, t.class_weights, t.augment) == ("image", (1.0, 2.0, 0.5), False)
    # Unset, they keep the sites' defaults and the plan does not even write them.
    plan = _plan()
    t = TrainSettings.from_plan(plan.settings)
    assert (t.privacy_unit, t.class_weights, t.augment) == ("auto", None, True)
    written = FederationSettings().to_dict()
    assert "privacy_unit" not in written["dp"]
    # Augmentation's default is the model's (off for scatter-linear, on for the CNNs), so a
    # plan always says which it is.
    assert written["training"]["augment"] is False
    assert "class_weights" not in written["training"]


def test_a_site_trains_with_the_plans_privacy_unit(tmp_path):
    shard = tiny_shard()  # knows its patients: "auto" would protect patients
    unit = settings(privacy_unit="image", local_epochs=1, rounds=1)
    assert run(tmp_path, unit, shard).privacy_unit == "image"
    auto = settings(local_epochs=1, rounds=1)
    other = tmp_path / "x"
    other.mkdir()
    assert run(other, auto, shard).privacy_unit == "patient"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"class_weights": "balanced"}, "private class counts"),
        ({"class_weights": "1,2"}, "one weight per class"),
        ({"class_weights": "1,-2,1"}, "positive"),
        ({"class_weights": "1,x,1"}, "numbers separated by commas"),
        ({"privacy_unit": "person"}, "privacy-unit must be one of"),
    ],
)
def test_what_no_site_could_honour_is_refused_at_init(options, message):
    coord = keys.generate("coordinator")
    sites = [keys.generate(n).public for n in "abc"]
    with pytest.raises(SettingError, match=message):
        create_plan("f", coord, sites, settings_from_options(**options))


def test_balanced_weights_are_for_plans_without_dp_only():
    s = FederationSettings.from_dict(
        {"dp": {"enabled": False}, "training": {"class_weights": "balanced"}}
    )
    s.check(3)
    assert TrainSettings.from_plan(s).class_weights == "balanced"


def test_init_refuses_in_one_line_and_verify_shows_the_options(tmp_path):
    for s in "abc":
        assert run_cli("keygen", s, "-o", tmp_path, "-q").code == 0
    cards = [tmp_path / f"{s}.pub" for s in "abc"]
    r = run_cli("init", "--name", "x", "-o", tmp_path / "c", "--class-weights", "balanced", *cards)
    assert r.code == 1 and "--class-weights" in r.err and "Traceback" not in r.err
    assert not (tmp_path / "c").exists() or not (tmp_path / "c" / "x.plan").exists()
    r = run_cli(
        "init", "--name", "x", "-o", tmp_path / "c", "--model", "tinycnn", "--image-size", "32",
        "--privacy-unit", "patient", "--class-weights", "1,3,3", "--no-augment", "-q", *cards,
    )  # fmt: skip
    assert r.code == 0, r.err
    r = run_cli("verify", tmp_path / "c" / "x.plan")
    assert r.code == 0
    assert "dp.privacy_unit: patient" in r.err and "training.augment: False" in r.err
    assert "training.class_weights: 1.0, 3.0, 3.0" in r.err
    doc = json.loads(run_cli("verify", tmp_path / "c" / "x.plan", "--json").out)
    assert doc["settings"]["training.class_weights"] == [1.0, 3.0, 3.0]


@pytest.mark.parametrize(
    "options, words, flag",
    [
        (
            ("--augment",),
            "scatter-linear trains its head on features computed once",
            "--no-augment",
        ),
        (
            ("--model", "tinycnn", "--centering"),
            "tinycnn has no center to release",
            "--no-centering",
        ),
    ],
)
def test_what_a_model_cannot_do_is_refused_at_init(tmp_path, options, words, flag):
    for s in ("a", "b", "c"):
        assert run_cli("keygen", s, "-o", tmp_path, "-q").code == 0
    r = run_cli("init", "--name", "f", "-o", tmp_path / "coord", *options,
                *(tmp_path / f"{s}.pub" for s in "abc"))  # fmt: skip
    assert r.code == 1 and words in r.err and f"({flag})" in r.err, r.err
    assert "Traceback" not in r.err and not (tmp_path / "coord").exists()
