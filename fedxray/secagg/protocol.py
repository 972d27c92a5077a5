"""The four secure-aggregation steps on signed files: mask, aggregate, reveal, unmask.

Each step verifies what it reads against the plan, returns the bytes of the file it produces
(the CLI writes them atomically) and, where the protocol needs memory (a site masks once per
round and reveals for one closure per round; the coordinator decides once per round),
records its decision in a local state file before returning. See docs/protocol.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from fedxray.artifact import Artifact, SignedArtifact, build_artifact, canonical_json, peek_header
from fedxray.errors import FedxrayError, ProtocolRefusal, VerificationError
from fedxray.fsio import read_input
from fedxray.keys import PrivateIdentity
from fedxray.modelfile import build_model_artifact, load_model_artifact
from fedxray.plan import Plan
from fedxray.secagg.accumulate import CONTROL, Accumulator, FlatLayout
from fedxray.secagg.fixedpoint import SecaggParams, check_capacity, decode, encode_into
from fedxray.secagg.pairwise import (
    cohort_digest,
    mask_streams,
    pair_seeds,
    removal_streams,
    self_seed,
)
from fedxray.secagg.prg import SEED_BYTES, add_streams
from fedxray.secagg.server import server_step
from fedxray.secagg.server_state import load_server_state, save_server_state
from fedxray.secagg.state import open_state
from fedxray.verification import check_tensor_layout, load_artifact

Input = bytes | bytearray | memoryview | str | os.PathLike
Progress = Callable[[int, int], None]

# Update metadata the coordinator may learn per site: how private the update is, not its size.
REPORT_KEYS = ("epsilon", "delta", "dp", "unit")


# --- shared helpers ---------------------------------------------------------------------------


def common_round(items: Iterable[tuple[str, Input]]) -> int:
    """The round that every (label, source) names; a clear VerificationError otherwise.

    Headers are read unverified, only to pick the round: files whose header cannot be read
    are skipped here, and verifying them fails later with the real reason.
    """
    rounds: dict[int, list[str]] = {}
    for label, source in items:
        header = peek_header(source)
        if header is not None:
            rounds.setdefault(header.round, []).append(label)
    if not rounds:
        raise VerificationError("none of the inputs is a readable fedxray file")
    if len(rounds) > 1:
        found = "; ".join(
            f"round {r}: {', '.join(labels[:3])}{' ...' if len(labels) > 3 else ''}"
            for r, labels in sorted(rounds.items())
        )
        raise VerificationError(
            f"the inputs are for different rounds ({found})",
            hint="leave out the files of other rounds, or pick one with --round N",
        )
    return next(iter(rounds))


def plan_params(plan: Plan) -> SecaggParams:
    params = plan.settings.secagg_params()
    check_capacity(params, len(plan.sites))
    return params


def plan_layout(plan: Plan, model_layout: Mapping | None = None) -> FlatLayout:
    """The flat layout of the plan's model (pass ``plan.model_layout()`` if already known)."""
    model_layout = model_layout if model_layout is not None else plan.model_layout()
    return FlatLayout.for_model({n: shape for n, (shape, _) in model_layout.items()})


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _read(item: Input, what: str) -> bytes:
    if isinstance(item, bytes | bytearray | memoryview):
        return bytes(item) if not isinstance(item, bytes) else item
    return read_input(item, what)


def _label(item: Input, index: int, kind: str) -> str:
    if isinstance(item, bytes | bytearray | memoryview):
        return f"{kind} #{index + 1}"
    return Path(item).name if str(item) != "-" else "standard input"


def compute_closure_id(
    plan: Plan,
    round_number: int,
    parent: str,
    survivors: list[str],
    dropped: list[str],
    strict: bool,
    inputs: Mapping[str, str],
) -> str:
    """The closure id: a hash of everything a site's reveal depends on.

    Two closure files with the same id (e.g. re-issued after a crash) are the same decision;
    sites compare this id, not the file, so a re-issued closure is harmless.
    """
    doc = {
        "federation": plan.federation_id,
        "plan": plan.digest,
        "round": round_number,
        "parent": parent,
        "survivors": sorted(survivors),
        "dropped": sorted(dropped),
        "strict": strict,
        "inputs": dict(sorted(inputs.items())),
    }
    return hashlib.sha256(b"fedxray-closure-v1\0" + canonical_json(doc).encode()).hexdigest()


def closure_code(closure_id: str) -> str:
    """The closure id's first 128 bits in groups of four: what sites compare by phone.

    128 bits, not a fingerprint's 80: the coordinator chooses part of what the id hashes (the
    other survivors' input hashes), so a shorter code could be ground into a collision.
    """
    return "-".join(closure_id[i : i + 4] for i in range(0, 32, 4))


def _names(value, plan: Plan, what: str, field: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise VerificationError(f"{what} has a malformed {field} list")
    unknown = sorted(set(value) - set(plan.site_names))
    if unknown:
        raise VerificationError(f"{what} names {unknown[0]!r}, who is not a site of {plan.name}")
    if len(set(value)) != len(value):
        raise VerificationError(f"{what} lists a site twice among the {field}")
    return sorted(value)


def _round_fields(meta: dict, plan: Plan, params: SecaggParams, what: str):
    """Survivors, dropped, strict and inputs of a closure or sum, checked for consistency."""
    survivors = _names(meta.get("survivors"), plan, what, "survivors")
    dropped = _names(meta.get("dropped"), plan, what, "dropped sites")
    both = sorted(set(survivors) & set(dropped))
    if both:
        raise ProtocolRefusal(
            f"{what} lists {both[0]} both as survivor and as dropped",
            hint="the coordinator's file is inconsistent; nothing was revealed",
        )
    if set(survivors) | set(dropped) != set(plan.site_names):
        raise VerificationError(f"{what} does not account for every site of the plan")
    if len(survivors) < params.min_sites:
        raise ProtocolRefusal(
            f"{what} has {len(survivors)} surviving sites; the plan needs at least "
            f"{params.min_sites}"
        )
    strict = meta.get("strict")
    if strict is not params.strict:
        raise VerificationError(f"{what} does not use the plan's masking mode")
    inputs = meta.get("inputs")
    if (
        not isinstance(inputs, dict)
        or set(inputs) != set(survivors)
        or not all(isinstance(v, str) for v in inputs.values())
    ):
        raise VerificationError(f"{what} has a malformed list of masked inputs")
    if meta.get("plan") != plan.digest:
        raise VerificationError(f"{what} was made under another version of the plan")
    return survivors, dropped, strict, inputs


def _seed(value, what: str) -> bytes:
    try:
        raw = bytes.fromhex(value)
    except (TypeError, ValueError):
        raw = b""
    if len(raw) != SEED_BYTES:
        raise VerificationError(f"{what} has a malformed seed")
    return raw


# --- mask (site) ------------------------------------------------------------------------------


def _examples(meta: dict, params: SecaggParams) -> int:
    n = meta.get("num_examples")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise VerificationError("the update does not state a positive number of examples")
    if n > params.max_examples:
        raise FedxrayError(
            f"the update was trained on {n} examples; the plan caps a site at "
            f"{params.max_examples}",
            hint="the coordinator must raise max_examples in the plan",
        )
    return n


def _masked_vector(
    key: PrivateIdentity,
    plan: Plan,
    params: SecaggParams,
    layout: FlatLayout,
    update: Artifact,
    count: int,
    round_number: int,
    rounding_seed: bytes,
    nonce: str | None,
) -> tuple[np.ndarray, int]:
    flat = np.empty(layout.size, dtype=np.uint64)
    views = layout.views(flat)
    views[CONTROL][:] = (count, 1)
    # Rounding randomness is not a mask; it is seeded so that re-masking the same update
    # gives the same words (a lost .masked file can be made again without leaking anything).
    rng = np.random.Generator(np.random.PCG64(int.from_bytes(rounding_seed, "big")))
    clipped = 0
    for name in layout.model_shapes:
        clipped += encode_into(views[name].reshape(-1), update.tensors[name], count, params, rng)
    cohort = cohort_digest(plan.sites)
    seeds = pair_seeds(key, plan.sites, plan.federation_id, round_number, cohort)
    own = (
        self_seed(key, plan.federation_id, round_number, bytes.fromhex(nonce))
        if params.strict and nonce is not None
        else None
    )
    add_streams(flat, mask_streams(key.name, seeds, own))
    return flat, clipped


def mask_update(
    update_bytes: bytes,
    plan: Plan,
    key: PrivateIdentity,
    state_dir: str | os.PathLike,
    *,
    warn: Callable[[str], None] | None = None,
) -> bytes:
    """Turn this site's signed update into its signed masked update (one per round).

    Masking the same update again gives the same masked tensors (a lost file can be remade);
    a different update for a round already masked is refused (ProtocolRefusal). ``warn``
    receives a one-line note when values had to be clipped to the plan's range.
    """
    plan.require_site(key)
    params = plan_params(plan)
    model_layout = plan.model_layout()
    layout = plan_layout(plan, model_layout)
    upd = load_artifact(update_bytes, plan=plan, kind="update", sender=key.name, what="update")
    check_tensor_layout(upd, model_layout, "update")
    r = upd.header.round
    if r < 1:
        raise VerificationError(f"the update names round {r}; rounds start at 1")
    count = _examples(upd.header.meta, params)
    report = {k: upd.header.meta[k] for k in REPORT_KEYS if k in upd.header.meta}
    with open_state(state_dir, key.name, plan.federation_id) as st:
        rec = st.get(r)
        if rec is not None:
            if rec.get("update") != upd.digest or rec.get("plan") != plan.digest:
                raise ProtocolRefusal(
                    f"{key.name} already masked a different update for round {r}",
                    hint="a site sends one masked update per round; send the .masked file "
                    "made then (masking that same update again reproduces it)",
                )
            rounding, nonce = bytes.fromhex(rec["rounding_seed"]), rec.get("nonce")
        else:
            rounding = os.urandom(32)
            nonce = os.urandom(16).hex() if params.strict else None
        flat, clipped = _masked_vector(key, plan, params, layout, upd, count, r, rounding, nonce)
        signed = build_artifact(
            "masked",
            federation=plan.federation_id,
            round=r,
            sender=key.name,
            parent=upd.header.parent,
            meta={"plan": plan.digest, "strict": params.strict, "report": report},
            tensors=layout.views(flat),
            signer=key,
        )
        del flat
        payload = signed.payload_sha256
        if rec is None:
            st.put(
                r,
                {
                    "update": upd.digest,
                    "plan": plan.digest,
                    "parent": upd.header.parent,
                    "rounding_seed": rounding.hex(),
                    "nonce": nonce,
                    "masked": payload,
                    "masked_at": _now(),
                    "closure": None,
                },
            )
        elif rec.get("masked") != payload:
            raise ProtocolRefusal(
                f"masking round {r} again gave different values than the first time",
                hint="was fedxray upgraded in between? send the .masked file made then",
            )
    if clipped and warn is not None:
        n = layout.size - 2
        warn(f"{clipped} of {n} values were clipped to the plan's range ±{params.clip:g}")
    return signed.data


# --- aggregate (coordinator) ------------------------------------------------------------------


def aggregate(
    masked_inputs: Iterable[Input],
    plan: Plan,
    coordinator_key: PrivateIdentity,
    round: int,
    *,
    state_dir: str | os.PathLike | None,
    progress: Progress | None = None,
) -> tuple[bytes, bytes | None]:
    """Verify and sum the masked updates of one round; return (sum, closure or None).

    Inputs are read one at a time, so memory does not grow with the number of sites. A
    closure (signed list of survivors and dropped sites) is made when a site is missing or the
    plan is strict. ``state_dir`` (the coordinator's folder) remembers the round's decision:
    aggregating the round again with other inputs, e.g. a late file, is refused. Pass None
    only in tests.
    """
    plan.require_coordinator(coordinator_key)
    params = plan_params(plan)
    layout = plan_layout(plan)
    expected = layout.tensor_layout()
    acc = Accumulator(layout)
    inputs: dict[str, str] = {}
    labels: dict[str, str] = {}
    reports: dict[str, dict] = {}
    parent: str | None = None
    for i, item in enumerate(masked_inputs):
        label = _label(item, i, "masked update")
        art = load_artifact(
            _read(item, label),
            plan=plan,
            kind="masked",
            round=round,
            sender=plan.site_names,
            what=label,
        )
        name = art.header.sender
        if name in inputs:
            raise VerificationError(
                f"{label} is a second masked update from {name} (the first was {labels[name]})",
                hint="each site sends one masked update per round; leave one of them out",
            )
        if art.header.meta.get("plan") != plan.digest:
            raise VerificationError(
                f"{label} was masked under another version of the plan",
                hint=f"{name} must use the plan this coordinator sent",
            )
        if parent is None:
            parent, first = art.header.parent, label
        elif art.header.parent != parent:
            raise VerificationError(
                f"{label} was trained from a different global model than {first}",
                hint="all sites of a round must start from the same .model file",
            )
        check_tensor_layout(art, expected, label)
        acc.add(art.tensors)
        # The payload hash (checked by load_artifact) names the masked values themselves: a
        # re-made file of the same masked update has the same one.
        inputs[name], labels[name] = art.header.payload_sha256, label
        report = art.header.meta.get("report", {})
        reports[name] = report if isinstance(report, dict) else {}
        del art  # the file's buffer can go before the next one is read
        if progress is not None:
            progress(len(inputs), len(plan.sites))
    if len(inputs) < params.min_sites:
        raise ProtocolRefusal(
            f"round {round}: {len(inputs)} masked update(s); the plan needs at least "
            f"{params.min_sites}",
            hint="fewer sites could let the coordinator single out one site's update",
        )
    assert parent is not None
    survivors = sorted(inputs)
    dropped = sorted(set(plan.site_names) - set(inputs))
    closure_id = compute_closure_id(plan, round, parent, survivors, dropped, params.strict, inputs)
    needs_closure = bool(dropped) or params.strict
    meta = {
        "plan": plan.digest,
        "survivors": survivors,
        "dropped": dropped,
        "strict": params.strict,
        "inputs": dict(sorted(inputs.items())),
    }
    common = {
        "federation": plan.federation_id,
        "round": round,
        "sender": coordinator_key.name,
        "parent": parent,
        "signer": coordinator_key,
    }
    with _coordinator_state(state_dir, coordinator_key, plan) as st:
        rec = st.get(round) if st is not None else None
        if rec is not None and rec.get("abandoned"):
            raise ProtocolRefusal(
                f"round {round} was abandoned; its masked updates can no longer be summed",
                hint=f"the sites train round {round + 1} from the model re-issued then",
            )
        decided = rec is not None and rec.get("closure") is not None
        if decided and rec.get("closure") != closure_id:
            late = sorted(set(survivors) - set(rec.get("survivors", [])))
            if late:
                raise ProtocolRefusal(
                    f"round {round} was already closed without {', '.join(late)}; "
                    "a masked update that arrives late cannot join the round",
                    hint="that site can take part in the next round",
                )
            raise ProtocolRefusal(
                f"round {round} was already aggregated from other masked updates "
                f"({', '.join(rec.get('survivors', []))})",
                hint="use the .sum and .closure files made then",
            )
        closure = (
            build_artifact(
                "closure", meta={**meta, "closure": closure_id}, tensors={}, **common
            ).data
            if needs_closure
            else None
        )
        total = build_artifact(
            "sum",
            meta={**meta, "closure": closure_id if needs_closure else None, "reports": reports},
            tensors=acc.tensors(),
            **common,
        ).data
        if st is not None and not decided:
            st.put(
                round,
                {
                    **(rec or {}),
                    "closure": closure_id,
                    "needs_reveals": needs_closure,
                    "survivors": survivors,
                    "dropped": dropped,
                    "parent": parent,
                    "aggregated_at": _now(),
                },
            )
    return total, closure


# --- reveal (site) ----------------------------------------------------------------------------


def reveal(
    closure_bytes: bytes, plan: Plan, key: PrivateIdentity, state_dir: str | os.PathLike
) -> bytes:
    """Answer the coordinator's closure: release this round's seeds shared with dropped sites
    (and, in strict mode, this site's self-mask seed). Only after masking this round, only
    for the masked update this site sent, and only for one closure per round.
    """
    plan.require_site(key)
    params = plan_params(plan)
    art = load_artifact(
        closure_bytes, plan=plan, kind="closure", sender=plan.coordinator.name, what="closure"
    )
    r, meta = art.header.round, art.header.meta
    survivors, dropped, strict, inputs = _round_fields(meta, plan, params, "the closure")
    closure_id = compute_closure_id(plan, r, art.header.parent, survivors, dropped, strict, inputs)
    if meta.get("closure") != closure_id:
        raise VerificationError("the closure's id does not match its contents")
    me = key.name
    if me in dropped:
        raise ProtocolRefusal(
            f"the closure lists {me} as dropped from round {r}; it reveals nothing",
            hint="this site's masked update was not used; it can take part in the next round",
        )
    if not dropped and not strict:
        raise VerificationError("the closure has nothing to reveal (no site dropped out)")
    with open_state(state_dir, me, plan.federation_id) as st:
        rec = st.get(r)
        if rec is None:
            raise ProtocolRefusal(
                f"{me} has not masked an update for round {r}",
                hint="a site reveals only after sending its own masked update for the round",
            )
        if rec.get("plan") != plan.digest or rec.get("parent") != art.header.parent:
            raise VerificationError(
                f"the closure of round {r} is about another plan or global model than the "
                f"update {me} masked"
            )
        if inputs[me] != rec.get("masked"):
            raise VerificationError(
                f"the closure does not list the masked update {me} sent for round {r}"
            )
        if rec.get("closure") not in (None, closure_id):
            raise ProtocolRefusal(
                f"{me} already revealed for a different closure of round {r}",
                hint="a site reveals for one closure per round; two different closures for "
                "one round, both signed by the coordinator, are proof of misbehaviour: keep them",
            )
        if rec.get("closure") is None:
            rec.update(closure=closure_id, revealed_at=_now())
            st.put(r, rec)
        nonce = rec.get("nonce")
    cohort = cohort_digest(plan.sites)
    peers = [plan.site(name) for name in dropped]
    seeds = pair_seeds(key, peers, plan.federation_id, r, cohort)
    own = None
    if strict:
        if nonce is None:
            raise FedxrayError(f"the state of round {r} has no self-mask nonce")
        own = self_seed(key, plan.federation_id, r, bytes.fromhex(nonce))
    return build_artifact(
        "reveal",
        federation=plan.federation_id,
        round=r,
        sender=me,
        parent=art.header.parent,
        meta={
            "closure": closure_id,
            "pairs": {p: s.hex() for p, s in sorted(seeds.items())},
            "self": own.hex() if own is not None else None,
        },
        tensors={},
        signer=key,
    ).data


# --- unmask (coordinator) ---------------------------------------------------------------------


def _collect_reveals(
    reveals: Iterable[Input],
    plan: Plan,
    round_number: int,
    survivors: list[str],
    dropped: list[str],
    strict: bool,
    closure_id: str | None,
) -> dict[str, tuple[dict[str, bytes], bytes | None]]:
    got: dict[str, tuple[dict[str, bytes], bytes | None]] = {}
    digests: dict[str, str] = {}
    for i, item in enumerate(reveals):
        label = _label(item, i, "reveal")
        if closure_id is None:
            raise FedxrayError(
                f"round {round_number} needs no reveals (no site dropped out), got {label}"
            )
        art = load_artifact(
            _read(item, label),
            plan=plan,
            kind="reveal",
            round=round_number,
            sender=survivors,
            what=label,
        )
        name, meta = art.header.sender, art.header.meta
        if name in digests:
            if digests[name] == art.digest:
                continue  # the same file given twice
            raise VerificationError(f"{label} is a second, different reveal from {name}")
        if meta.get("closure") != closure_id:
            raise VerificationError(f"{label} answers another closure of round {round_number}")
        pairs = meta.get("pairs")
        if not isinstance(pairs, dict) or set(pairs) != set(dropped):
            raise VerificationError(f"{label} does not reveal exactly the dropped sites' seeds")
        own = meta.get("self")
        if strict != (own is not None):
            raise VerificationError(f"{label} does not match the plan's masking mode")
        got[name] = (
            {p: _seed(v, label) for p, v in pairs.items()},
            _seed(own, label) if own is not None else None,
        )
        digests[name] = art.digest
    missing = sorted(set(survivors) - set(got)) if closure_id is not None else []
    if missing:
        raise FedxrayError(
            f"round {round_number} cannot be unmasked yet: no reveal from {', '.join(missing)}",
            hint="every surviving site must run `fedxray reveal` on the round's closure",
        )
    return got


def _coordinator_state(state_dir, coordinator_key: PrivateIdentity, plan: Plan):
    if state_dir is None:
        return contextlib.nullcontext(None)
    return open_state(state_dir, coordinator_key.name, plan.federation_id)


def unmask(
    sum_bytes: bytes,
    reveals: Iterable[Input],
    plan: Plan,
    coordinator_key: PrivateIdentity,
    global_model_bytes: bytes,
    server_state_path: str | os.PathLike | None,
    *,
    fresh_server_state: bool = False,
    state_dir: str | os.PathLike | None = None,
) -> bytes:
    """Remove the remaining masks, average, apply the server step; return the next model.

    The next model (round + 1) carries a provenance record: round, contributing and dropped
    sites, the privacy each site reported, the parent model's hash. The server optimiser's
    state (a coordinator-local safetensors file) is updated before the model is returned;
    running the same round again recomputes the same step instead of applying it twice.
    ``state_dir`` (the coordinator's folder, as for :func:`aggregate`) refuses a round that
    was abandoned and records that this one was unmasked, so it cannot be abandoned later.
    """
    plan.require_coordinator(coordinator_key)
    params = plan_params(plan)
    layout = plan_layout(plan)
    plan.settings.server_config()  # bad server settings fail before any work
    total = load_artifact(
        sum_bytes, plan=plan, kind="sum", sender=plan.coordinator.name, what="sum"
    )
    r = total.header.round
    with _coordinator_state(state_dir, coordinator_key, plan) as st:
        rec = st.get(r) if st is not None else None
        if rec is not None and rec.get("abandoned"):
            raise ProtocolRefusal(
                f"round {r} was abandoned; it can no longer be unmasked",
                hint=f"round {r + 1} trains from the model re-issued when it was abandoned",
            )
        model = load_model_artifact(global_model_bytes, plan, round_number=r, what="global model")
        if model.digest != total.header.parent:
            raise VerificationError(
                f"the sum of round {r} was made from updates of another global model "
                f"({total.header.parent[:12]}, given {model.digest[:12]})"
            )
        check_tensor_layout(total, layout.tensor_layout(), "sum")
        meta = total.header.meta
        survivors, dropped, strict, inputs = _round_fields(meta, plan, params, "the sum")
        closure_id = meta.get("closure")
        expected_id = compute_closure_id(
            plan, r, total.header.parent, survivors, dropped, strict, inputs
        )
        if closure_id not in (None, expected_id) or (closure_id is None) != (
            not dropped and not strict
        ):
            raise VerificationError("the sum's closure id does not match its contents")
        got = _collect_reveals(reveals, plan, r, survivors, dropped, strict, closure_id)
        nxt = _next_model(
            total,
            model,
            got,
            plan,
            coordinator_key,
            layout=layout,
            cohort=(survivors, dropped, strict),
            server_state=(server_state_path, fresh_server_state),
        )
        if st is not None:
            st.put(r, {**(rec or {}), "unmasked": nxt.digest, "unmasked_at": _now()})
    return nxt.data


def _next_model(
    total: Artifact,
    model: Artifact,
    got: Mapping[str, tuple[dict[str, bytes], bytes | None]],
    plan: Plan,
    coordinator_key: PrivateIdentity,
    *,
    layout: FlatLayout,
    cohort: tuple[list[str], list[str], bool],
    server_state: tuple[str | os.PathLike | None, bool],
) -> SignedArtifact:
    """Unmask the verified sum with the verified reveals, average, step, sign the next model."""
    params, cfg = plan_params(plan), plan.settings.server_config()
    survivors, dropped, strict = cohort
    server_state_path, fresh_server_state = server_state
    r, meta = total.header.round, total.header.meta
    flat = np.empty(layout.size, dtype=np.uint64)
    for name, view in layout.views(flat).items():
        view[...] = total.tensors[name]
    streams = []
    for name, (pairs, own) in sorted(got.items()):
        streams += removal_streams(name, pairs, own)
    add_streams(flat, streams)
    views = layout.views(flat)
    examples, sites = (int(x) for x in views[CONTROL])
    if sites != len(survivors) or not len(survivors) <= examples <= (
        len(survivors) * params.max_examples
    ):
        raise VerificationError(
            f"unmasking round {r} failed: the reveals do not remove the masks",
            hint="a reveal may be corrupt or made for another sum",
        )
    delta = {
        name: (decode(views[name], params) / examples).reshape(shape)
        for name, shape in layout.model_shapes.items()
    }
    state_path = Path(server_state_path) if server_state_path is not None else None
    before = load_server_state(state_path, plan, cfg, r, model.digest, fresh_server_state)
    weights, after = server_step(model.tensors, delta, before, cfg)
    reports = meta.get("reports") if isinstance(meta.get("reports"), dict) else {}
    provenance = {
        "round": r,
        "parent": model.digest,
        "sum": total.digest,
        "sites": survivors,
        "dropped": dropped,
        "epsilon": {s: reports.get(s, {}).get("epsilon") for s in survivors},
        "reports": {s: reports.get(s, {}) for s in survivors},
        "strict": strict,
        "server": {"optimizer": cfg.optimizer, "lr": cfg.lr},
    }
    data = build_model_artifact(
        plan,
        round_number=r + 1,
        weights=weights,
        parent=model.digest,
        provenance=provenance,
        signer=coordinator_key,
    )
    if state_path is not None:
        save_server_state(state_path, plan, cfg, r, model.digest, before, after)
    return data


# --- abandon (coordinator) --------------------------------------------------------------------


def abandon_round(
    global_model_bytes: bytes,
    plan: Plan,
    coordinator_key: PrivateIdentity,
    state_dir: str | os.PathLike,
    *,
    reason: str | None = None,
) -> bytes:
    """Give up the round of ``global_model_bytes``: return its weights as round r + 1's model.

    For a round that cannot finish: a survivor never returns its reveal, or too few sites
    deliver. Nothing is unmasked and nothing secret is used; the round is recorded as
    abandoned in the coordinator's state first, so it can no longer be aggregated or
    unmasked (that would give two models for round r + 1). A round already unmasked cannot
    be abandoned. The sites' pair masks are per round, so round r + 1 masks afresh; the
    privacy the sites spent training round r stays spent.
    """
    plan.require_coordinator(coordinator_key)
    model = load_model_artifact(global_model_bytes, plan, what="global model")
    r = model.header.round
    with open_state(state_dir, coordinator_key.name, plan.federation_id) as st:
        rec = st.get(r) or {}
        if rec.get("unmasked"):
            raise ProtocolRefusal(
                f"round {r} was already unmasked into round {r + 1}'s model; it cannot be "
                "abandoned",
                hint=f"send round {r + 1}'s model (run `fedxray unmask` again if it was lost)",
            )
        if rec.get("parent") not in (None, model.digest):
            raise VerificationError(
                f"round {r} was aggregated from updates of another global model "
                f"({rec['parent'][:12]}, given {model.digest[:12]})"
            )
        provenance = {
            "round": r,
            "parent": model.digest,
            "abandoned": True,
            "reason": reason,
            "aggregated": rec.get("closure") is not None,
            "sites": [],
            "dropped": sorted(plan.site_names),
            "epsilon": {},
        }
        data = build_model_artifact(
            plan,
            round_number=r + 1,
            weights=model.tensors,
            parent=model.digest,
            provenance=provenance,
            signer=coordinator_key,
        ).data
        st.put(
            r,
            {
                **rec,
                "parent": model.digest,
                "abandoned": True,
                "abandoned_at": _now(),
                "reason": reason,
            },
        )
    return data
