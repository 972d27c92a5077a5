"""What issue 12's privacy bookkeeping costs: noise from a seeded numpy stream, the per-epoch
hashes, checkpoint and ledger writes, and the noise calibration.

    .venv/bin/python benchmarks/bench_privacy_bookkeeping.py

One thread. Prints a markdown table on stdout, each row with its reference in this process:

* noise: one step's Gaussian noise for every parameter, drawn as training draws it now
  (numpy PCG64DXSM, float32, on the CPU) against torch.randn with a seeded CPU generator
  (what training drew before);
* per epoch: hashing the training state (weights and momentum), writing the checkpoint and
  two ledger saves (started, done), against one DP optimisation step of the same model;
* calibration: the noise multiplier within 0.1% of the budget, now (false position on
  log-epsilon) against plain bisection to the same tolerance; accountant evaluations and time.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from fedxray.models import build_model  # noqa: E402
from fedxray.training import accounting, checkpoint  # noqa: E402
from fedxray.training.dp_engine import DPEngine, NoiseGenerator, PrivateOptimizer  # noqa: E402
from fedxray.training.ledger import Ledger  # noqa: E402

SIZES = {"smallcnn": (64, 32), "resnet18": (224, 8)}


def best(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def noise_row(model) -> str:
    shapes = [p.shape for p in model.parameters()]
    ours = NoiseGenerator(np.random.SeedSequence(1))
    torch_gen = torch.Generator().manual_seed(1)
    t_ours = best(lambda: [ours.normal(s, torch.float32, "cpu") for s in shapes])
    t_ref = best(lambda: [torch.randn(s, generator=torch_gen) for s in shapes])
    return f"{t_ours * 1e3:.1f} ms | torch.randn {t_ref * 1e3:.1f} ms | {t_ours / t_ref:.2f}"


def epoch_row(arch: str, model, folder: Path) -> str:
    size, batch = SIZES[arch]
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    private = PrivateOptimizer(opt, DPEngine(model, 1.0), noise_multiplier=1.0,
                               expected_batch_size=batch)  # fmt: skip
    x, y = torch.rand(batch, 1, size, size), torch.randint(0, 3, (batch,))

    def step():
        private.zero_grad()
        private.backward(lambda: F.cross_entropy(model(x), y, reduction="none"))
        private.step()

    step()  # momentum buffers exist from here on, as in training
    t_step = best(step, 2)
    ledger = Ledger.load(folder / f"{arch}.ledger", "bench")
    ledger.calibrate(noise_multiplier=1.0, delta=1e-5, unit="patient", sample_rate=0.1,
                     total_steps=100)  # fmt: skip
    resume = checkpoint.Resume(folder, "bench", 1, {"federation_id": "bench"})

    def bookkeeping():
        tensors = checkpoint.training_tensors(model, opt)
        digest = checkpoint.tensors_hash(tensors)
        entry = ledger.record_epoch(round_number=1, epoch=1, steps=10, noise_multiplier=1.0,
                                    sample_rate=0.1, seed="0" * 64, inputs={})  # fmt: skip
        ledger.save()
        resume.save(1, [0.0], tensors, [entry["id"]])
        ledger.mark_done(entry, digest)
        ledger.save()

    t_book = best(bookkeeping)
    return f"{t_book:.3f} s | one DP step (batch {batch}, {size} px) {t_step:.3f} s | " + (
        f"{t_book / t_step:.2f}"
    )


def bisection(target, delta, q, steps):
    """Plain bisection until epsilon is within 0.1% from below (the former method, with
    the new stopping rule); the number of distinct noise multipliers evaluated."""
    evals = []

    def eps_at(s):
        evals.append(s)
        return accounting.epsilon([(s, q, steps)], delta)

    lo, hi = 0.0, 1.0
    while eps_at(hi) > target:
        lo, hi = hi, hi * 2
    while eps_at(hi) <= target * (1 - 1e-3):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if eps_at(mid) > target else (lo, mid)
    return len(set(evals))


def calibration_rows() -> list[str]:
    rows = []
    for target, q, steps in [(8.0, 0.4, 18), (4.0, 0.43, 18), (6.0, 0.032, 1560)]:
        accounting._rdp_per_step.cache_clear()
        t0 = time.perf_counter()
        accounting.calibrate_noise(target, 1e-5, q, steps)
        t_now, n_now = time.perf_counter() - t0, accounting._rdp_per_step.cache_info().misses
        accounting._rdp_per_step.cache_clear()
        t0 = time.perf_counter()
        n_ref = bisection(target, 1e-5, q, steps)
        t_ref = time.perf_counter() - t0
        rows.append(
            f"| calibration eps {target:g}, q {q:g}, {steps} steps | {n_now} evaluations, "
            f"{t_now:.2f} s | bisection {n_ref} evaluations, {t_ref:.2f} s | "
            f"{t_now / t_ref:.2f} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(SIZES))
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| what | fedxray | reference | ratio |\n|---|---|---|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.models:
            model = build_model(arch, SIZES[arch][0], 3, seed=0)
            n = sum(p.numel() for p in model.parameters())
            print(f"| {arch} ({n:,} parameters): noise of one step | {noise_row(model)} |")
            print(f"| {arch}: bookkeeping per epoch | {epoch_row(arch, model, Path(tmp))} |")
    for row in calibration_rows():
        print(row)


if __name__ == "__main__":
    main()
