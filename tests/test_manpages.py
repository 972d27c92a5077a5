"""man/ stays in step with the CLI, and every page renders cleanly."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from fedxray.cli.manpages import generate
from tests.conftest import REPO


def test_man_pages_match_the_cli():
    pages = generate()
    committed = {p.name for p in (REPO / "man").glob("*.1")}
    assert committed == set(pages), "run: python -m fedxray.cli.manpages man"
    for name, text in pages.items():
        assert (REPO / "man" / name).read_text() == text, (
            f"man/{name} drifted from the CLI; run: python -m fedxray.cli.manpages man"
        )


def test_every_command_has_a_page_with_exit_status():
    import typer

    from fedxray.cli.main import app

    group = typer.main.get_command(app)
    pages = generate()
    for name in group.list_commands(None):
        text = pages[f"fedxray-{name}.1"]
        for section in (".SH SYNOPSIS", ".SH DESCRIPTION", ".SH OPTIONS", ".SH EXIT STATUS"):
            assert section in text, (name, section)
        for code in ("\\fB3\\fR", "\\fB4\\fR"):
            assert code in text


@pytest.mark.skipif(shutil.which("man") is None, reason="man is not installed")
def test_pages_render_without_warnings():
    env = {**os.environ, "MANWIDTH": "80", "LC_ALL": "C.UTF-8"}
    for page in sorted((REPO / "man").glob("*.1")):
        p = subprocess.run(
            ["man", "--warnings", "-l", str(page)], capture_output=True, text=True, env=env
        )
        assert p.returncode == 0, p.stderr
        assert p.stderr.strip() == "", f"{page.name}: {p.stderr}"
        assert "fedxray" in p.stdout
