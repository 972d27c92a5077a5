"""Every fedxray command written in README.md and docs/runbook.md parses with today's CLI.

Only parsing (options, arguments, types), not running: the README's workflow block runs in
test_readme_workflow.py, and the runbook's steps run as examples/*.sh in test_examples.py.
"""

from __future__ import annotations

import re
import shlex

import pytest
import typer

from fedxray.cli.main import app
from tests.conftest import REPO

DOCS = ("README.md", "docs/runbook.md")


def command_lines(text: str) -> list[str]:
    """`fedxray ...` lines of code blocks (fenced, or indented by 4+), continuations joined."""
    lines, out, fenced, i = text.split("\n"), [], False, 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif (fenced or len(line) - len(line.lstrip()) >= 4) and re.match(
            r"(\.venv/bin/)?fedxray\s", line.strip()
        ):
            command = line.strip()
            while command.endswith("\\") and i + 1 < len(lines):
                i += 1
                command = command[:-1] + " " + lines[i].strip()
            out.append(command)
        i += 1
    return out


def parse(argv: list[str]) -> None:
    """Parse like the CLI does, without running the command; raises on a usage error."""
    group = typer.main.get_command(app)
    with group.make_context("fedxray", argv[:1]) as ctx:
        command = group.get_command(ctx, argv[0])
        assert command is not None, f"no command {argv[0]!r}"
        command.make_context(argv[0], argv[1:], parent=ctx)


COMMANDS = [(doc, line) for doc in DOCS for line in command_lines((REPO / doc).read_text())]


def test_the_docs_show_the_whole_workflow():
    shown = {shlex.split(line)[1] for _, line in COMMANDS}
    for doc in DOCS:
        assert any(d == doc for d, _ in COMMANDS), f"{doc}: no fedxray command found"
    assert {"keygen", "init", "verify", "prep", "train-local", "mask", "aggregate", "reveal",
            "unmask", "evaluate", "predict", "privacy", "simulate"} <= shown  # fmt: skip


@pytest.mark.parametrize(("doc", "line"), COMMANDS, ids=[f"{d}:{c[:50]}" for d, c in COMMANDS])
def test_command_parses(doc, line):
    argv = shlex.split(line, comments=True)[1:]
    parse(argv)


def test_parse_catches_drift():
    for wrong in (["mask", "x.update", "--plann", "p"], ["init", "a.pub"], ["keygen"]):
        with pytest.raises(Exception):  # noqa: B017 - click's own UsageError subclasses
            parse(wrong)
