"""The offline install: fedxray's wheel from tools/make_wheelhouse.py installs with --no-index.

Only fedxray's own wheel is built here (the full wheelhouse needs the network; README.md,
"Offline install", says what was measured). It is installed into a fresh, throwaway venv
from that folder alone, with every pip setting of this machine switched off; the
dependencies are then borrowed from this interpreter (a .pth file) to run the installed copy.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow
TOOL = REPO / "tools" / "make_wheelhouse.py"


def offline_env() -> dict[str, str]:
    """This environment without any pip setting: no index, no config file, no find-links."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "NO_COLOR": "1"}


def run(*cmd, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kw)
    assert p.returncode == 0, f"{cmd}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    return p


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory) -> Path:
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip("building fedxray offline needs setuptools >= 77 (the [test] extra has it)")
    out = tmp_path_factory.mktemp("wheelhouse")
    run(sys.executable, TOOL, "--project-only",
        "--no-build-isolation", out, env=offline_env())  # fmt: skip
    return out


@pytest.fixture(scope="module")
def venv(wheelhouse, tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("offline") / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    run(sys.executable, "-m", "pip", "--python", python, "install", "--no-index",
        "--find-links", wheelhouse, "--no-deps", "fedxray", env=offline_env())  # fmt: skip
    return venv


def site_packages(venv: Path) -> Path:
    rel = Path(sysconfig.get_path("purelib")).relative_to(sysconfig.get_path("data"))
    return venv / rel


def test_wheelhouse_holds_the_wheel_and_its_checksum(wheelhouse):
    (wheel,) = wheelhouse.glob("fedxray-*-py3-none-any.whl")
    digest, name = (wheelhouse / "SHA256SUMS").read_text().split()
    assert name == wheel.name
    assert digest == hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert "--no-index --find-links" in (wheelhouse / "INSTALL.txt").read_text()


def test_installs_a_real_copy_with_its_man_pages(venv):
    package = site_packages(venv) / "fedxray"
    assert (package / "cli" / "main.py").is_file()  # a copy, not an editable link
    assert not list(site_packages(venv).glob("__editable__*"))
    # [tool.setuptools.data-files] -> VENV/share/man/man1 (man finds it beside VENV/bin on PATH).
    installed = {p.name: p.read_bytes() for p in (venv / "share" / "man" / "man1").glob("*.1")}
    shipped = {p.name: p.read_bytes() for p in (REPO / "man").glob("*.1")}
    assert installed == shipped and "fedxray.1" in installed


def test_the_installed_copy_runs(venv, tmp_path):
    # Borrow the dependencies (torch & co.) from this interpreter, after the venv's own copy.
    borrowed = [p for p in sys.path if Path(p).name == "site-packages" and Path(p).is_dir()]
    (site_packages(venv) / "borrowed-deps.pth").write_text("\n".join(borrowed) + "\n")
    bindir = venv / "bin"
    # Away from the checkout, so that the checkout's fedxray/ is not what gets imported.
    code = "import fedxray; print(fedxray.__file__)"
    where = run(bindir / "python", "-c", code, cwd=tmp_path).stdout.strip()
    assert Path(where).is_relative_to(venv), where
    assert run(bindir / "fedxray", "--version", cwd=tmp_path).stdout.startswith("fedxray ")
    run(bindir / "fedxray", "keygen", "site-x", "-o", tmp_path, "-q", cwd=tmp_path)
    assert (tmp_path / "site-x.key").stat().st_mode & 0o777 == 0o600


def load_tool():
    spec = importlib.util.spec_from_file_location("make_wheelhouse", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def fake_wheel(index: Path, name: str, version: str) -> None:
    """A wheel with metadata only, in a PEP 503 folder index."""
    folder = index / name
    folder.mkdir(parents=True)
    filename = f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(folder / filename, "w") as z:
        info = f"{name}-{version}.dist-info"
        metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        z.writestr(f"{info}/METADATA", metadata)
        wheel = "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        z.writestr(f"{info}/WHEEL", wheel)
        z.writestr(f"{info}/RECORD", "")
    (folder / "index.html").write_text(f'<a href="{filename}">{filename}</a>\n')


def test_cpu_option_pins_the_cpu_builds_it_downloaded(wheelhouse, tmp_path, monkeypatch):
    # download.pytorch.org stands in as a local index of metadata-only wheels.
    index, out = tmp_path / "index", tmp_path / "out"
    fake_wheel(index, "torch", "2.14.1+cpu")
    fake_wheel(index, "torchvision", "0.29.1+cpu")
    out.mkdir()
    for key, value in offline_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("PIP_NO_INDEX")
    (project,) = wheelhouse.glob("fedxray-*.whl")
    pins = load_tool().download_cpu_torch(project, out, [], index.as_uri())
    assert pins == ["torch==2.14.1+cpu", "torchvision==0.29.1+cpu"]
    assert {p.name for p in out.iterdir()} == {
        "torch-2.14.1+cpu-py3-none-any.whl",
        "torchvision-0.29.1+cpu-py3-none-any.whl",
    }


def test_platform_tags_include_the_older_glibc_ones():
    tags = load_tool().platform_tags("manylinux_2_34_x86_64")
    # torch 2.14.1 is built for glibc 2.28, pylibjpeg-libjpeg 2.4 for manylinux2014.
    assert {"manylinux_2_34_x86_64", "manylinux_2_28_x86_64", "manylinux2014_x86_64"} <= set(tags)
    assert "manylinux_2_35_x86_64" not in tags
    assert load_tool().platform_tags("win_amd64") == ["win_amd64"]
