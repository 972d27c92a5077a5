"""Identities, key files and the plan."""

from __future__ import annotations

import os
import stat

import pytest

from fedxray import keys
from fedxray.cards import card_bytes, card_from_bytes
from fedxray.errors import FedxrayError, VerificationError
from fedxray.plan import create_plan, plan_from_bytes
from fedxray.settings import make_settings


def test_key_file_is_private_and_never_overwritten(tmp_path):
    ident = keys.generate("site-a")
    p = tmp_path / "site-a.key"
    keys.save_private_key(ident, p)
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    before = p.read_bytes()
    with pytest.raises(FedxrayError, match="refusing to overwrite"):
        keys.save_private_key(keys.generate("site-a"), p)
    assert p.read_bytes() == before
    loaded = keys.load_private_key(p)
    assert loaded.public == ident.public and loaded.secret == ident.secret


def test_key_readable_by_others_is_refused(tmp_path):
    p = tmp_path / "k.key"
    keys.save_private_key(keys.generate("k"), p)
    os.chmod(p, 0o644)
    with pytest.raises(FedxrayError, match="accessible"):
        keys.load_private_key(p)


def test_card_is_public_and_self_signed(tmp_path):
    ident = keys.generate("site-a")
    card = card_bytes(ident)
    assert card_from_bytes(card) == ident.public
    # No private material in the card.
    for secret in (ident.secret, ident.to_bytes()):
        assert secret not in card
    bad = bytearray(card)
    bad[-1] ^= 1
    with pytest.raises(VerificationError):
        card_from_bytes(bytes(bad))


def test_names_are_checked():
    for bad in ["", "../x", "a b", "-x", "x" * 65]:
        with pytest.raises(FedxrayError):
            keys.check_name(bad)


def test_plan_rejects_impossible_settings():
    coord = keys.generate("coordinator")
    sites = [keys.generate(n).public for n in "abc"]
    with pytest.raises(FedxrayError, match="min-sites"):
        create_plan("f", coord, sites, make_settings({"min_sites": 1}))
    with pytest.raises(FedxrayError, match="names 3 site"):
        create_plan("f", coord, sites, make_settings({"min_sites": 4}))
    with pytest.raises(FedxrayError, match="unknown model"):
        create_plan("f", coord, sites, make_settings({"model": {"arch": "vgg99"}}))
    with pytest.raises(FedxrayError, match="epsilon"):
        create_plan("f", coord, sites, make_settings({"dp": {"epsilon": -1}}))
    with pytest.raises(FedxrayError, match="same name"):
        create_plan("f", coord, [*sites, sites[0]], make_settings())


def test_plan_roundtrip_and_site_membership():
    coord = keys.generate("coordinator")
    site_keys = [keys.generate(n) for n in "abc"]
    plan = plan_from_bytes(create_plan("f", coord, [s.public for s in site_keys], make_settings()))
    assert plan.site_names == ["a", "b", "c"]
    assert plan.require_site(site_keys[0]) == site_keys[0].public
    with pytest.raises(FedxrayError, match="not a site"):
        plan.require_site(keys.generate("zed"))
    with pytest.raises(VerificationError, match="different keys"):
        plan.require_site(keys.generate("a"))
