"""Does a model trained on the square kermany224 copies hold up on the original images?

    .venv/bin/python benchmarks/bench_aspect_shift.py [--seed 0] [--geometry pad] [--keep DIR]

kermany224/train holds the Kermany training images resized to 224 x 224 without keeping their
aspect ratio; kermany-fullres/train holds 120 of the same images at their original size
(width / height 0.93 to 2.2). With the plan's geometry ``pad`` (the default) prep keeps the
aspect ratio and pads, so the same chest comes out with another geometry from each copy;
with ``stretch`` it resizes to the square (docs/data.md, "Pad or stretch, never crop").

The benchmark runs the default DP federation (`fedxray simulate --sites 3 --geometry G`)
on kermany224 without the 120 images' patients (all their images), then evaluates the final
model on
those 120 images three ways, each through `fedxray prep` and `fedxray evaluate`:

* ``square copies``: their kermany224 copies;
* ``originals``: the original files, as a site would export them, in the plan's geometry;
* ``originals squashed``: the originals resized to 224 x 224 without keeping the aspect
  ratio (PIL, outside fedxray): the geometry of the square copies.

It prints one row per set; docs/benchmarks.md quotes the table. About 4 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fedxray.data.labels import kermany_name  # noqa: E402

SHARED = Path(os.environ.get("FEDXRAY_SHARED_DATA", REPO.parent / "shared" / "data"))
SQUARE = SHARED / "kermany224" / "train"
ORIGINALS = SHARED / "kermany-fullres" / "train"
FEDXRAY = [sys.executable, "-m", "fedxray"]
SHOWN = ("accuracy", "macro_roc_auc", "binary_roc_auc", "sensitivity", "specificity", "mcc")


def _patient(path: Path) -> str:
    name = kermany_name(path.name)
    if name is None:
        raise SystemExit(f"not a Kermany file name: {path}")
    return name.patient


def _link_training_set(out: Path, held_out: set[str]) -> int:
    """kermany224/train without the held-out patients, as symbolic links; the image count."""
    count = 0
    for src in sorted(SQUARE.rglob("*.jpeg")):
        if _patient(src) in held_out:
            continue
        dst = out / src.parent.name / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(src)
        count += 1
    return count


def _test_sets(work: Path) -> dict[str, Path]:
    sets = {"square copies": work / "square", "originals": ORIGINALS,
            "originals squashed": work / "squashed"}  # fmt: skip
    for original in sorted(ORIGINALS.rglob("*.jpeg")):
        rel = original.relative_to(ORIGINALS)
        (sets["square copies"] / rel).parent.mkdir(parents=True, exist_ok=True)
        (sets["square copies"] / rel).symlink_to(SQUARE / rel)
        squashed = (sets["originals squashed"] / rel).with_suffix(".png")
        squashed.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(original) as im:
            im.convert("L").resize((224, 224), Image.Resampling.LANCZOS).save(squashed)
    return sets


def _run(*args) -> str:
    p = subprocess.run([*FEDXRAY, *map(str, args)], capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"fedxray {args[0]} failed ({p.returncode}):\n{p.stderr[-2000:]}")
    return p.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--geometry", choices=("pad", "stretch"), default="pad")
    ap.add_argument("--keep", type=Path, help="work here and keep the files (default: a temp dir)")
    args = ap.parse_args()
    if not (SQUARE.is_dir() and ORIGINALS.is_dir()):
        raise SystemExit(f"needs {SQUARE} and {ORIGINALS}")
    with tempfile.TemporaryDirectory(prefix="fedxray-aspect-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        held_out = {_patient(p) for p in ORIGINALS.rglob("*.jpeg")}
        n_train = _link_training_set(work / "train", held_out)
        print(f"training: {n_train} kermany224 images without the {len(held_out)} test patients")
        run = work / "run"
        _run("simulate", "--data", work / "train", "--sites", 3, "--seed", args.seed,
             "--geometry", args.geometry, "-o", run, "-q")  # fmt: skip
        plan = run / "coordinator" / "simulation.plan"
        model = max((run / "coordinator").glob("round-*.model"))
        key = next((run / "sites" / "site-1").glob("*.key"))
        print(f"model: {model.name} of the default DP federation (seed {args.seed}, "
              f"geometry {args.geometry})\n")  # fmt: skip
        print("| test images (120, 120 patients) | " + " | ".join(SHOWN) + " |")
        print("|---|" + "---:|" * len(SHOWN))
        for label, folder in _test_sets(work).items():
            shard = work / f"{label.replace(' ', '-')}.shard"
            _run("prep", folder, "-o", shard, "--plan", plan, "--key", key, "-q")
            doc = json.loads(_run("evaluate", model, shard, "--plan", plan, "--key", key,
                                  "--json", "--bootstrap", 0))  # fmt: skip
            values = [doc["metrics"][name]["value"] for name in SHOWN]
            print(f"| {label} | " + " | ".join(f"{v:.3f}" for v in values) + " |")


if __name__ == "__main__":
    main()
