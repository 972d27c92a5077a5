"""python -m fedxray.sampledata OUTDIR [--seed N] [--force]: (re)generate the sample data."""

from __future__ import annotations

import argparse
import sys

from fedxray.cli.common import hint
from fedxray.errors import FedxrayError
from fedxray.sampledata.sites import generate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fedxray.sampledata",
        description="Write synthetic chest radiograph phantoms (DICOM, PNG, JPEG) with "
        "labels.csv files: hospital-a, hospital-b, hospital-c and test.",
    )
    parser.add_argument("outdir", help="folder to write into (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--force", action="store_true", help="replace existing site folders")
    args = parser.parse_args(argv)
    try:
        written = generate(args.outdir, seed=args.seed, force=args.force)
    except FedxrayError as e:
        print(f"error: {e.message}", file=sys.stderr)
        if hint(e):
            print(f"hint: {hint(e)}", file=sys.stderr)
        return e.exit_code
    for name, paths in written.items():
        print(f"{args.outdir}/{name}: {len(paths)} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
