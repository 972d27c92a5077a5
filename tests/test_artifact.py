"""Signed artifacts: integrity, provenance checks, safetensors compatibility."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load as st_load

from fedxray import keys
from fedxray.artifact import build_artifact, parse_unverified
from fedxray.errors import VerificationError
from fedxray.plan import create_plan, plan_from_bytes
from fedxray.settings import make_settings
from fedxray.verification import check_tensor_layout, load_artifact


@pytest.fixture(scope="module")
def fed():
    coord = keys.generate("coordinator")
    sites = [keys.generate(n) for n in ("a", "b", "c")]
    plan = plan_from_bytes(create_plan("demo", coord, [s.public for s in sites], make_settings()))
    return coord, sites, plan


def _update(plan, site, round_=1, kind="update", tensors=None):
    tensors = (
        tensors if tensors is not None else {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    )
    return build_artifact(
        kind,
        federation=plan.federation_id,
        round=round_,
        sender=site.name,
        parent="p" * 64,
        meta={"num_examples": 3},
        tensors=tensors,
        signer=site,
    ).data


def test_roundtrip_and_safetensors_compatible(fed):
    _, sites, plan = fed
    data = _update(plan, sites[0])
    art = load_artifact(data, plan=plan, kind="update", round=1, sender="a")
    assert art.header.meta == {"num_examples": 3}
    np.testing.assert_array_equal(art.tensors["w"], np.arange(6, dtype=np.float32).reshape(2, 3))
    # any safetensors reader opens it
    np.testing.assert_array_equal(st_load(data)["w"], art.tensors["w"])
    assert not art.tensors["w"].flags.writeable


def test_every_single_byte_flip_is_rejected(fed):
    _, sites, plan = fed
    data = _update(plan, sites[0], tensors={"w": np.ones(4, dtype=np.float32)})
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= 0x01
        with pytest.raises(VerificationError):
            load_artifact(bytes(bad), plan=plan, kind="update")


def test_whitespace_in_header_padding_is_covered(fed):
    # safetensors pads its JSON header with spaces; a tab there is still valid JSON.
    _, sites, plan = fed
    data = _update(plan, sites[0])
    hlen = int.from_bytes(data[:8], "little")
    head = data[8 : 8 + hlen]
    assert head.endswith(b" ") or b" " in head
    i = 8 + head.rindex(b" ")
    bad = data[:i] + b"\t" + data[i + 1 :]
    with pytest.raises(VerificationError, match="signature"):
        load_artifact(bad, plan=plan, kind="update")


@pytest.mark.parametrize("cut", [0, 1, 7, 8, 20, -1, -4])
def test_truncated_or_empty_rejected(fed, cut):
    _, sites, plan = fed
    data = _update(plan, sites[0])
    with pytest.raises(VerificationError):
        load_artifact(data[:cut], plan=plan, kind="update")


def test_wrong_kind_federation_round_sender(fed):
    coord, sites, plan = fed
    data = _update(plan, sites[0], round_=2)
    with pytest.raises(VerificationError, match="expected 'masked'"):
        load_artifact(data, plan=plan, kind="masked")
    with pytest.raises(VerificationError, match="round 2, expected round 3"):
        load_artifact(data, plan=plan, kind="update", round=3)
    with pytest.raises(VerificationError, match="expected b"):
        load_artifact(data, plan=plan, kind="update", sender="b")
    other = plan_from_bytes(create_plan("other", coord, [s.public for s in sites], make_settings()))
    with pytest.raises(VerificationError, match="federation"):
        load_artifact(data, plan=other, kind="update")


def test_non_member_and_impersonation(fed):
    _, _, plan = fed
    outsider = keys.generate("mallory")
    with pytest.raises(VerificationError, match="not a member"):
        load_artifact(_update(plan, outsider), plan=plan, kind="update")
    # Someone with a fresh key claiming to be site "a": the signature does not match a's card.
    fake_a = keys.generate("a")
    with pytest.raises(VerificationError, match="signature"):
        load_artifact(_update(plan, fake_a), plan=plan, kind="update")


def test_tensor_layout_and_finiteness(fed):
    _, sites, plan = fed
    art = load_artifact(_update(plan, sites[0]), plan=plan, kind="update")
    check_tensor_layout(art, {"w": ((2, 3), "float32")}, "u")
    with pytest.raises(VerificationError, match="needs"):
        check_tensor_layout(art, {"w": ((3, 2), "float32")}, "u")
    with pytest.raises(VerificationError, match="missing"):
        check_tensor_layout(art, {"v": ((2, 3), "float32")}, "u")
    nan = _update(plan, sites[0], tensors={"w": np.array([[1, np.nan, 0]] * 2, dtype=np.float32)})
    art = load_artifact(nan, plan=plan, kind="update")
    with pytest.raises(VerificationError, match="non-finite"):
        check_tensor_layout(art, {"w": ((2, 3), "float32")}, "u")


def test_parse_unverified_reports_header(fed):
    _, sites, plan = fed
    art, _ = parse_unverified(_update(plan, sites[1], round_=4))
    assert (art.header.kind, art.header.round, art.header.sender) == ("update", 4, "b")
    assert len(art.header.payload_sha256) == 64


def test_same_artifact_same_bytes(fed):
    # safetensors writes its metadata map in hash order, which changes from map to map; a
    # re-made update must be byte-identical (mask accepts it by its id), so the order is fixed.
    _, sites, plan = fed
    made = {
        build_artifact(
            "update", federation=plan.federation_id, round=1, sender=sites[0].name,
            parent="p" * 64, meta={"num_examples": 3}, signer=sites[0],
            tensors={"w": np.ones((2, 3), np.float32)}, created="2026-01-01T00:00:00Z",
        ).data
        for _ in range(16)
    }  # fmt: skip
    assert len(made) == 1
    art = load_artifact(made.pop(), plan=plan, kind="update", sender=sites[0].name)
    assert art.header.created == "2026-01-01T00:00:00Z"
