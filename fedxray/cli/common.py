"""Options and rendering shared by every command."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fedxray.errors import FedxrayError
from fedxray.settings import SettingError, option_for

JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print one JSON document on stdout (nothing else there).")
]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="Print nothing on stderr but errors.")
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")]
PlanOpt = Annotated[
    Path | None,
    typer.Option(
        "--plan",
        envvar="FEDXRAY_PLAN",
        help="The federation plan (.plan). Default: $FEDXRAY_PLAN.",
        show_default=False,
    ),
]
KeyOpt = Annotated[
    Path | None,
    typer.Option(
        "--key",
        envvar="FEDXRAY_KEY",
        help="This party's private key (.key). Default: $FEDXRAY_KEY.",
        show_default=False,
    ),
]


class Ui:
    """Where a command's human output goes: stderr, honouring --quiet and NO_COLOR."""

    def __init__(self, quiet: bool = False, json_mode: bool = False):
        self.json_mode = json_mode
        self.console = Console(
            stderr=True,
            quiet=quiet,
            no_color=bool(os.environ.get("NO_COLOR")),
            highlight=False,
            soft_wrap=True,
        )

    def info(self, text: str) -> None:
        self.console.print(text)

    def table(self, title: str | None, rows: list[tuple], headers: tuple[str, ...] = ()) -> None:
        t = Table(title=title, show_header=bool(headers), title_justify="left")
        for h in headers or ("", ""):
            t.add_column(h)
        for r in rows:
            t.add_row(*(str(c) for c in r))
        self.console.print(t)

    def kv(self, title: str | None, mapping: dict) -> None:
        self.table(title, [(k, v) for k, v in mapping.items()])

    def emit_json(self, doc) -> None:
        sys.stdout.write(json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n")
        sys.stdout.flush()

    def progress(self):
        """A rich progress bar on stderr (a no-op when quiet or not on a terminal)."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        return Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
            disable=self.console.quiet or not self.console.is_terminal,
        )


PLAN_HINT = "pass --plan FILE or set FEDXRAY_PLAN"


def require(value, what: str, hint: str):
    if value is None:
        raise FedxrayError(f"no {what} given", hint=hint)
    return value


def check_stdout_use(output: Path | str | None, json_out: bool) -> None:
    if str(output) == "-" and json_out:
        raise FedxrayError(
            "--json and -o - both want standard output", hint="write the file with -o FILE"
        )


@contextlib.contextmanager
def flags_for_settings():
    """Name the command-line option that sets a refused setting in the error's hint."""
    try:
        yield
    except SettingError as e:
        option = option_for(e.setting)
        if option is None:
            raise
        flag = "--" + option.replace("_", "-")
        e.hint = f"{e.hint}; set it with {flag}" if e.hint else f"set it with {flag}"
        raise
