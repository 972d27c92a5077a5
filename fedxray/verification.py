"""Verifying a file against the plan: kind, federation, sender, signature, round, parent, layout.

The container (fedxray.artifact) knows nothing about plans; this module holds the checks that
need one. Every file from elsewhere passes through :func:`load_artifact` before use.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from fedxray.artifact import Artifact, parse_unverified, verify_signature
from fedxray.errors import VerificationError
from fedxray.plan import Plan

TensorLayout = dict[str, tuple[tuple[int, ...], str]]


def load_artifact(
    data: bytes,
    *,
    plan: Plan,
    kind: str,
    round: int | None = None,
    sender: str | Iterable[str] | None = None,
    parent: str | None = None,
    what: str = "file",
) -> Artifact:
    """Verify ``data`` against the plan and the caller's expectations, then return it.

    Checks, in order: structure and payload hash, kind, federation, sender is a member (and one of
    ``sender`` if given), signature with the sender's key from the plan, round, parent.
    """
    art, message = parse_unverified(data, what)
    h = art.header
    if h.kind != kind:
        raise VerificationError(f"{what} is a {h.kind!r} file, expected {kind!r}")
    if h.federation != plan.federation_id:
        raise VerificationError(
            f"{what} belongs to federation {h.federation[:12]}, not to {plan.name} "
            f"({plan.federation_id[:12]})"
        )
    member = plan.member(h.sender)
    if member is None:
        raise VerificationError(
            f"{what} was sent by {h.sender!r}, who is not a member of {plan.name}"
        )
    if sender is not None:
        allowed = {sender} if isinstance(sender, str) else set(sender)
        if h.sender not in allowed:
            raise VerificationError(
                f"{what} was sent by {h.sender!r}, expected {', '.join(sorted(allowed))}"
            )
    verify_signature(art, message, member, what)
    if round is not None and h.round != round:
        raise VerificationError(f"{what} is for round {h.round}, expected round {round}")
    if parent is not None and h.parent != parent:
        raise VerificationError(
            f"{what} was made from a different parent ({h.parent[:12]}, expected {parent[:12]})"
        )
    return art


def check_tensor_layout(art: Artifact, layout: TensorLayout, what: str) -> None:
    """Tensor names, shapes and dtypes must be exactly ``layout``; all values finite."""
    names = set(art.tensors)
    if names != set(layout):
        missing = sorted(set(layout) - names)[:3]
        extra = sorted(names - set(layout))[:3]
        raise VerificationError(
            f"{what} does not match the plan's model (missing {missing}, unexpected {extra})"
        )
    for name, (shape, dtype) in layout.items():
        t = art.tensors[name]
        if tuple(t.shape) != tuple(shape) or t.dtype != np.dtype(dtype):
            raise VerificationError(
                f"{what}: tensor {name} is {t.dtype}{list(t.shape)}, the plan's model needs "
                f"{np.dtype(dtype)}{list(shape)}"
            )
        if t.dtype.kind == "f" and not np.isfinite(t).all():
            raise VerificationError(f"{what}: tensor {name} has non-finite values")
