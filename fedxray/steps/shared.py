"""What several steps share: the party a step acts as, inputs given as bytes or paths, output
paths, the JSON document of a result, the plan's secure-aggregation parameters."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from fedxray.artifact import Artifact
from fedxray.data.shard import Shard
from fedxray.errors import FedxrayError
from fedxray.fsio import check_writable, input_name, is_stdio, read_input
from fedxray.keys import PrivateIdentity, load_private_key
from fedxray.plan import Plan, load_plan
from fedxray.secagg.accumulate import FlatLayout
from fedxray.secagg.fixedpoint import SecaggParams, check_capacity
from fedxray.verification import load_artifact

Input = bytes | bytearray | memoryview | str | os.PathLike
ITEM_WORDS = {"masked": "masked update"}  # how messages name an input of a kind
DEFAULT_BATCH = 64  # images per forward pass when a model runs on a shard or on files


@dataclass(frozen=True)
class Party:
    """Who runs a step: the plan, this party's key, and where the key file lies (the folder
    of the party's protocol state)."""

    plan: Plan
    identity: PrivateIdentity
    key_path: Path

    @property
    def state_dir(self) -> Path:
        return key_folder(self.key_path)


def load_party(
    plan_path: str | os.PathLike, key_path: str | os.PathLike, *, coordinator: bool
) -> Party:
    """The plan and a party's key, the key checked against the plan (coordinator or site)."""
    plan = load_plan(plan_path)
    identity = load_private_key(key_path)
    if coordinator:
        plan.require_coordinator(identity)
    else:
        plan.require_site(identity)
    return Party(plan, identity, Path(key_path))


@dataclass(frozen=True)
class ShardFile:
    """A shard file a step read or wrote, and how much is in it."""

    file: Path
    images: int
    patients: int | None  # None: the shard has no patient ids

    @classmethod
    def of(cls, path: str | os.PathLike, shard: Shard) -> ShardFile:
        return cls(Path(path), len(shard), None if shard.patients is None else shard.num_patients)

    def to_dict(self) -> dict:
        return {"file": str(self.file), "images": self.images, "patients": self.patients}


def fields_of(result, *skip: str) -> dict:
    """A result's fields for its JSON document: file bytes left out, paths as text."""
    out = {}
    for f in dataclasses.fields(result):
        value = getattr(result, f.name)
        if f.name in skip or isinstance(value, bytes):
            continue
        out[f.name] = str(value) if isinstance(value, Path) else value
    return out


def read_item(item: Input, what: str) -> bytes:
    """The bytes of an input given as bytes or as a path (``-``: standard input)."""
    if isinstance(item, bytes | bytearray | memoryview):
        return bytes(item) if not isinstance(item, bytes) else item
    return read_input(item, what)


def item_label(item: Input, index: int, kind: str) -> str:
    """How messages name an input: its file name, or its place in the list."""
    if isinstance(item, bytes | bytearray | memoryview):
        return f"{kind} #{index + 1}"
    return input_name(item)


def load_items(
    items: Iterable[Input], plan: Plan, kind: str, round_number: int, senders: list[str]
) -> Iterator[tuple[str, Artifact]]:
    """Verify inputs one at a time, so that at most one file is held: (label, artifact)."""
    for i, item in enumerate(items):
        label = item_label(item, i, ITEM_WORDS.get(kind, kind))
        art = load_artifact(
            read_item(item, label), plan=plan, kind=kind, round=round_number, sender=senders,
            what=label,
        )  # fmt: skip
        yield label, art


def beside(anchor: str | os.PathLike, name: str, fallback: Path) -> Path:
    """``name`` in the folder of ``anchor`` (or in ``fallback`` when anchor is stdin/stdout)."""
    return (fallback if is_stdio(anchor) else Path(anchor).parent) / name


def key_folder(key_path: str | os.PathLike) -> Path:
    """The folder of a key file: where its owner keeps the protocol's state."""
    parent = Path(key_path).parent
    return parent if str(parent) else Path(".")


def check_output(path: Path, force: bool, source: Path | None = None, clash: str = "") -> None:
    """Before any work: ``path`` may be written, and is not ``source`` (else: ``clash``)."""
    if source is not None and _same_file(path, source):
        raise FedxrayError(clash)
    check_writable(path, force=force)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return not is_stdio(a) and not is_stdio(b) and a.resolve() == b.resolve()
    except OSError:
        return False


def plan_params(plan: Plan) -> SecaggParams:
    params = plan.settings.secagg_params()
    check_capacity(params, len(plan.sites))
    return params


def plan_layout(plan: Plan, model_layout: Mapping | None = None) -> FlatLayout:
    """The flat layout of the plan's model (pass ``plan.model_layout()`` if already known)."""
    model_layout = model_layout if model_layout is not None else plan.model_layout()
    return FlatLayout.for_model({n: shape for n, (shape, _) in model_layout.items()})
