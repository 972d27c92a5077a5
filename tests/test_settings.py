"""The typed plan settings: one set of defaults, old plans still load, unknown keys refused."""

from __future__ import annotations

import dataclasses
import json

import pytest

from fedxray import keys
from fedxray.artifact import build_artifact, parse_unverified
from fedxray.errors import VerificationError
from fedxray.plan import create_plan, plan_from_bytes
from fedxray.settings import (
    OPTIONS,
    FederationSettings,
    SettingError,
    make_settings,
    option_default,
    settings_from_options,
)
from fedxray.training.settings import TrainSettings
from tests.cli_helpers import run_cli
from tests.conftest import REPO

LEGACY = REPO / "tests" / "data" / "pre-refactor.plan"  # written by fedxray before typed settings


def test_a_plan_written_before_typed_settings_still_loads():
    data = LEGACY.read_bytes()
    plan = plan_from_bytes(data)
    s = plan.settings
    assert (s.model.arch, s.model.image_size, s.training.rounds, s.training.lr) == (
        "tinycnn",
        32,
        4,
        0.2,
    )
    assert (s.dp.epsilon, s.secagg.strict, s.server.optimizer, s.min_sites) == (
        6.0,
        True,
        "momentum",
        2,
    )
    # The same values, key for key, as the file carries; settings added since take the
    # defaults of the plan's model (a CNN: Poisson batches, no centring).
    stored = parse_unverified(data)[0].header.meta["settings"]
    now = s.to_dict()
    shared = {k: {n: v[n] for n in stored[k]} if isinstance(v, dict) else v
              for k, v in now.items() if k in stored}  # fmt: skip
    assert json.dumps(shared, sort_keys=True) == json.dumps(stored, sort_keys=True)
    assert (s.training.full_batch, s.training.centering, s.training.bias_lr) == (False, False, 0)


def _signed_plan(settings: dict) -> bytes:
    coord = keys.generate("coordinator")
    sites = [keys.generate(n).public for n in "abc"]
    return build_artifact(
        "plan",
        federation="f" * 32,
        round=0,
        sender="coordinator",
        parent="",
        meta={
            "name": "odd",
            "coordinator": coord.public.to_dict(),
            "sites": [x.to_dict() for x in sites],
            "settings": settings,
        },
        tensors={},
        signer=coord,
    ).data


def test_unknown_or_mistyped_settings_in_a_plan_are_refused():
    good = FederationSettings().to_dict()
    with pytest.raises(VerificationError, match=r"unknown setting 'training\.warmup'"):
        plan_from_bytes(_signed_plan({**good, "training": {**good["training"], "warmup": 3}}))
    with pytest.raises(VerificationError, match="unknown setting 'colour'"):
        plan_from_bytes(_signed_plan({**good, "colour": "red"}))
    with pytest.raises(VerificationError, match="rounds must be an integer"):
        plan_from_bytes(_signed_plan({**good, "training": {**good["training"], "rounds": "5"}}))
    with pytest.raises(VerificationError, match="epsilon must be a number"):
        plan_from_bytes(_signed_plan({**good, "dp": {**good["dp"], "epsilon": True}}))
    # Missing settings take today's defaults.
    assert plan_from_bytes(_signed_plan({"min_sites": 3})).settings == FederationSettings()


def test_defaults_are_written_once():
    assert settings_from_options() == FederationSettings() == make_settings()
    assert option_default("clip_norm") == FederationSettings().dp.max_grad_norm
    assert option_default("classes") == "normal,bacterial,viral"
    # Every flat option sets a real setting.
    for option in OPTIONS:
        option_default(option)
    s = settings_from_options(model="resnet18", epsilon=3.0, strict=True, min_sites=None)
    assert (s.model.arch, s.dp.epsilon, s.secagg.strict, s.min_sites) == ("resnet18", 3.0, True, 3)
    with pytest.raises(TypeError):
        settings_from_options(colour="red")


def test_impossible_settings_name_the_setting_not_a_flag():
    coord = keys.generate("coordinator")
    sites = [keys.generate(n).public for n in "abc"]
    with pytest.raises(SettingError) as e:
        create_plan("f", coord, sites, settings_from_options(epsilon=-1.0))
    assert e.value.setting == "dp.epsilon" and "--" not in e.value.message
    with pytest.raises(SettingError) as e:
        create_plan("f", coord, sites, settings_from_options(image_size=8))
    assert e.value.setting == "model.image_size" and "--" not in e.value.message


def test_the_cli_names_the_flag_of_a_refused_setting(tmp_path):
    for s in "abc":
        assert run_cli("keygen", s, "-o", tmp_path, "-q").code == 0
    cards = [tmp_path / f"{s}.pub" for s in "abc"]
    r = run_cli("init", "--name", "x", "-o", tmp_path / "c", "--clip-norm", "0", *cards)
    assert r.code == 1 and "clipping norm" in r.err and "--clip-norm" in r.err
    assert not (tmp_path / "c" / "x.plan").exists()


def test_training_settings_come_from_the_plan_in_one_place():
    plan = make_settings(
        {"model": {"arch": "tinycnn", "image_size": 32}, "training": {"momentum": 0.5}}
    )
    t = TrainSettings.from_plan(plan, local_epsilon_cap=2.0)
    assert (t.arch, t.image_size, t.classes) == ("tinycnn", 32, plan.classes)
    assert (t.momentum, t.lr, t.rounds) == (0.5, plan.training.lr, plan.training.rounds)
    assert (t.target_epsilon, t.delta, t.max_grad_norm) == (8.0, 1e-5, 1.0)
    assert t.local_epsilon_cap == 2.0
    # A plan field that training also knows flows through without another line of code.
    fields = {f.name for f in dataclasses.fields(TrainSettings)}
    for section in ("model", "training", "dp"):
        for name in getattr(plan, section).to_dict():
            if name in fields:
                assert getattr(t, name) == getattr(getattr(plan, section), name)
