"""Training throughput: non-private vs DP-SGD (fedxray's engine) vs plain Opacus (hooks).

For every registered model at its default input size, times full optimisation steps
(forward, backward, clipping, noise, SGD update) on one fixed batch of synthetic
radiograph-sized inputs, and prints a markdown table with the DP / non-private ratios.
Data loading and augmentation are excluded: they cost the same with or without DP.

    .venv/bin/python benchmarks/bench_training.py                 # all models, 1 thread
    .venv/bin/python benchmarks/bench_training.py --models smallcnn --steps 5 --threads 2
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings

import torch
import torch.nn.functional as F

from fedxray.models import MODEL_NAMES, build_model, default_image_size
from fedxray.training.dp_engine import DPEngine, PrivateOptimizer

DEFAULT_BATCH = {"smallcnn": 64, "resnet18": 16}


def _plain_step(model, opt):
    def step(x, y):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def _fedxray_dp_step(model, opt, sigma=1.0, clip=1.0):
    private = PrivateOptimizer(
        opt, DPEngine(model, clip), noise_multiplier=sigma, expected_batch_size=1
    )

    def step(x, y):  # what training does: clip, sum, noise sigma*C, average over the batch
        private.expected_batch_size = x.shape[0]
        private.zero_grad()
        private.backward(lambda: F.cross_entropy(model(x), y, reduction="none"))
        private.step()

    return step


def _opacus_step(model, opt, batch, x, y):
    from opacus import PrivacyEngine

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        private, dp_opt, _ = PrivacyEngine().make_private(
            module=model, optimizer=opt, data_loader=loader, noise_multiplier=1.0,
            max_grad_norm=1.0,
        )  # fmt: skip

    def step(x, y):
        dp_opt.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            F.cross_entropy(private(x), y).backward()
        dp_opt.step()

    return step


def bench(arch: str, size: int, batch: int, steps: int, opacus: bool) -> dict:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, size, size, generator=gen)
    y = torch.randint(0, 3, (batch,), generator=gen)
    variants = {}
    for name in ("plain", "dp", "opacus") if opacus else ("plain", "dp"):
        model = build_model(arch, size, 3, seed=0)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        if name == "plain":
            variants[name] = _plain_step(model, opt)
        elif name == "dp":
            variants[name] = _fedxray_dp_step(model, opt)
        else:
            variants[name] = _opacus_step(model, opt, batch, x, y)
        variants[name](x, y)  # warm-up (allocations, one-time kernel selection)
    best = dict.fromkeys(variants, float("inf"))
    # Interleaved and best-of: the machine is shared, so every variant sees the same
    # disturbances and the minimum is the least disturbed measurement.
    for _ in range(steps):
        for name, step in variants.items():
            t = time.perf_counter()
            step(x, y)
            best[name] = min(best[name], time.perf_counter() - t)
    return {"arch": arch, "size": size, "batch": batch} | {
        name: batch / seconds for name, seconds in best.items()
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODEL_NAMES), choices=MODEL_NAMES)
    ap.add_argument("--batch", type=int, help="batch size (default: per model)")
    ap.add_argument("--size", type=int, help="input size (default: the model's default)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per variant (best-of)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-opacus", action="store_true", help="skip the Opacus reference")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    rows = []
    for arch in args.models:
        size = args.size or default_image_size(arch)
        batch = args.batch or DEFAULT_BATCH.get(arch, 32)
        rows.append(bench(arch, size, batch, args.steps, not args.no_opacus))

    print(f"torch {torch.__version__}, {args.threads} thread(s), {platform.processor() or ''}"
          f" {platform.machine()}, best of {args.steps} steps\n")  # fmt: skip
    print("| model | input | batch | non-private img/s | DP (fedxray) img/s | DP/non-private "
          "| Opacus hooks img/s | Opacus/non-private |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        op = r.get("opacus")
        op_cols = f"{op:.1f} | {op / r['plain']:.2f}" if op else "- | -"
        print(f"| {r['arch']} | {r['size']}x{r['size']} | {r['batch']} | {r['plain']:.1f} | "
              f"{r['dp']:.1f} | {r['dp'] / r['plain']:.2f} | {op_cols} |")  # fmt: skip


if __name__ == "__main__":
    main()
