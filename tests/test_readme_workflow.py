"""README.md's workflow block runs as written: every party in its own folder, `cp` the courier.

The block is split into paragraphs, each headed by who runs it:
"# at each site" (run at hospital-a as written, and at hospital-b and hospital-c with the name
replaced), "# at the coordinator", or "# at a site" (hospital-a only). The test changes
nothing else but these, each of which must be in the block:

- the stand-in paths (the USB stick, the sites' image exports) point at a scratch folder and
  the bundled sample_data/;
- `fedxray init` gets settings that only make training fast (tinycnn at 16 px, one local
  epoch): the protocol, the files and the commands are the same at any size.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_helpers import run_cli
from tests.conftest import REPO

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash"),
]

SITES = ("hospital-a", "hospital-b", "hospital-c")
FAST_INIT = "fedxray init --model tinycnn --image-size 16 --local-epochs 1 "
TRAVELLING = {".pub", ".plan", ".model", ".masked", ".closure", ".reveal"}


def workflow_block() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## The real workflow in short", 1)[1]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match, "README.md: no ```sh block under 'The real workflow in short'"
    return match.group(1)


def paragraphs(block: str) -> list[tuple[str, str]]:
    """(who, commands) for each paragraph; the first one only explains and holds no command."""
    out = []
    for para in re.split(r"\n\s*\n", block.strip()):
        header = para.splitlines()[0]
        if header.startswith("# at each site"):
            who = "each site"
        elif header.startswith("# at the coordinator"):
            who = "coordinator"
        elif header.startswith("# at a site"):
            who = "a site"
        else:
            body = [line for line in para.splitlines() if not line.startswith("#")]
            assert not body, f"README workflow: paragraph with no '# at ...' header: {para!r}"
            continue
        out.append((who, para))
    return out


def substitute(text: str, old: str, new: str) -> str:
    assert old in text, f"README workflow no longer contains {old!r}: update this test"
    return text.replace(old, new)


@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    bindir = Path(sys.executable).parent
    if not (bindir / "fedxray").exists():
        pytest.skip("the fedxray console script is not installed beside this Python")
    work = tmp_path_factory.mktemp("readme")
    usb = work / "usb"
    for party in (*SITES, "coordinator", "usb"):
        (work / party).mkdir()
    block = workflow_block()
    block = substitute(block, "/media/usb", str(usb))
    block = substitute(block, "fedxray init ", FAST_INIT)
    block = substitute(block, "/data/test-export", str(REPO / "sample_data" / "test"))
    block = substitute(block, "/data/new-studies/", str(REPO / "sample_data" / "test") + "/")
    env = {**os.environ, "NO_COLOR": "1", "OMP_NUM_THREADS": "1"}
    env["PATH"] = f"{bindir}{os.pathsep}{env['PATH']}"  # as after `source .venv/bin/activate`
    logs = []
    for who, para in paragraphs(block):
        if who == "each site":
            runs = [(site, para.replace("hospital-a", site)) for site in SITES]
        else:
            runs = [("coordinator" if who == "coordinator" else "hospital-a", para)]
        for party, script in runs:
            if "/data/export" in script:
                script = script.replace("/data/export", str(REPO / "sample_data" / party))
            p = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", script],
                cwd=work / party,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert p.returncode == 0, f"at {party}:\n{script}\n{p.stderr[-3000:]}"
            logs.append((who, party, p))
    return work, logs


def test_every_party_ran_its_part(workflow):
    _, logs = workflow
    assert {who for who, _, _ in logs} == {"each site", "coordinator", "a site"}
    assert {party for _, party, _ in logs} == {*SITES, "coordinator"}


def test_the_round_produced_a_verified_model_for_the_sites(workflow):
    work, _ = workflow
    coord, usb = work / "coordinator", work / "usb"
    assert (usb / "round-0002.model").read_bytes() == (coord / "round-0002.model").read_bytes()
    result = run_cli("verify", usb / "round-0002.model", "--plan", coord / "pneumo.plan")
    assert result.code == 0, result.err


def test_evaluate_predict_and_privacy_printed_their_reports(workflow):
    _, logs = workflow
    evaluation = "\n".join(p.stdout + p.stderr for who, _, p in logs if who == "a site")
    assert "accuracy" in evaluation and "img" in evaluation and "epsilon" in evaluation


def test_private_files_stayed_and_only_travelling_ones_moved(workflow):
    work, _ = workflow
    for f in (work / "usb").iterdir():
        assert f.suffix in TRAVELLING, f.name
    for site in SITES:
        kept = {f.name for f in (work / site).iterdir()}
        assert {f"{site}.key", f"{site}.shard", f"{site}-round-0001.update"} <= kept
        assert {f"{site}.ledger", f"{site}.record"} <= kept  # one ledger per site key
    assert (work / "coordinator" / "coordinator.key").exists()
