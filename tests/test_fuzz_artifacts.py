"""Property-based tests of the signed-file parser and the plan loader: whatever the bytes,
the outcome is a valid result or one clean FedxrayError (VerificationError for anything that
claims to be a fedxray file), never another exception.

Inputs: arbitrary bytes; a valid artifact with its length prefix replaced, its header JSON
mutated (then re-framed, so the parser gets past the framing), or bytes flipped, inserted or
cut; plans whose header is signed by their coordinator yet says something impossible.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from fedxray import keys
from fedxray.artifact import build_artifact, parse_unverified, read_header
from fedxray.errors import FedxrayError, VerificationError
from fedxray.plan import Plan, create_plan, plan_from_bytes
from fedxray.settings import make_settings
from fedxray.steps.inspection import describe, verify_file
from fedxray.verification import load_artifact

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NAME = "fuzzed.update"

COORD = keys.generate("coordinator")
SITES = [keys.generate(n) for n in ("hosp-a", "hosp-b", "hosp-c")]
PLAN_BYTES = create_plan("demo", COORD, [s.public for s in SITES], make_settings())
PLAN = plan_from_bytes(PLAN_BYTES)
VALID = build_artifact(
    "update",
    federation=PLAN.federation_id,
    round=1,
    sender="hosp-a",
    parent="p" * 64,
    meta={"num_examples": 3},
    tensors={"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(2, np.float32)},
    signer=SITES[0],
).data
HEAD_LEN = struct.unpack("<Q", VALID[:8])[0]


def _clean(e: FedxrayError) -> None:
    assert e.message and "\n" not in e.message and "\r" not in e.message, e.message
    assert e.hint is None or "\n" not in e.hint


def _every_reader(data: bytes) -> None:
    """Every function that reads a file from elsewhere: a result or a clean error."""
    for read in (
        lambda: parse_unverified(data, NAME),
        lambda: read_header(data, NAME),
        lambda: load_artifact(data, plan=PLAN, kind="update", round=1, what=NAME),
        lambda: plan_from_bytes(data, NAME),
    ):
        try:
            read()
        except VerificationError as e:
            _clean(e)
    for read in (lambda: describe(data, NAME), lambda: verify_file(data, NAME, plan_data=None)):
        try:
            read()
        except FedxrayError as e:  # inspect and verify also read keys, shards, ledgers
            _clean(e)


@FUZZ
@example(b"")
@example(b"\xff" * 8)
@example(struct.pack("<Q", 2) + b"{}")
@example(struct.pack("<Q", 2**64 - 1) + b"{")
@given(st.binary(max_size=2000))
def test_arbitrary_bytes(data):
    _every_reader(data)


@FUZZ
@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_any_length_prefix(length):
    _every_reader(struct.pack("<Q", length) + VALID[8:])


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["flip", "insert", "delete"]),
            st.integers(min_value=0, max_value=len(VALID) - 1),
            st.integers(min_value=0, max_value=255),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_byte_mutations(edits):
    data = bytearray(VALID)
    for op, pos, byte in edits:
        pos %= max(1, len(data))
        if op == "flip":
            data[pos] ^= byte or 1
        elif op == "insert":
            data.insert(pos, byte)
        else:
            del data[pos]
    try:
        load_artifact(bytes(data), plan=PLAN, kind="update", round=1, what=NAME)
    except VerificationError as e:
        _clean(e)
    else:  # a changed byte must never pass verification
        assert bytes(data) == VALID
    _every_reader(bytes(data))


# Values a JSON reader gives back: Python's also reads Infinity, and integers of any size.
_ODD = st.sampled_from([float("inf"), float("-inf"), 10**400, -(2**63), 2**64, 1.5, "1", True])
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=10)
    | _ODD,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)
FIELDS = ["kind", "federation", "round", "sender", "created", "parent", "payload_sha256",
          "meta", "format"]  # fmt: skip


def _reframed(edit) -> bytes:
    """VALID with its header JSON edited by ``edit`` (dict -> anything), framed anew."""
    head = json.loads(VALID[8 : 8 + HEAD_LEN])
    head = edit(head)
    raw = json.dumps(head).encode()
    return struct.pack("<Q", len(raw)) + raw + VALID[8 + HEAD_LEN :]


@FUZZ
@example("round", float("inf"), False)  # int(inf) raised OverflowError once
@example("format", 10**400, False)
@example("meta", [[1, 2]], False)
@given(st.sampled_from(FIELDS), JSON, st.booleans())
def test_mutated_fedxray_header(field, value, drop):
    def edit(head):
        inner = json.loads(head["__metadata__"]["fedxray"])
        if drop:
            inner.pop(field, None)
        else:
            inner[field] = value
        head["__metadata__"]["fedxray"] = json.dumps(inner)
        return head

    _every_reader(_reframed(edit))


@FUZZ
@given(st.sampled_from(["__metadata__", "w", "b", "signature", "fedxray", "new"]), JSON)
def test_mutated_safetensors_index(key, value):
    def edit(head):
        if key in ("signature", "fedxray"):
            head["__metadata__"][key] = value
        else:
            head[key] = value
        return head

    _every_reader(_reframed(edit))


@FUZZ
@given(JSON)
def test_header_that_is_not_an_object(value):
    _every_reader(_reframed(lambda head: value))


# ---- plans signed by their coordinator, saying something impossible --------------------

_CARDS = [s.public.to_dict() for s in SITES]
_SETTING_VALUES = st.one_of(
    JSON,
    st.integers(min_value=-5, max_value=2000),
    st.floats(min_value=-1e3, max_value=1e3),
    st.sampled_from(["smallcnn", "fedadam", "sgd", "adam", "momentum", "nosuch"]),
)
_SETTING_PATHS = [
    ("model", "image_size"), ("model", "in_channels"), ("model", "arch"),
    ("training", "rounds"), ("training", "local_epochs"), ("training", "batch_size"),
    ("training", "lr"), ("training", "optimizer"), ("training", "momentum"),
    ("training", "weight_decay"), ("dp", "epsilon"), ("dp", "delta"), ("dp", "max_grad_norm"),
    ("dp", "enabled"), ("secagg", "frac_bits"), ("secagg", "clip"), ("secagg", "max_examples"),
    ("server", "optimizer"), ("server", "lr"), ("server", "momentum"), ("min_sites",),
    ("classes",), ("unknown",),
]  # fmt: skip


def _signed_plan(meta: dict) -> bytes:
    return build_artifact(
        "plan", federation="f" * 32, round=0, sender="coordinator", parent="", meta=meta,
        tensors={}, signer=COORD,
    ).data  # fmt: skip


def _meta(settings_doc, sites=None, coordinator=None, name="demo") -> dict:
    return {
        "name": name,
        "coordinator": coordinator or COORD.public.to_dict(),
        "sites": _CARDS if sites is None else sites,
        "settings": settings_doc,
    }


def _load(data: bytes) -> Plan | None:
    try:
        return plan_from_bytes(data, "fuzzed.plan")
    except VerificationError as e:  # a loaded plan that is unsound is a verification failure
        _clean(e)
        return None


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(_SETTING_PATHS), _SETTING_VALUES), max_size=3))
def test_plan_settings_are_checked_on_load(changes):
    doc = make_settings().to_dict()
    for path, value in changes:
        node = doc
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value
    try:
        data = _signed_plan(_meta(doc))
    except ValueError:  # inf: no fedxray writes it (canonical JSON refuses it)
        assume(False)
    plan = _load(data)
    if plan is not None:  # what loads is sound: the checks init makes pass again
        plan.settings.check(len(plan.sites))


@FUZZ
@given(
    st.lists(st.sampled_from(range(len(SITES) + 2)), min_size=0, max_size=5),
    st.sampled_from(["demo", "", "a b", "../x", 7, None]),
)
def test_plan_parties_are_checked_on_load(picks, name):
    # 0..2: the sites' cards; 3: the coordinator's own card; 4: a card without its keys
    pool = [*_CARDS, COORD.public.to_dict(), {"name": "hosp-x"}]
    plan = _load(_signed_plan(_meta(make_settings().to_dict(), [pool[i] for i in picks], None,
                                    name)))  # fmt: skip
    if plan is not None:
        names = [s.name for s in plan.sites]
        assert len(set(names)) == len(names) and "coordinator" not in names
        assert len(names) >= plan.settings.min_sites


# hosp-b's keys under another name (a card without a fingerprint: nothing to contradict)
_SAME_KEYS = {"name": "hosp-z", "ed25519": _CARDS[1]["ed25519"], "x25519": _CARDS[1]["x25519"]}


@pytest.mark.parametrize(
    ("sites", "words"),
    [
        ([_CARDS[0], _CARDS[0], _CARDS[1]], "same name"),
        ([_CARDS[0], _CARDS[1], COORD.public.to_dict()], "named like the coordinator"),
        ([_CARDS[0], _CARDS[1], _SAME_KEYS], "same keys"),
        ([_CARDS[0], _CARDS[1]], "min-sites is 3"),
    ],
)
def test_plan_reloaded_refuses_what_init_refuses(sites, words):
    with pytest.raises(VerificationError, match=words) as e:
        plan_from_bytes(_signed_plan(_meta(make_settings().to_dict(), sites)), "x.plan")
    assert e.value.exit_code == 3 and "x.plan is not a sound plan" in e.value.message


def test_plan_with_unsound_settings_is_refused_with_exit_3():
    doc = make_settings().to_dict()
    doc["training"]["momentum"] = 1.5
    with pytest.raises(VerificationError, match="momentum must be in"):
        plan_from_bytes(_signed_plan(_meta(doc)), "x.plan")
    doc = make_settings().to_dict()
    doc["training"]["lr"] = 10**400  # JSON allows it; no float holds it
    with pytest.raises(VerificationError, match="finite number"):
        plan_from_bytes(_signed_plan(_meta(doc)), "x.plan")
