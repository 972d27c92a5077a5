"""Global model files (.model): signed by the coordinator, checked against the plan."""

from __future__ import annotations

import numpy as np

from fedxray.artifact import Artifact, SignedArtifact, build_artifact
from fedxray.errors import ProtocolRefusal
from fedxray.keys import PrivateIdentity
from fedxray.plan import Plan
from fedxray.verification import check_tensor_layout, load_artifact


def build_model_artifact(
    plan: Plan,
    *,
    round_number: int,
    weights: dict[str, np.ndarray],
    parent: str,
    provenance: dict,
    signer: PrivateIdentity,
) -> SignedArtifact:
    """The global model that round ``round_number`` trains from."""
    tensors = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
    return build_artifact(
        "model",
        federation=plan.federation_id,
        round=round_number,
        sender=plan.coordinator.name,
        parent=parent,
        meta={"arch": plan.settings.model.arch, "provenance": provenance},
        tensors=tensors,
        signer=signer,
    )


def load_model_artifact(
    data: bytes, plan: Plan, *, round_number: int | None = None, what: str = "model"
) -> Artifact:
    """Verify a global model: coordinator's signature, federation, round, tensor layout."""
    art = load_artifact(
        data, plan=plan, kind="model", round=round_number, sender=plan.coordinator.name, what=what
    )
    check_tensor_layout(art, plan.model_layout(), what)
    return art


def averaged_rounds(art: Artifact) -> list[int] | None:
    """The rounds whose global models a published average holds; None for a global model."""
    prov = art.header.meta.get("provenance")
    averaged = prov.get("averaged") if isinstance(prov, dict) else None
    return list(averaged.get("rounds", [])) if isinstance(averaged, dict) else None


def require_iterate(art: Artifact, what: str) -> None:
    """Sites train from the global model itself, never from a published average (that would
    average again what the next average holds, and the round's updates would not sum)."""
    rounds = averaged_rounds(art)
    if rounds is not None:
        raise ProtocolRefusal(
            f"{what} is the published average of rounds {', '.join(map(str, rounds))}, "
            "for evaluate and predict; the federation trains from the global model itself",
            hint=f"use round-{art.header.round:04d}.model, not the .averaged.model beside it",
        )
