"""A verified global model, ready to run: found with its plan, checked, built.

The model is only ever loaded after its signature, federation and tensor layout were checked
against the plan.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from fedxray.artifact import peek_header, read_header
from fedxray.errors import FedxrayError
from fedxray.fsio import input_name, is_stdio, read_input
from fedxray.modelfile import load_model_artifact
from fedxray.models.registry import build_model, get_spec, load_numpy_state
from fedxray.plan import Plan, load_plan


@dataclass
class LoadedModel:
    """A verified global model, ready to run."""

    module: nn.Module
    plan: Plan
    plan_path: str | None  # where the plan was found (None: $FEDXRAY_PLAN or --plan '-')
    path: str
    round: int
    digest: str  # SHA-256 of the model file

    @property
    def classes(self) -> list[str]:
        return list(self.plan.settings.classes)

    @property
    def image_size(self) -> int:
        return self.plan.settings.model.image_size

    @property
    def geometry(self) -> str:
        return self.plan.settings.model.geometry

    @property
    def in_channels(self) -> int:
        return self.plan.settings.model.in_channels

    @property
    def view(self):
        """The model's input view: how images become its input."""
        return get_spec(self.plan.settings.model.model_id).input_view(self.in_channels)

    def describe(self) -> dict:
        return {
            "file": self.path,
            "sha256": self.digest,
            "round": self.round,
            "arch": self.plan.settings.model.arch,
            "image_size": self.image_size,
            "federation": self.plan.name,
            "federation_id": self.plan.federation_id,
            "plan": self.plan_path,
        }


def find_plan(
    model_path: str | os.PathLike, model_data: bytes, plan_path: str | os.PathLike | None
) -> tuple[Plan, str | None]:
    """The plan to check the model against: ``plan_path`` / $FEDXRAY_PLAN, else a *.plan file
    next to the model (or in the current folder) naming the model's federation."""
    if plan_path is not None or os.environ.get("FEDXRAY_PLAN"):
        chosen = plan_path or os.environ["FEDXRAY_PLAN"]
        return load_plan(chosen), str(chosen)
    name = Path(str(model_path)).name
    federation = read_header(model_data, name).federation  # the only thing read from it here
    hint = f"name it, or set FEDXRAY_PLAN (the model belongs to federation {federation[:12]})"
    if is_stdio(model_path):
        raise FedxrayError(
            "no plan given for a model read from standard input", hint=hint, option="plan"
        )
    folders = [Path(model_path).parent, Path(".")]
    matches: dict[str, Path] = {}  # plan digest -> first file with it
    for folder in folders:
        for candidate in sorted(folder.glob("*.plan")):
            if not candidate.is_file() or _federation_of(candidate) != federation:
                continue
            plan = load_plan(candidate)  # signature and pinned fingerprint are checked here
            matches.setdefault(plan.digest, candidate)
    if not matches:
        where = " or ".join(dict.fromkeys(str(f) for f in folders))
        raise FedxrayError(
            f"no plan of the model's federation found in {where}", hint=hint, option="plan"
        )
    if len(matches) > 1:
        found = ", ".join(str(p) for p in matches.values())
        raise FedxrayError(
            f"several different plans name the model's federation: {found}",
            hint="choose one",
            option="plan",
        )
    path = next(iter(matches.values()))
    return load_plan(path), str(path)


def _federation_of(path: Path) -> str | None:
    header = peek_header(path)  # None: not a readable fedxray file, so not a candidate
    return header.federation if header is not None and header.kind == "plan" else None


def load_model(
    model_path: str | os.PathLike, plan_path: str | os.PathLike | None = None
) -> LoadedModel:
    """Read a .model file, verify it against its plan and build the network from it."""
    data = read_input(model_path, "model")
    plan, found = find_plan(model_path, data, plan_path)
    what = input_name(model_path)
    art = load_model_artifact(data, plan, what=what)
    m = plan.settings.model
    module = build_model(m.model_id, m.image_size, len(plan.settings.classes), m.in_channels)
    # Writable copies: torch warns (on the user's terminal) about read-only numpy views.
    load_numpy_state(module, {k: np.array(v) for k, v in art.tensors.items()})
    module.eval()
    return LoadedModel(module, plan, found, str(model_path), art.header.round, art.digest)
