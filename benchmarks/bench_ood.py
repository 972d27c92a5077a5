"""predict's out-of-distribution flag on real images, phantoms, noise and junk: counts.

    .venv/bin/python benchmarks/bench_ood.py [--model M --plan P] [--skip-kermany224]

Without --model, it first runs `fedxray simulate` on the bundled sample data (the default
DP federation, about two minutes) and uses its final model. Every file goes through
fedxray.steps.predict.predict_files, exactly as `fedxray predict` does. For each set: how
many images were flagged, by which reason (failed plausibility checks, low-confidence),
and the confidence quantiles. docs/data.md quotes the table.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fedxray.evaluation.confidence import MIN_CONFIDENCE  # noqa: E402
from fedxray.imaging.sniff import read_head, sniff  # noqa: E402
from fedxray.steps.model import load_model  # noqa: E402
from fedxray.steps.predict import predict_files  # noqa: E402
from tests.junk import write_junk  # noqa: E402

SHARED = Path(os.environ.get("FEDXRAY_SHARED_DATA", REPO.parent / "shared" / "data"))


def _images(root: Path) -> list[Path]:
    return [p for p in sorted(root.rglob("*")) if p.is_file() and sniff(read_head(p))]


def _noise(folder: Path, n: int = 100) -> list[Path]:
    """White noise PNGs of radiograph-like sizes (uniform and Gaussian, 8 bit)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        shape = (int(rng.integers(200, 600)), int(rng.integers(200, 600)))
        a = rng.integers(0, 256, shape) if i % 2 else rng.normal(128, 40, shape)
        out.append(folder / f"noise{i:03d}.png")
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(out[-1])
    return out


def _simulated_model(work: Path) -> tuple[Path, Path]:
    run = work / "sim"
    cmd = [sys.executable, "-m", "fedxray", "simulate", "-o", str(run), "--bootstrap", "0", "-q"]
    subprocess.run(cmd, check=True)
    inbox = run / "evaluation" / "inbox"
    return max(inbox.glob("round-*.model")), inbox / "simulation.plan"


def _row(name: str, preds) -> str:
    preds = [p for p in preds if p.ok]
    conf = np.array([p.confidence for p in preds])
    reasons = Counter(r for p in preds for r in p.ood_reasons)
    flagged = sum(bool(p.ood) for p in preds)
    q = " / ".join(f"{x:.3f}" for x in np.quantile(conf, [0.0, 0.01, 0.5]))
    why = ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())) or "-"
    return f"| {name} | {len(preds)} | {flagged} | {why} | {q} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path)
    ap.add_argument("--plan", type=Path)
    ap.add_argument("--skip-kermany224", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_path, plan_path = (args.model, args.plan) if args.model else _simulated_model(work)
        model = load_model(model_path, plan_path)
        write_junk(work / "junk")
        sets = {
            "sample_data/test (phantoms)": _images(REPO / "sample_data" / "test"),
            "kermany224/train": []
            if args.skip_kermany224
            else _images(SHARED / "kermany224" / "train"),
            "kermany-fullres/train": _images(SHARED / "kermany-fullres" / "train"),
            "dicom/chest": _images(SHARED / "dicom" / "chest"),
            "white noise (100)": _noise(work / "noise"),
            "junk of tests/junk.py": _images(work / "junk"),
        }
        print(f"model {model_path.name} ({model.plan.settings.model.arch}, "
              f"{model.image_size} px), threshold {MIN_CONFIDENCE}\n")  # fmt: skip
        print("| images | n | flagged | reasons | confidence min / 1% / median |")
        print("|---|---:|---:|---|---|")
        for name, files in sets.items():
            if files:
                print(_row(name, predict_files(model, files)), flush=True)


if __name__ == "__main__":
    main()
