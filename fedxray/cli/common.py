"""The command skeleton: shared options, the party a command acts as, and where output goes.

Every command parses its options, calls one library step and renders the step's result:

* ``-o/--output``: ``-`` means standard output; outputs are written atomically and never
  over an existing file without ``--force``.
* ``--json``: standard output carries exactly one JSON document and nothing else; the
  human-readable report still goes to standard error (``-q`` silences it), as do warnings
  and progress bars (these only on a terminal). ``predict --json`` writes one document per
  line instead, so its rows can stream.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from fedxray.errors import FedxrayError
from fedxray.fsio import is_stdio
from fedxray.keys import PrivateIdentity, load_private_key
from fedxray.plan import Plan, load_plan
from fedxray.steps.shared import key_folder

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


def output_option(help: str, metavar: str | None = None) -> Any:
    """The ``-o/--output`` option of a command whose output has a default name."""
    return Annotated[
        Path | None,
        typer.Option("--output", "-o", metavar=metavar, help=help, show_default=False),
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

    def done(self, doc: dict, render: Callable[[], None]) -> None:
        """The end of every command: the JSON document (with --json), then the report."""
        if self.json_mode:
            self.emit_json(doc)
        render()

    def progress(self, enough_work: bool = True):
        """A rich progress bar on stderr; off when quiet, off the terminal (pipes, logs, CI:
        only a blank line would remain) or for too little work to watch."""
        return Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
            disable=self.console.quiet or not self.console.is_terminal or not enough_work,
        )


def start(quiet: bool, json_out: bool, *outputs: Path | str | None) -> Ui:
    """The preamble of a command: its Ui, and --json not fighting a file for stdout."""
    if json_out and any(is_stdio(o) for o in outputs):
        raise FedxrayError(
            "--json and -o - both want standard output", hint="write the file with -o FILE"
        )
    return Ui(quiet, json_out)


PLAN_HINT = "pass --plan FILE or set FEDXRAY_PLAN"


def require(value, what: str, hint: str):
    if value is None:
        raise FedxrayError(f"no {what} given", hint=hint)
    return value


@dataclass(frozen=True)
class Party:
    """Who runs the command: the plan, the party's key, the folder of its protocol state."""

    plan: Plan
    identity: PrivateIdentity
    key_path: Path
    state_dir: Path


def party(plan: Path | None, key: Path | None, *, coordinator: bool) -> Party:
    """The plan and this party's key from the options, the key checked against the plan."""
    the_plan = load_plan(require(plan, "plan", PLAN_HINT))
    who = "coordinator.key" if coordinator else "SITE.key"
    key_path = require(key, "key", f"pass --key {who} or set FEDXRAY_KEY")
    ident = load_private_key(key_path)
    if coordinator:
        the_plan.require_coordinator(ident)
    else:
        the_plan.require_site(ident)
    return Party(the_plan, ident, Path(key_path), key_folder(key_path))


def flag(error: FedxrayError) -> str | None:
    """The command-line option an error names (``force`` -> ``--force``), with its value."""
    if error.option is None:
        return None
    text = "--" + error.option.replace("_", "-")
    return text if error.value is None else f"{text} {error.value}"


def hint(error: FedxrayError) -> str | None:
    """An error's hint, naming the flag that changes the outcome."""
    option = flag(error)
    if option is None:
        return error.hint
    return f"{error.hint} ({option})" if error.hint else f"see {option}"
