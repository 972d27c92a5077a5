"""Global model files (.model): signed by the coordinator, checked against the plan."""

from __future__ import annotations

import numpy as np

from fedxray.artifact import Artifact, SignedArtifact, build_artifact
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
