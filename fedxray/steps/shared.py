"""What several steps share: inputs given as bytes or paths, output paths, the plan's
secure-aggregation parameters."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from fedxray.errors import FedxrayError
from fedxray.fsio import check_writable, is_stdio, read_input
from fedxray.plan import Plan
from fedxray.secagg.accumulate import FlatLayout
from fedxray.secagg.fixedpoint import SecaggParams, check_capacity

Input = bytes | bytearray | memoryview | str | os.PathLike
DEFAULT_BATCH = 64  # images per forward pass when a model runs on a shard or on files


def read_item(item: Input, what: str) -> bytes:
    """The bytes of an input given as bytes or as a path (``-``: standard input)."""
    if isinstance(item, bytes | bytearray | memoryview):
        return bytes(item) if not isinstance(item, bytes) else item
    return read_input(item, what)


def item_label(item: Input, index: int, kind: str) -> str:
    """How messages name an input: its file name, or its place in the list."""
    if isinstance(item, bytes | bytearray | memoryview):
        return f"{kind} #{index + 1}"
    return "standard input" if is_stdio(item) else Path(item).name


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
