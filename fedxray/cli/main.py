"""The ``fedxray`` entry point: command registration and error handling."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
import traceback
from typing import NoReturn

import typer

from fedxray import __version__
from fedxray.cli import commands, common
from fedxray.cli.common import hint
from fedxray.distributed import is_follower, leave
from fedxray.errors import EXIT_ERROR, EXIT_INTERRUPTED, FedxrayError
from fedxray.fsio import NO_SPACE, output_error

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
    head, _ = _split(argv)
    debug = "--debug" in head
    return [a for a in head if a != "--debug"] + argv[len(head) :], debug


def _split(argv: list[str]) -> tuple[list[str], list[str]]:
    """The options part of a command line, and what follows ``--``."""
    cut = argv.index("--") if "--" in argv else len(argv)
    return argv[:cut], argv[cut:]


def _error_document(message: str, hint_text: str | None, code: int) -> None:
    """With --json, an error is also one JSON document on standard output (scripts read
    stdout; the line on stderr is for people)."""
    doc = {"ok": False, "error": message, "hint": hint_text, "exit_code": code}
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.write(json.dumps(doc) + "\n")
        sys.stdout.flush()


def _fail(message: str, hint_text: str | None, code: int, json_mode: bool) -> NoReturn:
    print(f"fedxray: error: {message}", file=sys.stderr)
    if hint_text:
        print(f"hint: {hint_text}", file=sys.stderr)
    if json_mode:
        _error_document(message, hint_text, code)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    args, debug = _argv_without_debug(list(sys.argv[1:] if argv is None else argv))
    debug = debug or os.environ.get("FEDXRAY_DEBUG") == "1"
    json_mode = "--json" in _split(args)[0]
    common.COMMAND_LINE[:] = args
    command = typer.main.get_command(app)
    try:
        # Not standalone: usage errors come back here, so that --json can report them too.
        # Ctrl-C comes back as exit code 130.
        code = command.main(args=args, prog_name="fedxray", standalone_mode=False)
    except SystemExit as e:
        if e.code == EXIT_INTERRUPTED:
            print(INTERRUPTED, file=sys.stderr)
        raise
    except typer.TyperException as e:  # usage errors (click's), exit 2
        e.show()
        if json_mode:
            _error_document(e.format_message(), None, e.exit_code)
        sys.exit(e.exit_code)
    except typer.Abort:  # end of input at a prompt
        _fail("aborted", None, EXIT_ERROR, json_mode)
    except FedxrayError as e:
        if debug:
            traceback.print_exc()
        if is_follower():  # rank 0 of a torchrun job speaks for every process
            sys.exit(e.exit_code)
        _fail(e.message, hint(e), e.exit_code, json_mode)
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except OSError as e:
        if debug:
            traceback.print_exc()
        # A full disk or a refused permission outside fedxray.fsio (a library writing its
        # own file): still a condition to fix, not a bug to report.
        if e.errno in (*NO_SPACE, errno.EROFS):
            err = output_error(e.filename, e)
            _fail(err.message, err.hint, err.exit_code, json_mode)
        if e.errno in (errno.EACCES, errno.EPERM):
            _fail(f"permission denied: {e.filename or e.strerror}", None, EXIT_ERROR, json_mode)
        _internal(e, json_mode)
    except Exception as e:
        if debug:
            traceback.print_exc()
        _internal(e, json_mode)
    finally:
        # Under torchrun, leave the process group before the interpreter exits, so that its
        # threads stop in order (left to the exit, gloo can abort the process: SIGABRT).
        leave()
    if code == EXIT_INTERRUPTED:
        print(INTERRUPTED, file=sys.stderr)
        if json_mode:
            _error_document("interrupted", None, EXIT_INTERRUPTED)
    sys.exit(code or 0)


def _internal(e: Exception, json_mode: bool) -> NoReturn:
    _fail(
        f"internal error: {type(e).__name__}: {e}",
        "rerun with --debug for the traceback and report it",
        EXIT_ERROR,
        json_mode,
    )
