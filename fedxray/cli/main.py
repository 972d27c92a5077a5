"""The ``fedxray`` entry point: command registration and error handling."""

from __future__ import annotations

import os
import sys
import traceback

import typer

from fedxray import __version__
from fedxray.cli import commands
from fedxray.cli.common import hint
from fedxray.errors import EXIT_ERROR, EXIT_INTERRUPTED, FedxrayError

INTERRUPTED = "fedxray: interrupted; no partial output was left"

HELP = """Train a chest X-ray classifier across hospitals, offline, over signed files.

Every exchange between a site and the coordinator is one signed file that any transport can
carry (shared folder, sftp, e-mail, USB stick). No image ever leaves its hospital.
"""

app = typer.Typer(
    name="fedxray",
    help=HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"fedxray {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = typer.Option(
        False, "--debug", help="Show the full traceback on errors (also: FEDXRAY_DEBUG=1)."
    ),
) -> None:
    if debug:
        os.environ["FEDXRAY_DEBUG"] = "1"


commands.register(app)


def _argv_without_debug(argv: list[str]) -> tuple[list[str], bool]:
    """Accept --debug anywhere on the line, not only before the command."""
    if "--" in argv:
        cut = argv.index("--")
        head, tail = argv[:cut], argv[cut:]
    else:
        head, tail = argv, []
    debug = "--debug" in head
    return [a for a in head if a != "--debug"] + tail, debug


def main(argv: list[str] | None = None) -> None:
    args, debug = _argv_without_debug(list(sys.argv[1:] if argv is None else argv))
    debug = debug or os.environ.get("FEDXRAY_DEBUG") == "1"
    command = typer.main.get_command(app)
    try:
        # Standalone: typer reports usage errors itself (exit 2), turns Ctrl-C into exit 130
        # and always ends with SystemExit.
        command.main(args=args, prog_name="fedxray", standalone_mode=True)
    except SystemExit as e:
        if e.code == EXIT_INTERRUPTED:
            print(INTERRUPTED, file=sys.stderr)
        raise
    except FedxrayError as e:
        if debug:
            traceback.print_exc()
        print(f"fedxray: error: {e.message}", file=sys.stderr)
        if hint(e):
            print(f"hint: {hint(e)}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): quiet, like other Unix tools.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(EXIT_ERROR)
    except Exception as e:
        if debug:
            traceback.print_exc()
        print(f"fedxray: error: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        print("hint: rerun with --debug for the traceback and report it", file=sys.stderr)
        sys.exit(EXIT_ERROR)
