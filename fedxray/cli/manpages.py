"""Man pages generated from the CLI definitions plus hand-written sections.

typer >= 0.26 vendors its own click, so click-man cannot see its options; we walk typer's
command tree (through its public API) ourselves and write roff. Regenerate with
``python -m fedxray.cli.manpages man``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from fedxray import __version__
from fedxray.cli import main
from fedxray.cli.commands import examples
from fedxray.errors import EXIT_CODES

DATE = "2026"

ENVIRONMENT = {
    "FEDXRAY_PLAN": "Default for --plan: the federation plan file.",
    "FEDXRAY_KEY": "Default for --key: this party's private key file.",
    "FEDXRAY_COORDINATOR_FINGERPRINT": "If set, a plan whose coordinator fingerprint differs is "
    "rejected.",
    "FEDXRAY_DEBUG": "Set to 1 to show full tracebacks on errors (like --debug).",
    "NO_COLOR": "Disable colour on standard error.",
}

FILES = {
    "NAME.key": "A party's private key (Ed25519 signing and X25519 key agreement, plus a local "
    "secret). Mode 0600, never overwritten, never leaves its site.",
    "NAME.pub": "A public site card: name, public keys, fingerprint; self-signed.",
    "NAME.plan": "The federation plan, signed by the coordinator.",
    "round-NNNN.model": "The global model that round NNNN trains from, signed by the coordinator.",
    "SITE.shard": "A site's prepared, de-identified images. Never leaves the site.",
    "SITE.holdout.shard": "Patients prep --holdout kept out of the training shard: the "
    "non-members of fedxray audit. Never leaves the site.",
    "SITE.update": "A site's trained update (plaintext). Never leaves the site.",
    "SITE.masked": "A site's update hidden by secure aggregation masks; goes to the coordinator.",
    "ROUND.sum": "The coordinator's sum of the masked updates of one round.",
    "ROUND.closure": "The coordinator's signed list of survivors and dropped sites of a round.",
    "SITE.reveal": "A survivor's answer to a closure: the mask seeds shared with dropped sites.",
    "SITE.ledger": "A site's privacy ledger: every epoch of every federation the site trained "
    "in, the seeds of unfinished epochs, and the site's budget. Mode 0600; stays at the site; "
    "back it up.",
    "SITE.record": "The site record beside the key: the ids of the ledgers this key trained "
    "with. Mode 0600; stays at the site; back it up with the ledger.",
}


def _esc(text: str) -> str:
    out = text.replace("\\", "\\e").replace("-", "\\-")
    lines = []
    for line in out.splitlines():
        if line.startswith((".", "'")):
            line = "\\&" + line
        lines.append(line)
    return "\n".join(lines)


def _para(text: str) -> str:
    """Blank-line separated paragraphs become .PP paragraphs."""
    blocks = [b.strip() for b in text.strip().split("\n\n") if b.strip()]
    return "\n.PP\n".join(_esc(" ".join(line.strip() for line in b.splitlines())) for b in blocks)


def _is_argument(param) -> bool:
    return getattr(param, "param_type_name", "") == "argument"


def _param_entry(param, ctx) -> tuple[str, str]:
    """(heading, text) for one argument or option, exactly as --help shows it."""
    record = param.get_help_record(ctx)
    if record is None:
        return f"\\fI{_esc(param.name.upper())}\\fR", ""
    head, text = record
    style = "\\fI" if _is_argument(param) else "\\fB"
    return f"{style}{_esc(head)}\\fR", " ".join(text.split())


def _header(title: str, summary: str) -> list[str]:
    return [
        f'.TH "{title.upper()}" "1" "{DATE}" "fedxray {__version__}" "fedxray manual"',
        ".SH NAME",
        f"{_esc(title)} \\- {_esc(summary)}",
    ]


def _common_sections(command: str | None) -> list[str]:
    out = [".SH ENVIRONMENT"]
    for k, v in ENVIRONMENT.items():
        out += [".TP", f"\\fB{k}\\fR", _esc(v)]
    out.append(".SH EXIT STATUS")
    for code, text in EXIT_CODES.items():
        out += [".TP", f"\\fB{code}\\fR", _esc(text)]
    if command is None:
        out.append(".SH FILES")
        for k, v in FILES.items():
            out += [".TP", f"\\fI{_esc(k)}\\fR", _esc(v)]
    return out


def _command_page(group_ctx, name: str, cmd) -> str:
    ctx = typer.Context(cmd, info_name=name, parent=group_ctx)
    summary = cmd.get_short_help_str(limit=200).rstrip(".")
    lines = _header(f"fedxray-{name}", summary)
    usage = " ".join(cmd.collect_usage_pieces(ctx))
    lines += [".SH SYNOPSIS", f"\\fBfedxray {name}\\fR {_esc(usage)}"]
    lines += [".SH DESCRIPTION", _para(cmd.help or "")]
    args = [p for p in cmd.params if _is_argument(p)]
    opts = [p for p in cmd.params if not _is_argument(p)]
    if args:
        lines.append(".SH ARGUMENTS")
        for p in args:
            head, text = _param_entry(p, ctx)
            lines += [".TP", head, _esc(text)]
    lines.append(".SH OPTIONS")
    for p in opts:
        if not p.hidden:
            head, text = _param_entry(p, ctx)
            lines += [".TP", head, _esc(text)]
    lines += [".TP", "\\fB\\-\\-debug\\fR", "Show the full traceback on errors."]
    lines += [".TP", "\\fB\\-h\\fR, \\fB\\-\\-help\\fR", "Show help and exit."]
    if name in examples():
        lines.append(".SH EXAMPLES")
        for title, example in examples()[name]:
            lines += [".PP", _esc(title) + ":", ".PP", ".nf", ".RS 4", _esc(example), ".RE", ".fi"]
    lines += _common_sections(name)
    lines += [".SH SEE ALSO", "\\fBfedxray\\fR(1)"]
    return "\n".join(lines) + "\n"


def _main_page(group) -> str:
    lines = _header("fedxray", "federated, private chest X-ray classification over signed files")
    lines += [
        ".SH SYNOPSIS",
        "\\fBfedxray\\fR [\\-\\-version] [\\-\\-debug] \\fICOMMAND\\fR [\\fIARGS\\fR]...",
    ]
    lines += [".SH DESCRIPTION", _para(group.help or "")]
    lines += [
        ".PP",
        _esc(
            "Conventions: files in, files out (-o/--output); - means standard input or output; "
            "--json prints exactly one JSON document on standard output; tables and progress go "
            "to standard error; outputs are written atomically and never overwritten without "
            "--force; errors are one line starting with 'fedxray: error:'."
        ),
    ]
    lines.append(".SH COMMANDS")
    for name in group.list_commands(None):
        cmd = group.get_command(None, name)
        lines += [
            ".TP",
            f"\\fBfedxray\\-{_esc(name)}\\fR(1)",
            _esc(cmd.get_short_help_str(limit=200)),
        ]
    lines.append(".SH OPTIONS")
    lines += [".TP", "\\fB\\-\\-version\\fR", "Print the version and exit."]
    lines += [".TP", "\\fB\\-\\-debug\\fR", "Show the full traceback on errors."]
    lines += _common_sections(None)
    see = ", ".join(f"\\fBfedxray\\-{_esc(n)}\\fR(1)" for n in group.list_commands(None))
    lines += [".SH SEE ALSO", see]
    return "\n".join(lines) + "\n"


def generate(app: typer.Typer | None = None) -> dict[str, str]:
    """All pages: file name -> roff text."""
    group = typer.main.get_command(app or main.app)
    ctx = typer.Context(group, info_name="fedxray")
    pages = {"fedxray.1": _main_page(group)}
    for name in group.list_commands(ctx):
        pages[f"fedxray-{name}.1"] = _command_page(ctx, name, group.get_command(ctx, name))
    return pages


def write(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for fname, text in generate().items():
        p = folder / fname
        p.write_text(text)
        written.append(p)
    for stale in folder.glob("fedxray*.1"):
        if stale not in written:
            stale.unlink()
    return written


if __name__ == "__main__":
    for p in write(Path(sys.argv[1] if len(sys.argv) > 1 else "man")):
        print(p)
