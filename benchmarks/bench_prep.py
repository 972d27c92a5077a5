"""Throughput of prepare() on the real data beside the repo: a markdown table.

    .venv/bin/python benchmarks/bench_prep.py [--image-size 224] [--workers 1 2] [--kermany224]

Datasets: kermany-fullres/train (120 JPEGs, 399-2890 px wide), dicom/ (11 DICOMs of all
sorts, labelled through a temporary CSV; two 12-bit JPEG Extended files are skipped as
undecodable) and, with --kermany224, the 5,216-image kermany224/train split.
Each run is timed once, cold worker processes included (that is what a user waits for);
the pool is used even for small inputs, which prepare() would otherwise decode in-process.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import fedxray.data.decode as decode  # noqa: E402
from fedxray.data.prep import prepare  # noqa: E402

# Measure the pool itself: prepare() would decode small inputs in-process anyway.
decode.MIN_FILES_PER_WORKER = 1

SHARED = Path(os.environ.get("FEDXRAY_SHARED_DATA", REPO.parent / "shared" / "data"))


def _dicom_labels(folder: Path, tmp: Path) -> Path:
    """A CSV giving every DICOM file a label: prep needs one, the chest/ folder names none."""
    csv = tmp / "dicom-labels.csv"
    rows = ["file,label"] + [f"{p.name},normal" for p in sorted(folder.rglob("*.dcm"))]
    csv.write_text("\n".join(rows) + "\n")
    return csv


def _run(name: str, inputs: list[Path], label_mode, size: int, workers: int) -> str:
    started = time.perf_counter()
    shard, report = prepare(inputs, size, label_mode=label_mode, workers=workers)
    seconds = time.perf_counter() - started
    skipped = ", ".join(f"{n} {r}" for r, n in report.skipped_counts().items()) or "-"
    return (
        f"| {name} | {report.files_seen} | {len(shard)} | {skipped} | {report.workers} | "
        f"{seconds:.2f} | {report.files_seen / seconds:.1f} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--kermany224", action="store_true", help="also the 5,216-image split")
    args = parser.parse_args()
    if not SHARED.is_dir():
        print(f"shared data not found at {SHARED}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        dicom = SHARED / "dicom"
        sets = [
            ("kermany-fullres/train", [SHARED / "kermany-fullres" / "train"], "auto"),
            ("dicom (all)", [dicom], _dicom_labels(dicom, Path(tmp))),
        ]
        if args.kermany224:
            sets.append(("kermany224/train", [SHARED / "kermany224" / "train"], "auto"))
        print(
            f"prepare() at {args.image_size} px; {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} CPUs; files/s counts every file seen, skipped ones included\n"
        )
        print("| data | files | kept | skipped | workers | seconds | files/s |")
        print("|---|---:|---:|---|---:|---:|---:|")
        for name, inputs, mode in sets:
            for w in args.workers:
                print(_run(name, inputs, mode, args.image_size, w), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
