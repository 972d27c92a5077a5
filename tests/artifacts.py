"""Forging files for tests: an artifact's fields, changed, signed by whoever the test says."""

from __future__ import annotations

from fedxray.artifact import Artifact, build_artifact
from fedxray.keys import PrivateIdentity


def resign(art: Artifact, signer: PrivateIdentity, **changes) -> bytes:
    """``art`` with ``changes`` (kind, round, parent, meta, tensors...), sent and signed by
    ``signer``."""
    h = art.header
    fields = {
        "kind": h.kind,
        "federation": h.federation,
        "round": h.round,
        "parent": h.parent,
        "meta": h.meta,
        "tensors": art.tensors,
    }
    fields.update(changes)
    return build_artifact(fields.pop("kind"), sender=signer.name, signer=signer, **fields).data
