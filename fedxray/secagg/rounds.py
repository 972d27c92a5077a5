"""The rules of a secure-aggregation round, without files: who survived, what a closure pins,
what a site masks and reveals, and how the coordinator removes the masks from a sum.

The steps (fedxray.steps) read and verify the files, keep each party's memory and call these.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fedxray.artifact import Artifact, canonical_json
from fedxray.errors import FedxrayError, ProtocolRefusal, VerificationError
from fedxray.keys import PrivateIdentity
from fedxray.secagg.accumulate import CONTROL, FlatLayout
from fedxray.secagg.fixedpoint import SecaggParams, decode, encode_into
from fedxray.secagg.pairwise import (
    cohort_digest,
    mask_streams,
    pair_seeds,
    removal_streams,
    self_seed,
)
from fedxray.secagg.prg import SEED_BYTES, add_streams

if TYPE_CHECKING:
    from fedxray.plan import Plan

# Update metadata the coordinator may learn per site: how private the update is, not its size.
REPORT_KEYS = ("epsilon", "delta", "dp", "unit")


@dataclass(frozen=True)
class Cohort:
    """Who a round's sum is over: what a closure (or a sum) states and its id pins."""

    survivors: list[str]
    dropped: list[str]
    strict: bool
    inputs: dict[str, str]  # survivor -> payload hash of the masked file summed

    @property
    def needs_reveals(self) -> bool:
        """A second trip: some pair masks do not cancel, or strict mode's self masks remain."""
        return bool(self.dropped) or self.strict

    def to_meta(self, plan: Plan) -> dict:
        return {
            "plan": plan.digest,
            "survivors": list(self.survivors),
            "dropped": list(self.dropped),
            "strict": self.strict,
            "inputs": dict(sorted(self.inputs.items())),
        }

    def closure_id(self, plan: Plan, round_number: int, parent: str) -> str:
        return compute_closure_id(
            plan, round_number, parent, self.survivors, self.dropped, self.strict, self.inputs
        )


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


def read_cohort(meta: dict, plan: Plan, params: SecaggParams, what: str) -> Cohort:
    """The cohort a closure or sum states, checked against the plan and for consistency."""
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
    return Cohort(survivors, dropped, strict, inputs)


def read_seed(value, what: str) -> bytes:
    try:
        raw = bytes.fromhex(value)
    except (TypeError, ValueError):
        raw = b""
    if len(raw) != SEED_BYTES:
        raise VerificationError(f"{what} has a malformed seed")
    return raw


# --- a site's side -----------------------------------------------------------------------------


def update_examples(meta: dict, params: SecaggParams) -> int:
    """The example count an update states: its weight in the average."""
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


def masked_vector(
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
    """(the site's encoded, masked update as one uint64 vector, how many values were clipped)."""
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


def reveal_meta(
    key: PrivateIdentity, plan: Plan, round_number: int, cohort: Cohort, closure_id: str, nonce
) -> dict:
    """What a survivor releases for a closure: the round's seeds shared with the dropped sites
    and, in strict mode, its own self-mask seed."""
    peers = [plan.site(name) for name in cohort.dropped]
    seeds = pair_seeds(key, peers, plan.federation_id, round_number, cohort_digest(plan.sites))
    own = None
    if cohort.strict:
        if nonce is None:
            raise FedxrayError(f"the state of round {round_number} has no self-mask nonce")
        own = self_seed(key, plan.federation_id, round_number, bytes.fromhex(nonce))
    return {
        "closure": closure_id,
        "pairs": {p: s.hex() for p, s in sorted(seeds.items())},
        "self": own.hex() if own is not None else None,
    }


# --- the coordinator's side --------------------------------------------------------------------

Revealed = Mapping[str, tuple[dict[str, bytes], bytes | None]]  # survivor -> (pairs, self)


def unmasked_mean(
    total: Artifact,
    revealed: Revealed,
    layout: FlatLayout,
    params: SecaggParams,
    survivors: Sequence[str],
) -> dict[str, np.ndarray]:
    """The example-weighted mean update: the sum with the remaining masks removed, decoded."""
    r = total.header.round
    flat = np.empty(layout.size, dtype=np.uint64)
    for name, view in layout.views(flat).items():
        view[...] = total.tensors[name]
    streams = []
    for name, (pairs, own) in sorted(revealed.items()):
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
    return {
        name: (decode(views[name], params) / examples).reshape(shape)
        for name, shape in layout.model_shapes.items()
    }
