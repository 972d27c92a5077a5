"""The runbook's example scripts run end to end (tiny settings) in a temporary folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_helpers import run_cli
from tests.conftest import REPO

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    work = tmp_path_factory.mktemp("demo")
    bindir = Path(sys.executable).parent
    if not (bindir / "fedxray").exists():
        pytest.skip("the fedxray console script is not installed beside this Python")
    env = {**os.environ, "WORK": str(work), "IMAGE_SIZE": "16", "NO_COLOR": "1"}
    env["PATH"] = f"{bindir}{os.pathsep}{env['PATH']}"
    p = subprocess.run(
        ["bash", str(REPO / "examples" / "demo-offline.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    return work, p


def test_demo_produces_a_verified_final_model(demo):
    work, _ = demo
    coord = work / "coordinator"
    assert run_cli("verify", coord / "round-0003.model", "--plan", coord / "pneumo.plan").code == 0
    report = json.loads((work / "hospital-a" / "evaluation-round-0003.json").read_text())
    assert report["n_images"] > 0 and "accuracy" in report["metrics"]


def test_dropout_round_used_a_closure_and_reveals(demo):
    work, _ = demo
    usb = work / "usb"
    assert (usb / "round-0002.closure").exists()
    assert not (usb / "round-0001.closure").exists()  # round 1: one trip, no closure
    assert {p.name for p in usb.glob("*-round-0002.reveal")} == {
        "hospital-a-round-0002.reveal",
        "hospital-b-round-0002.reveal",
    }
    assert not (usb / "hospital-c-round-0002.masked").exists()


def test_nothing_private_on_the_usb_stick(demo):
    work, _ = demo
    for f in (work / "usb").iterdir():
        assert f.suffix in {".pub", ".plan", ".model", ".masked", ".closure", ".reveal"}, f.name
