"""The list of subcommands, in the order --help shows them."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    from fedxray.cli import cmd_files, cmd_identity

    for module in (cmd_identity, cmd_files):
        module.register(app)
