"""Plausibility checks on every real image and on junk: counts and margins, as markdown.

    .venv/bin/python benchmarks/bench_plausibility.py [--image-size 64] [--skip-kermany224]

Real data (../shared/data): kermany224/train, kermany-fullres/train, dicom/chest and
dicom/other_cr_not_chest; the sample-data phantoms; and the junk of tests/junk.py. Every
file goes through fedxray.imaging.load_radiograph, the path prep and predict share. The
margins compare the worst real (or phantom) image with each threshold; docs/data.md quotes
them. "ms/file" is the whole of load_radiograph (decode, checks, resize); "of which checks"
times assess() alone on up to 200 files per set, in the same process.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fedxray.imaging import ImageFacts, SkipImage, load_radiograph  # noqa: E402
from fedxray.imaging import plausibility as P  # noqa: E402
from fedxray.imaging.dicom import read_dicom  # noqa: E402
from fedxray.imaging.raster import read_raster  # noqa: E402
from fedxray.imaging.sniff import read_head, sniff  # noqa: E402
from tests.junk import write_junk  # noqa: E402

SHARED = Path(os.environ.get("FEDXRAY_SHARED_DATA", REPO.parent / "shared" / "data"))


def _images(root: Path) -> list[Path]:
    return [p for p in sorted(root.rglob("*")) if p.is_file() and sniff(read_head(p))]


def _assess(files: list[Path], size: int):
    """(verdicts by path, skip messages by path, seconds per file)."""
    verdicts, skipped = {}, {}
    started = time.perf_counter()
    for p in files:
        try:
            verdicts[p] = load_radiograph(p, size).plausibility
        except SkipImage as e:
            skipped[p] = f"{e.reason}: {e.message}"
    return verdicts, skipped, (time.perf_counter() - started) / max(1, len(files))


def _check_cost(files: list[Path], size: int, sample: int = 200) -> float:
    """Seconds per file of assess() alone, on decoded values (the checks' own cost)."""
    spent, n = 0.0, 0
    for p in files[:: max(1, len(files) // sample)]:
        try:
            if sniff(read_head(p)) == "dicom":
                d = read_dicom(p)
                values, facts = d.values, ImageFacts(d.rows, d.cols, photometric=d.photometric)
            else:
                r = read_raster(p, sniff(read_head(p)), size)
                values, facts = r.values, ImageFacts(r.rows, r.cols, colour_share=r.colour_share)
        except SkipImage:
            continue
        started = time.perf_counter()
        P.assess(values, facts)
        spent += time.perf_counter() - started
        n += 1
    return spent / max(1, n)


def _fmt(x) -> str:
    return "-" if x is None else (f"{x:.4f}" if isinstance(x, float) else str(x))


def _real_row(name: str, files, verdicts, skipped, per_file, checks) -> tuple[str, list]:
    failed = Counter(",".join(f.check for f in v.failures) for v in verdicts.values() if not v.ok)
    good = list(verdicts.values())
    details = [v.detail_share for v in good if v.detail_share is not None]
    worst = [
        min(v.short_side for v in good),
        min(v.grey_levels for v in good),
        min(details),
        max(details),
        max(v.colour_share for v in good),
    ]
    row = (
        f"| {name} | {len(files)} | {sum(v.ok for v in good)} | "
        f"{', '.join(f'{n} {c}' for c, n in failed.items()) or '-'} | {len(skipped) or '-'} | "
        + " | ".join(_fmt(w) for w in worst)
        + f" | {per_file * 1000:.1f} | {checks * 1000:.1f} |"
    )
    return row, worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--skip-kermany224", action="store_true")
    args = parser.parse_args()
    sets = [("sample_data phantoms", REPO / "sample_data")]
    if SHARED.is_dir():
        if not args.skip_kermany224:
            sets.insert(0, ("kermany224/train", SHARED / "kermany224" / "train"))
        sets[-1:-1] = [
            ("kermany-fullres/train", SHARED / "kermany-fullres" / "train"),
            ("dicom/chest", SHARED / "dicom" / "chest"),
            ("dicom/other_cr_not_chest", SHARED / "dicom" / "other_cr_not_chest"),
        ]
    else:
        print(f"(shared data not found at {SHARED}: phantoms and junk only)\n")
    print(f"load_radiograph(path, {args.image_size}) and its plausibility verdict\n")
    print(
        "| data | files | pass | fail | not decoded | min short side | min grey levels | "
        "min detail | max detail | max colour share | ms/file | of which checks |"
    )
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    worst_all = []
    notes = []
    for name, root in sets:
        files = _images(root)
        verdicts, skipped, per_file = _assess(files, args.image_size)
        checks = _check_cost(files, args.image_size)
        row, worst = _real_row(name, files, verdicts, skipped, per_file, checks)
        print(row, flush=True)
        worst_all.append(worst)
        notes += [f"{name}: {p.name} not decoded: {m}" for p, m in skipped.items()]
        notes += [f"{name}: {p.name} FAILED: {v.message}" for p, v in verdicts.items() if not v.ok]
    lows = [min(w[i] for w in worst_all) for i in (0, 1, 2)]
    high_detail = max(w[3] for w in worst_all)
    high_colour = max(w[4] for w in worst_all)
    print(
        f"\nworst over all of them vs thresholds: short side {lows[0]} (>= {P.MIN_SHORT_SIDE}), "
        f"grey levels {lows[1]} (>= {P.MIN_GREY_LEVELS}), detail {lows[2]:.4f} .. "
        f"{high_detail:.4f} (within {P.MIN_DETAIL_SHARE} .. {P.MAX_DETAIL_SHARE}), "
        f"colour share {high_colour:.4f} (<= {P.MAX_COLOUR_SHARE})"
    )
    for n in notes:
        print(f"- {n}")

    with tempfile.TemporaryDirectory() as tmp:
        expect = write_junk(Path(tmp))
        verdicts, skipped, _ = _assess(sorted(Path(tmp).iterdir()), args.image_size)
    print("\n| junk | check expected | refused by | statistic |")
    print("|---|---|---|---|")
    refused = 0
    closest: dict[str, float] = {}
    for p, v in verdicts.items():
        checks = [f.check for f in v.failures]
        refused += expect[p.name] in checks
        stat = {"blank": v.grey_levels, "size": v.short_side}.get(expect[p.name], v.detail_share)
        if expect[p.name] == "greyscale":
            stat = v.colour_share
        print(f"| {p.name} | {expect[p.name]} | {', '.join(checks) or 'PASSED'} | {_fmt(stat)} |")
        if expect[p.name] in ("noise", "smooth", "blank") and stat is not None:
            key = expect[p.name]
            pick = min if key == "noise" else max
            closest[key] = pick(closest.get(key, stat), stat)
    for p, m in skipped.items():
        print(f"| {p.name} | {expect[p.name]} | not decoded: {m} | - |")
    print(f"\njunk refused for the expected reason: {refused} of {len(expect)}")
    print(
        f"closest junk to a threshold: noise detail >= {_fmt(closest.get('noise'))}, "
        f"gradient detail <= {_fmt(closest.get('smooth'))}, "
        f"nearly blank grey levels <= {_fmt(closest.get('blank'))}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
