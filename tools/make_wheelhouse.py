#!/usr/bin/env python3
"""Build a wheelhouse: fedxray and every dependency as wheels, for a machine with no network.

Run it on a connected machine (Python >= 3.11) in a fedxray checkout; carry the folder to the
offline one (USB disk, DVD), then there:

    (cd WHEELHOUSE && sha256sum -c --quiet SHA256SUMS)   # the copy is complete and intact
    python3 -m venv .venv && .venv/bin/pip install --no-index --find-links WHEELHOUSE fedxray

The wheels must match the offline machine: give its Python version and platform tag when they
differ from this machine's. On Linux the tag names the offline machine's glibc (`ldd --version`
there): glibc 2.34 on x86_64 takes manylinux_2_34_x86_64, and the older tags are added here.
Only wheels are taken (never source archives), so nothing is compiled on the offline machine.
See README.md, "Offline install".
"""

from __future__ import annotations

import argparse
import email.parser
import hashlib
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
TORCH_PACKAGES = ("torch", "torchvision")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        build(args)
    except subprocess.CalledProcessError as e:
        print(
            f"error: pip failed (exit status {e.returncode}); its message is above", file=sys.stderr
        )
        return 1
    return 0


def build(args: argparse.Namespace) -> None:
    out = args.wheelhouse.resolve()
    out.mkdir(parents=True, exist_ok=True)
    project = build_project_wheel(out, args.no_build_isolation)
    print(f"built {project.name}", file=sys.stderr)
    if not args.project_only:
        target = target_options(args)
        constraints: list[str] = []
        if args.cpu:
            constraints = download_cpu_torch(project, out, target, args.torch_index)
        download_dependencies(project, out, target, args.extras, constraints)
        # The build backend too, so that `pip install -e` of a checkout works offline.
        pip("download", "-d", str(out), *target, *build_requirements())
    write_checksums(out)
    write_install_note(out, project, args)
    wheels = sorted(out.glob("*.whl"))
    size = sum(w.stat().st_size for w in wheels)
    print(f"{out}: {len(wheels)} wheels, {size / 1e6:,.0f} MB; see INSTALL.txt", file=sys.stderr)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "wheelhouse",
        type=Path,
        help="folder for the wheels (created if missing; one folder per target: a rerun with "
        "the same options resumes)",
    )
    p.add_argument("--python-version", help="offline machine's Python, e.g. 3.11 (default: this)")
    p.add_argument(
        "--platform",
        action="append",
        default=[],
        help="offline machine's platform tag, e.g. manylinux_2_28_x86_64 (repeatable; "
        "default: this machine's)",
    )
    p.add_argument(
        "--extras", default="", help="extras to include, e.g. test (to run the tests offline)"
    )
    p.add_argument(
        "--cpu",
        action="store_true",
        help="torch and torchvision from PyTorch's CPU-only index (x86_64 Linux): "
        "about 0.3 GB to carry instead of 3.1 GB, no GPU",
    )
    p.add_argument("--torch-index", default=CPU_TORCH_INDEX, help="index used by --cpu")
    p.add_argument(
        "--project-only",
        action="store_true",
        help="only fedxray's own wheel (no network needed; what CI checks)",
    )
    p.add_argument(
        "--no-build-isolation",
        action="store_true",
        help="build fedxray with this Python's setuptools (>= 77) instead of fetching it",
    )
    return p.parse_args(argv)


def pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    print("+ " + " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True)


def build_project_wheel(out: Path, no_build_isolation: bool) -> Path:
    """fedxray's own wheel, built from this checkout; replaces any older fedxray wheel in out."""
    with tempfile.TemporaryDirectory() as tmp:
        pip("wheel", "--no-deps", "-w", tmp, *(["--no-build-isolation"] * no_build_isolation),
            str(REPO))  # fmt: skip
        (built,) = Path(tmp).glob("fedxray-*.whl")
        for old in out.glob("fedxray-*.whl"):
            old.unlink()
        return Path(shutil.copy2(built, out / built.name))


def target_options(args: argparse.Namespace) -> list[str]:
    # Binary wheels only: the offline machine then needs no compiler and no build tools.
    opts = ["--only-binary=:all:"]
    if args.python_version:
        opts += ["--python-version", args.python_version, "--implementation", "cp"]
    for tag in args.platform:
        for compatible in platform_tags(tag):
            opts += ["--platform", compatible]
    return opts


def platform_tags(tag: str) -> list[str]:
    """The tag and the older ones it runs; pip does not expand --platform by itself.

    manylinux_2_34_x86_64 (glibc 2.34) also runs wheels built for glibc 2.33 ... 2.17
    (manylinux2014) and older: torch is built for 2.28, pylibjpeg-libjpeg for 2.31.
    """
    m = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", tag)
    if not m:
        return [tag]
    glibc, arch = int(m.group(1)), m.group(2)
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(glibc, 16, -1)]
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    if arch not in ("x86_64", "i686"):
        legacy = {17: "manylinux2014"}
    return tags + [f"{name}_{arch}" for minor, name in legacy.items() if minor <= glibc]


def requirements(wheel: Path) -> list[str]:
    """The Requires-Dist lines of a wheel's metadata."""
    with zipfile.ZipFile(wheel) as z:
        (name,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        meta = email.parser.BytesParser().parsebytes(z.read(name))
    return meta.get_all("Requires-Dist") or []


def build_requirements() -> list[str]:
    with (REPO / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)["build-system"]["requires"]


def download_cpu_torch(project: Path, out: Path, target: list[str], index: str) -> list[str]:
    """torch and torchvision (and their dependencies) from the CPU-only index.

    Returns constraints that pin the two to the versions downloaded, so that the main
    download step does not swap in the larger CUDA build of the same release.
    """
    specs = [r for r in requirements(project) if re.match(rf"({'|'.join(TORCH_PACKAGES)})\b", r)]
    with tempfile.TemporaryDirectory() as tmp:
        pip("download", "-d", tmp, "--index-url", index, *target, *specs)
        pins = []
        for name in TORCH_PACKAGES:
            found = list(Path(tmp).glob(f"{name}-*.whl"))
            if len(found) != 1:
                raise SystemExit(f"error: expected one {name} wheel from {index}, got {found}")
            pins.append(f"{name}=={found[0].name.split('-')[1]}")
        for wheel in Path(tmp).glob("*.whl"):
            shutil.move(wheel, out / wheel.name)
    return pins


def download_dependencies(
    project: Path, out: Path, target: list[str], extras: str, constraints: list[str]
) -> None:
    spec = f"{project}[{extras}]" if extras else str(project)
    with tempfile.TemporaryDirectory() as tmp:
        extra: list[str] = []
        if constraints:
            pins = Path(tmp) / "torch-pins.txt"
            pins.write_text("\n".join(constraints) + "\n")
            extra = ["-c", str(pins), "--find-links", str(out)]
        pip("download", "-d", str(out), *target, *extra, spec)


def write_checksums(out: Path) -> None:
    lines = []
    for w in sorted(out.glob("*.whl")):
        digest = hashlib.sha256()
        with w.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        lines.append(f"{digest.hexdigest()}  {w.name}\n")
    (out / "SHA256SUMS").write_text("".join(lines))


def write_install_note(out: Path, project: Path, args: argparse.Namespace) -> None:
    python = args.python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
    libc = " ".join(platform.libc_ver())
    where = ", ".join(args.platform) or f"{sysconfig.get_platform()} {libc} (the building machine)"
    what = f"fedxray[{args.extras}]" if args.extras else "fedxray"
    contents = "alone" if args.project_only else "and its dependencies"
    contents += " (CPU-only torch)" if args.cpu else ""
    (out / "INSTALL.txt").write_text(
        f"{project.name} {contents}\n"
        f"for Python {python} on {where}.\n\n"
        "On the offline machine, with this folder at WHEELHOUSE:\n\n"
        "    (cd WHEELHOUSE && sha256sum -c --quiet SHA256SUMS)\n"
        "    python3 -m venv .venv && .venv/bin/pip install --no-index --find-links WHEELHOUSE "
        f"'{what}'\n"
    )


if __name__ == "__main__":
    sys.exit(main())
