"""CLI conventions: exit codes, one-line errors, --json, atomic outputs, keys."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from fedxray.errors import EXIT_ERROR, EXIT_USAGE, EXIT_VERIFY
from tests.cli_helpers import run_cli


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    d = tmp_path_factory.mktemp("fed")
    for s in ("hosp-a", "hosp-b", "hosp-c"):
        assert run_cli("keygen", s, "-o", d, "-q").code == 0
    r = run_cli(
        "init", "--name", "demo", "-o", d / "coord", *(d / f"hosp-{s}.pub" for s in "abc"), "--json"
    )
    assert r.code == 0, r.err
    return d, json.loads(r.out)


def test_version_and_module_entry():
    r = run_cli("--version")
    assert r.code == 0 and r.out.startswith("fedxray ")
    p = subprocess.run(
        [sys.executable, "-m", "fedxray", "--version"], capture_output=True, text=True
    )
    assert p.returncode == 0 and p.stdout == r.out


def test_keygen_writes_private_key_0600_and_refuses_overwrite(tmp_path):
    r = run_cli("keygen", "site-x", "-o", tmp_path, "--json")
    assert r.code == 0
    info = json.loads(r.out)
    key = tmp_path / "site-x.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert info["fingerprint"] in r.err
    before = key.read_bytes()
    r2 = run_cli("keygen", "site-x", "-o", tmp_path)
    assert r2.code == EXIT_ERROR
    assert r2.err.startswith("fedxray: error: refusing to overwrite")
    assert "Traceback" not in r2.err
    assert key.read_bytes() == before


def test_init_outputs_and_json(fed):
    d, info = fed
    assert (d / "coord" / "demo.plan").exists() and (d / "coord" / "round-0001.model").exists()
    assert stat.S_IMODE((d / "coord" / "coordinator.key").stat().st_mode) == 0o600
    assert [s["name"] for s in info["sites"]] == ["hosp-a", "hosp-b", "hosp-c"]
    # no file except the .key files contains private key material
    import base64

    for s in ("hosp-a", "hosp-b", "hosp-c", "coordinator"):
        folder = d / "coord" if s == "coordinator" else d
        secret = json.loads((folder / f"{s}.key").read_text())
        for f in list(d.rglob("*")):
            if f.is_file() and f.suffix != ".key":
                blob = f.read_bytes()
                for field in ("ed25519", "x25519", "secret"):
                    assert base64.b64decode(secret[field]) not in blob
                    assert secret[field].encode() not in blob


def test_init_refuses_existing_outputs_without_force(fed):
    d, _ = fed
    r = run_cli("init", "--name", "demo", "-o", d / "coord", *(d / f"hosp-{s}.pub" for s in "abc"))
    assert r.code == EXIT_ERROR and "exists" in r.err and "--force" in r.err


def test_verify_plan_model_and_site_membership(fed):
    d, info = fed
    plan = d / "coord" / "demo.plan"
    r = run_cli("verify", plan, "--key", d / "hosp-a.key", "--json")
    assert r.code == 0
    assert json.loads(r.out)["coordinator_fingerprint"] == info["coordinator_fingerprint"]
    r = run_cli("verify", d / "coord" / "round-0001.model", "--plan", plan, "--round", "1")
    assert r.code == 0, r.err
    r = run_cli("verify", d / "coord" / "round-0001.model", "--plan", plan, "--round", "2")
    assert r.code == EXIT_VERIFY and "round 1, expected round 2" in r.err
    r = run_cli("verify", plan, "--fingerprint", "0000-0000-0000-0000-0000")
    assert r.code == EXIT_VERIFY


def test_verify_flipped_byte_fails_with_code_3(fed, tmp_path):
    d, _ = fed
    data = (d / "coord" / "round-0001.model").read_bytes()
    for pos in (3, 100, len(data) // 2, len(data) - 1):
        bad = bytearray(data)
        bad[pos] ^= 0x40
        f = tmp_path / "bad.model"
        f.write_bytes(bytes(bad))
        r = run_cli("verify", f, "--plan", d / "coord" / "demo.plan")
        assert r.code == EXIT_VERIFY, (pos, r.err)
        assert r.err.startswith("fedxray: error:") and "Traceback" not in r.err
        assert len(r.err.strip().splitlines()) <= 2


def test_verify_wrong_kind_by_file_name(fed, tmp_path):
    d, _ = fed
    f = tmp_path / "x.update"
    f.write_bytes((d / "coord" / "round-0001.model").read_bytes())
    r = run_cli("verify", f, "--plan", d / "coord" / "demo.plan")
    assert r.code == EXIT_VERIFY and "expected 'update'" in r.err


@pytest.mark.parametrize("content", [b"", b"hello", b"\x00" * 7])
def test_verify_empty_and_garbage(fed, tmp_path, content):
    d, _ = fed
    f = tmp_path / "x.model"
    f.write_bytes(content)
    r = run_cli("verify", f, "--plan", d / "coord" / "demo.plan")
    assert r.code == EXIT_VERIFY and "Traceback" not in r.err


def test_missing_file_and_usage_errors(fed):
    d, _ = fed
    r = run_cli("verify", d / "nope.model", "--plan", d / "coord" / "demo.plan")
    assert r.code == EXIT_ERROR and r.err.startswith("fedxray: error: file not found")
    r = run_cli("verify")
    assert r.code == EXIT_USAGE
    r = run_cli("no-such-command")
    assert r.code == EXIT_USAGE


def test_stdin_and_json_inspect(fed):
    d, _ = fed
    data = (d / "coord" / "round-0001.model").read_bytes()
    r = run_cli("inspect", "-", "--json", stdin=data)
    assert r.code == 0
    doc = json.loads(r.out)
    assert doc["kind"] == "model" and doc["round"] == 1 and doc["signature_checked"] is False
    r = run_cli("inspect", d / "hosp-a.key", "--json")
    assert r.code == 0 and json.loads(r.out)["kind"] == "key" and "secret" not in r.out


def test_debug_shows_traceback(fed):
    d, _ = fed
    r = run_cli("verify", d / "nope.model", "--plan", d / "coord" / "demo.plan", "--debug")
    assert "Traceback" in r.err and r.code == EXIT_ERROR


def test_interrupted_write_leaves_no_output(tmp_path, monkeypatch):
    from fedxray import fsio

    target = tmp_path / "out.model"

    def boom(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(KeyboardInterrupt):
        fsio.write_atomic(target, b"x" * 10_000)
    assert list(tmp_path.iterdir()) == []


def test_killed_process_leaves_no_partial_file(tmp_path):
    # A writer killed mid-write (SIGKILL) leaves at most a hidden temp file, never the target.
    code = (
        "import os,sys,time\n"
        "from fedxray import fsio\n"
        "real=os.fsync\n"
        "def slow(fd):\n"
        "    print('writing', flush=True); time.sleep(30)\n"
        "os.fsync=slow\n"
        f"fsio.write_atomic({str(tmp_path / 'big.model')!r}, b'x'*5_000_000)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert p.stdout.readline().strip() == b"writing"
    p.kill()
    p.wait()
    assert not (tmp_path / "big.model").exists()


def test_ctrl_c_is_one_line_and_exit_130(fed, monkeypatch):
    import fedxray.steps.inspection

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(fedxray.steps.inspection, "describe", interrupted)
    d, _ = fed
    r = run_cli("inspect", d / "coord" / "demo.plan")
    assert r.code == 130 and "interrupted" in r.err and "Traceback" not in r.err


def test_unexpected_exception_is_one_line(fed, monkeypatch):
    import fedxray.steps.inspection

    def broken(*a, **k):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(fedxray.steps.inspection, "describe", broken)
    d, _ = fed
    r = run_cli("inspect", d / "coord" / "demo.plan")
    assert r.code == 1 and "internal error" in r.err and "Traceback" not in r.err


def test_init_from_pretrained_safetensors(fed, tmp_path):
    from safetensors.numpy import save_file

    from fedxray.artifact import parse_unverified
    from fedxray.models.registry import build_model, state_to_numpy

    d, _ = fed
    weights = state_to_numpy(build_model("smallcnn", 64, 3, seed=5))
    save_file(weights, str(tmp_path / "w.safetensors"))
    cards = [d / f"hosp-{s}.pub" for s in "abc"]
    r = run_cli("init", "--name", "pt", "-o", tmp_path / "c", "--init", tmp_path / "w.safetensors",
                "--model", "smallcnn", "--json", *cards)  # fmt: skip
    assert r.code == 0, r.err
    assert json.loads(r.out)["pretrained"]["loaded"] == len(weights)
    model = parse_unverified((tmp_path / "c" / "round-0001.model").read_bytes())[0]
    for name, w in weights.items():
        assert (model.tensors[name] == w).all()
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    r = run_cli("init", "--name", "pt2", "-o", tmp_path / "c2", "--init",
                tmp_path / "junk.safetensors", *cards)  # fmt: skip
    assert r.code == EXIT_ERROR and "safetensors" in r.err
    assert not (tmp_path / "c2" / "pt2.plan").exists()
