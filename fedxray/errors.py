"""Error types; each maps to a documented process exit code."""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_VERIFY = 3
EXIT_BUDGET = 4
EXIT_REFUSED = 5
# One process of a multi-process run (torchrun, --nproc) died, was killed or hung.
EXIT_WORKER = 6
# A privacy audit measured more leakage than the accountant allows (its report is complete).
EXIT_ALERT = 7
EXIT_INTERRUPTED = 130
# Killed by SIGPIPE, as the shell reports it for cat, grep or git: the reader of standard
# output went away (``fedxray predict ... | head -1``); nothing is printed.
EXIT_BROKEN_PIPE = 141

EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_ERROR: "error: missing or unreadable file, bad input, output already exists, disk "
    "full, device not available",
    EXIT_USAGE: "usage error: unknown option, missing argument",
    EXIT_VERIFY: "verification failed: bad signature, corrupt or truncated file, wrong kind, "
    "federation, round, sender, parent or tensor layout",
    EXIT_BUDGET: "privacy budget would be exceeded; nothing was trained",
    EXIT_REFUSED: "refused by the protocol: e.g. a second masked update for a round, "
    "too few sites, a second closure",
    EXIT_WORKER: "a process of a multi-process run (--nproc, torchrun) stopped or hung; every "
    "process stopped, nothing half-done was kept: run the same command again to resume",
    EXIT_ALERT: "a privacy audit (audit, simulate --audit-canaries) proved more leakage than "
    "the accountant's epsilon allows: a bug in training or accounting; the report and every "
    "output were written in full",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C); no partial output is left",
    EXIT_BROKEN_PIPE: "standard output was closed early (e.g. by | head); stopped quietly, "
    "like other Unix tools",
}


class FedxrayError(Exception):
    """A user-facing error: one line of message, an optional hint, an exit code.

    ``option`` names, in the library's words (a keyword such as ``force``), the choice that
    would change the outcome, and ``value`` a value that would work; a front end shows them
    its own way (the CLI as ``--force``). Messages themselves never name command-line flags.
    """

    exit_code = EXIT_ERROR

    def __init__(
        self, message: str, hint: str | None = None, *, option: str | None = None, value=None
    ):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.option = option
        self.value = value


class VerificationError(FedxrayError):
    """A file failed signature, integrity or provenance checks."""

    exit_code = EXIT_VERIFY


class BudgetExceededError(FedxrayError):
    """Training would spend more privacy than the budget allows."""

    exit_code = EXIT_BUDGET


class ProtocolRefusal(FedxrayError):
    """A step the protocol forbids (e.g. masking twice in one round)."""

    exit_code = EXIT_REFUSED
