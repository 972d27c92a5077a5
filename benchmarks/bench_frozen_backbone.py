"""Cost of a frozen pretrained backbone: features per second on this machine's CPU.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_frozen_backbone.py   # ~1 min

The frozen front end (fedxray.models.backbone) runs once per image and shard (its features
are cached), so its cost is one forward pass per image. Measured per input size: images per
second through the ResNet-18 / DenseNet-121 front end (randomly initialised: speed does not
depend on the weights), and as a reference in the same process, one forward pass of the
default smallcnn at the same size. Batches of --batch images, one thread by default.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from fedxray.models.backbone import FrozenBackbone  # noqa: E402
from fedxray.models.pretrained import expected_layout  # noqa: E402
from fedxray.models.registry import build_model  # noqa: E402


def per_second(fn, x: torch.Tensor, min_seconds: float) -> float:
    """Images per second of ``fn`` on batch ``x`` (after one warm-up call)."""
    fn(x)
    n, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < min_seconds or n == 0:
        fn(x)
        n += len(x)
    return n / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="64,128,224")
    ap.add_argument("--backbones", default="resnet18")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for name in args.backbones.split(","):
        front = FrozenBackbone(name, None).eval()
        params = sum(torch.Size(s).numel() for s in expected_layout(name).values())
        for size in map(int, args.sizes.split(",")):
            x = torch.rand(args.batch, 1, size, size)
            fps = per_second(front, x, args.seconds)
            ref = build_model("smallcnn", max(size, 8), 3, seed=0).eval()
            with torch.no_grad():
                ref_fps = per_second(ref, (x - 0.5) / 0.25, args.seconds)
            row = {"backbone": name, "parameters": params, "image_size": size}
            row["features_per_s"] = round(fps, 1)
            row["smallcnn_forward_per_s"] = round(ref_fps, 1)
            row["ratio_to_smallcnn"] = round(fps / ref_fps, 3)
            rows.append(row)
            print(json.dumps(rows[-1]), flush=True)
    machine = platform.processor() or platform.machine()
    print(json.dumps({"machine": machine, "threads": args.threads, "batch": args.batch}))


if __name__ == "__main__":
    main()
