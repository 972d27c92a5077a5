"""The subcommand modules, in the order --help lists their commands.

Each module defines ``register(app)`` and may define ``EXAMPLES`` (command -> [(title, line)])
for its man pages.
"""

from __future__ import annotations

import importlib

import typer

MODULES = (
    "cmd_identity",  # keygen, init
    "cmd_files",  # inspect, verify
    "cmd_status",  # status
    "cmd_prep",  # prep
    "cmd_train",  # train-local, privacy
    "cmd_secagg",  # mask, aggregate, reveal, unmask, abandon
    "cmd_evaluate",  # evaluate, predict
    "cmd_audit",  # audit
    "cmd_simulate",  # simulate
)


def _modules():
    return [importlib.import_module(f"fedxray.cli.{m}") for m in MODULES]


def register(app: typer.Typer) -> None:
    for module in _modules():
        module.register(app)


def examples() -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {}
    for module in _modules():
        out.update(getattr(module, "EXAMPLES", {}))
    return out
