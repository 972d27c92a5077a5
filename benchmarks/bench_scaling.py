"""How the coordinator scales with the number of sites, and train-local at 1 vs 2 threads
and 1 vs 2 processes (--nproc: torch.distributed, gloo).

    # full (ResNet-18, 10/50/100 sites, 50 with 10% dropped; ~9 GB of masked files, ~10 min)
    nice -n 10 .venv/bin/python benchmarks/bench_scaling.py --json scaling.json
    # quick look (~2 min): a tiny model, the same site counts
    nice -n 10 .venv/bin/python benchmarks/bench_scaling.py --arch tinycnn --no-train
    # train-local only: smallcnn (init's default) at 1 and 2 torch threads
    nice -n 10 .venv/bin/python benchmarks/bench_scaling.py --sites '' --train-reps 3
    # train-local in 1 and 2 processes (1 thread each)
    nice -n 10 .venv/bin/python benchmarks/bench_scaling.py --sites '' --train-configs 1x1,1x2

Everything goes through the `fedxray` command line, as a coordinator and its sites run it:

* keygen, init (one federation per site count; the plan names every site), then per site a
  signed update of the plan's layout (random deltas, built with fedxray.artifact: training
  100 ResNet-18 sites is not the point) and ``fedxray mask``;
* the coordinator's ``fedxray aggregate`` and ``fedxray unmask``, each in a fresh process (as
  it really runs them), measured for wall time, peak resident memory (ru_maxrss), bytes read
  (rchar: read system calls; read_bytes: from the disk, the rest came from the page cache)
  and CPU time; the next model is checked against the known mean of the updates;
* dropouts: at one site count a share of the sites never deliver; the coordinator aggregates
  the others (a closure), each survivor runs ``fedxray reveal``, ``fedxray unmask`` removes
  survivors x dropped pair masks. It runs as a second coordinator (a copy of the key in its
  own folder, so its own round state): the benchmark's only liberty with the protocol.

Site-side commands (mask, reveal) run once cold (a fresh ``fedxray`` process: what a site
pays, import of torch included) for the first ``--cold`` sites, and for the other sites one
after another inside one process that calls the ``fedxray`` entry point with each command
line (warm: the same code path without the fixed start-up cost, which at ResNet-18 is most
of a cold mask and would otherwise add some 20 minutes to the setup of 160 sites). The pair
cost per peer is the slope of the warm mask time over the number of peers.

1 thread for numpy/torch everywhere except the train-local part, which compares 1 and 2.
Machine load (1/5/15-minute load averages) is recorded next to every timing.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MB = 1e6
IMAGE_SIZE = {"resnet18": 224, "smallcnn": 64, "tinycnn": 32}
DELTA_SEED = 20261130  # every site's update is this one random delta (the mean is known)

# Runs one `fedxray` command line in this (fresh) process, exactly as the console script does,
# and at exit writes what the kernel counted for the process to $FEDXRAY_BENCH_STATS.
_MEASURED = r"""
import atexit, json, os, resource, sys
def _stats():
    io = {}
    with open("/proc/self/io") as f:
        for line in f:
            k, v = line.split(":")
            io[k] = int(v)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # --nproc's processes
    with open(os.environ["FEDXRAY_BENCH_STATS"], "w") as f:
        json.dump({"maxrss": max(ru.ru_maxrss, kids.ru_maxrss) * 1024,
                   "cpu": ru.ru_utime + ru.ru_stime + kids.ru_utime + kids.ru_stime,
                   "rchar": io["rchar"], "read_bytes": io["read_bytes"],
                   "wchar": io["wchar"]}, f)
atexit.register(_stats)
from importlib.metadata import entry_points
(main,) = [e.load() for e in entry_points(group="console_scripts", name="fedxray")]
sys.argv[0] = "fedxray"
sys.exit(main())
"""


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def cold(args: list, env: dict | None = None) -> dict:
    """Run ``fedxray ARGS`` in a fresh process; wall time, kernel counters, stdout."""
    with tempfile.TemporaryDirectory(prefix="bench-stats-") as d:
        stats = Path(d) / "stats.json"
        e = {**os.environ, **(env or {}), "FEDXRAY_BENCH_STATS": str(stats)}
        load = _load()
        t = time.perf_counter()
        p = subprocess.run(
            [sys.executable, "-c", _MEASURED, *map(str, args)],
            env=e,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - t
        if p.returncode != 0:
            sys.exit(f"fedxray {' '.join(map(str, args[:2]))} ... failed: {p.stderr.strip()}")
        out = json.loads(stats.read_text())
    return {"wall": wall, "load": load, "stdout": p.stdout, **out}


_BASELINE = r"""
import json, os, resource, sys, time
t = time.perf_counter()
from fedxray.models.registry import state_layout
state_layout(sys.argv[1], int(sys.argv[2]), 3)
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"maxrss": ru.ru_maxrss * 1024, "seconds": time.perf_counter() - t}))
"""


def baseline(arch: str) -> dict:
    """What every coordinator command pays before its work: import torch, the model's layout."""
    load = _load()
    out = subprocess.run(
        [sys.executable, "-c", _BASELINE, arch, str(IMAGE_SIZE[arch])],
        check=True,
        capture_output=True,
        text=True,
    )
    return {**json.loads(out.stdout), "load": load}


# --- site side: signed updates and warm command lines -------------------------------------------


class UpdateMaker:
    """Signed updates for the round-1 model: every site sends the same random delta."""

    def __init__(self, model_path: Path):
        from fedxray.artifact import parse_unverified

        model, _ = parse_unverified(model_path.read_bytes())
        self.federation, self.parent = model.header.federation, model.digest
        self.delta = reference_delta(model.tensors)

    def write(self, key_path: Path, out: Path, examples: int) -> None:
        from fedxray.artifact import build_artifact
        from fedxray.keys import load_private_key

        key = load_private_key(key_path)
        meta = {
            "num_examples": examples,
            "num_patients": examples,
            "epsilon": 1.0,
            "delta": 1e-5,
            "dp": True,
            "unit": "patient",
        }
        data = build_artifact(
            "update",
            federation=self.federation,
            round=1,
            sender=key.name,
            parent=self.parent,
            meta=meta,
            tensors=self.delta,
            signer=key,
        )
        out.write_bytes(data)


def reference_delta(model_tensors: dict) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(DELTA_SEED)
    return {
        name: rng.normal(0.0, 0.01, t.shape).astype(np.float32)
        for name, t in sorted(model_tensors.items())
    }


def _batch_child(jobs_path: Path, out_path: Path) -> None:
    """Run many `fedxray` command lines in this one process (entry point called per line)."""
    from importlib.metadata import entry_points

    (main,) = [e.load() for e in entry_points(group="console_scripts", name="fedxray")]
    jobs = json.loads(jobs_path.read_text())
    makers: dict[str, UpdateMaker] = {}
    seconds = []
    for job in jobs:
        if "update" in job:  # (model, key, out, examples): made before the command, not timed
            model, key, out, examples = job["update"]
            maker = makers.get(model) or makers.setdefault(model, UpdateMaker(Path(model)))
            maker.write(Path(key), Path(out), examples)
        t = time.perf_counter()
        try:
            main(job["argv"])
            code = 0
        except SystemExit as e:
            code = e.code or 0
        seconds.append(time.perf_counter() - t)
        if code != 0:
            sys.exit(f"fedxray {' '.join(job['argv'][:2])} ... exited with {code}")
        if job.get("remove"):
            Path(job["remove"]).unlink()
    out_path.write_text(json.dumps(seconds))


def warm(jobs: list[dict]) -> tuple[list[float], str]:
    """Seconds of each job's command, run one after another in one fresh process."""
    if not jobs:
        return [], _load()
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as d:
        jobs_path, out_path = Path(d) / "jobs.json", Path(d) / "out.json"
        jobs_path.write_text(json.dumps(jobs))
        load = _load()
        subprocess.run(
            [sys.executable, __file__, "--batch-child", str(jobs_path), str(out_path)],
            check=True,
        )
        return json.loads(out_path.read_text()), load


# --- one federation -------------------------------------------------------------------------------


def make_keys(folder: Path, n: int) -> list[str]:
    names = [f"site{i:03d}" for i in range(n)]
    folder.mkdir(parents=True, exist_ok=True)
    todo = [{"argv": ["keygen", s, "-o", str(folder), "-q"]} for s in names]
    warm([j for j, s in zip(todo, names, strict=True) if not (folder / f"{s}.key").exists()])
    return names


def check_model(before: Path, after: Path) -> float:
    """Largest |(after - before) - delta|; exits unless the masks cancelled to the delta."""
    from fedxray.artifact import parse_unverified

    old, _ = parse_unverified(before.read_bytes())
    new, _ = parse_unverified(after.read_bytes())
    delta = reference_delta(old.tensors)
    err = max(float(np.max(np.abs(new.tensors[k] - old.tensors[k] - d))) for k, d in delta.items())
    if not err < 1e-5:  # fixed point and float32 rounding stay near 1e-7
        sys.exit(f"{after}: the unmasked mean is off by {err:g}: the masks did not cancel")
    return err


def federation(root: Path, keys: Path, names: list[str], n: int, args) -> dict:
    """init, n masks, aggregate, unmask; with dropouts when n == args.dropout_sites."""
    fed = root / f"n{n:03d}"
    coord, inbox, work = fed / "coord", fed / "inbox", fed / "site-work"
    for d in (inbox, work):
        d.mkdir(parents=True)
    sites = names[:n]
    cards = [keys / f"{s}.pub" for s in sites]
    size = IMAGE_SIZE[args.arch]
    init = ["init", *cards, "--name", f"scale{n}", "-o", coord, "--model", args.arch]
    cold([*init, "--image-size", size, "--seed", 0, "-q"])
    plan, model = coord / f"scale{n}.plan", coord / "round-0001.model"
    common = ["--plan", str(plan)]

    def mask_job(i: int, s: str) -> dict:
        upd, out = work / f"{s}-round-0001.update", inbox / f"{s}.masked"
        argv = ["mask", str(upd), "-o", str(out), *common, "--key", str(keys / f"{s}.key"), "-q"]
        return {
            "update": [str(model), str(keys / f"{s}.key"), str(upd), 500 + 7 * i],
            "argv": argv,
            "remove": str(upd),
        }

    jobs = [mask_job(i, s) for i, s in enumerate(sites)]
    k = min(args.cold, n)
    maker = UpdateMaker(model) if k else None
    mask_cold = []
    for job in jobs[:k]:
        maker.write(*map(Path, job["update"][1:3]), job["update"][3])
        mask_cold.append(cold(job["argv"]))
        Path(job["remove"]).unlink()
    mask_warm, mask_load = warm(jobs[k:])
    files = sorted(inbox.glob("*.masked"))
    in_bytes = sum(f.stat().st_size for f in files)

    key = ["--key", str(coord / "coordinator.key")]
    agg = cold(["aggregate", *files, *common, *key, "-o", coord / "round-0001.sum", "-q"])
    unm = cold(["unmask", coord / "round-0001.sum", *common, *key, "-q"])
    err = check_model(model, coord / "round-0002.model")
    result = {
        "sites": n,
        "pairs_per_site": n - 1,
        "masked_bytes": in_bytes,
        "one_masked": files[0].stat().st_size,
        "mask_cold": mask_cold,
        "mask_warm": mask_warm,
        "mask_warm_load": mask_load,
        "aggregate": agg,
        "unmask": unm,
        "max_error": err,
    }
    if n == args.dropout_sites:
        result["dropout"] = dropouts(fed, keys, sites, common, args)
    if not args.keep:
        shutil.rmtree(fed)
    return result


def dropouts(fed: Path, keys: Path, sites: list[str], common: list[str], args) -> dict:
    """A second coordinator aggregates the round without every round(1/frac)-th site."""
    every = max(1, round(1 / args.dropout_frac))
    dropped = [s for i, s in enumerate(sites) if (i + 1) % every == 0]
    survivors = [s for s in sites if s not in dropped]
    coord = fed / "coord-dropout"
    coord.mkdir()
    shutil.copy2(fed / "coord" / "coordinator.key", coord / "coordinator.key")  # keeps 0600
    shutil.copy2(fed / "coord" / "round-0001.model", coord / "round-0001.model")
    key = ["--key", str(coord / "coordinator.key")]
    files = [fed / "inbox" / f"{s}.masked" for s in survivors]
    total, closure = coord / "round-0001.sum", coord / "round-0001.closure"
    agg = cold(["aggregate", *files, *common, *key, "-o", total, "--closure", closure, "-q"])
    reveals = fed / "reveals"
    reveals.mkdir()

    def reveal_argv(s: str) -> list[str]:
        site = ["--key", str(keys / f"{s}.key"), "-o", str(reveals / f"{s}.reveal"), "-q"]
        return ["reveal", str(closure), *common, *site]

    k = min(args.cold, len(survivors))
    rev_cold = [cold(reveal_argv(s)) for s in survivors[:k]]
    rev_warm, rev_load = warm([{"argv": reveal_argv(s)} for s in survivors[k:]])
    rev_files = sorted(reveals.glob("*.reveal"))
    unm = cold(["unmask", total, *rev_files, *common, *key, "-q"])
    err = check_model(coord / "round-0001.model", coord / "round-0002.model")
    return {
        "survivors": len(survivors),
        "dropped": len(dropped),
        "masked_bytes": sum(f.stat().st_size for f in files),
        "aggregate": agg,
        "closure_bytes": closure.stat().st_size,
        "reveal_cold": rev_cold,
        "reveal_warm": rev_warm,
        "reveal_warm_load": rev_load,
        "reveal_bytes": statistics.median(f.stat().st_size for f in rev_files),
        "unmask": unm,
        "removal_streams": len(survivors) * len(dropped),
        "max_error": err,
    }


# --- train-local at 1 and 2 threads ------------------------------------------------------------


def train_threads(root: Path, keys: Path, names: list[str], args) -> list[dict]:
    """Cold `fedxray train-local` on sample_data/hospital-a, alternating the configurations
    (torch threads x processes)."""
    arch = args.train_arch
    coord = root / "train-coord"
    init = ["init", *[keys / f"{s}.pub" for s in names[:3]], "--name", "threads", "-o", coord]
    opts = [
        "--model",
        arch,
        "--image-size",
        IMAGE_SIZE[arch],
        "--local-epochs",
        args.train_epochs,
        "--batch-size",
        args.train_batch,
    ]
    cold([*init, *opts, "--rounds", 1, "--seed", 0, "-q"])
    plan, key = coord / "threads.plan", keys / f"{names[0]}.key"
    shard = root / "hospital-a.shard"
    src = REPO / "sample_data" / "hospital-a"
    cold(["prep", src, "--plan", plan, "--key", key, "-o", shard, "-q"])
    runs = []
    for rep in range(args.train_reps):
        for threads, nproc in args.train_configs:
            tag = f"t{threads}p{nproc}-r{rep}"
            env = {
                v: str(threads)
                for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
            }
            ledger = root / f"{tag}.ledger"
            r = cold(
                [
                    "train-local",
                    coord / "round-0001.model",
                    "--data",
                    shard,
                    "--plan",
                    plan,
                    "--key",
                    key,
                    "--ledger",
                    ledger,
                    "--new-ledger",  # a fresh ledger per run, knowingly
                    "-o",
                    root / f"{tag}.update",
                    "--seed",
                    0,
                    "--json",
                    "--nproc",
                    nproc,
                ],
                env=env,
            )
            summary = json.loads(r["stdout"])
            ledger_doc = json.loads(cold(["privacy", ledger, "--plan", plan, "--json"])["stdout"])
            runs.append(
                {
                    "threads": threads,
                    "nproc": nproc,
                    "rep": rep,
                    **r,
                    "summary": summary,
                    "steps": _ledger_steps(ledger_doc),
                }
            )
    return runs


def _ledger_steps(doc: dict) -> int:
    """Total DP steps recorded in a `fedxray privacy --json` document."""
    total = 0
    for fed in doc.get("federations", []):
        for r in fed.get("rounds", []):
            total += int(r.get("steps", 0))
    return total


# --- report ------------------------------------------------------------------------------------


def _stats(xs: list[float]) -> str:
    if not xs:
        return "-"
    return f"{statistics.median(xs):.3f} ({min(xs):.3f}-{max(xs):.3f})"


def steady(xs: list[float]) -> list[float]:
    """Warm timings without the first, which also paid the batch process's imports."""
    return xs[1:] if len(xs) > 1 else xs


def _mb(n: float) -> str:
    return f"{n / MB:,.1f}" if n < 10 * MB else f"{n / MB:,.0f}"


def report(results: list[dict], base: dict | None, train: list[dict], args) -> None:
    if results:
        report_coordinator(results, base, args)
        report_masks(results)
        for r in results:
            if "dropout" in r:
                report_dropout(r, r["dropout"])
    if train:
        report_train(train, args)


def report_coordinator(results: list[dict], base: dict, args) -> None:
    one = results[0]["one_masked"]
    print(f"### Coordinator: {args.arch}, one masked update {_mb(one)} MB, 1 thread\n")
    print(
        f"Process baseline (fresh interpreter: import torch, the model's layout): "
        f"{base['seconds']:.2f} s, {_mb(base['maxrss'])} MB peak RSS (load {base['load']}).\n"
    )
    print(
        "| sites | masked input MB | aggregate wall s | GB/s | sites/s | CPU s | peak RSS MB "
        "| (RSS - baseline) / masked file | rchar MB | read from disk MB | unmask wall s "
        "| unmask peak RSS MB | max error | load 1/5/15 |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in results:
        a, u = r["aggregate"], r["unmask"]
        print(
            f"| {r['sites']} | {_mb(r['masked_bytes'])} | {a['wall']:.2f} "
            f"| {r['masked_bytes'] / a['wall'] / 1e9:.2f} | {r['sites'] / a['wall']:.1f} "
            f"| {a['cpu']:.2f} | {_mb(a['maxrss'])} | {(a['maxrss'] - base['maxrss']) / one:.2f} "
            f"| {_mb(a['rchar'])} | {_mb(a['read_bytes'])} | {u['wall']:.2f} "
            f"| {_mb(u['maxrss'])} | {r['max_error']:.1e} | {a['load']} |"
        )


def report_masks(results: list[dict]) -> None:
    print("\n### Site: mask time per site against the number of peers\n")
    print(
        "| sites | peers (pair masks) | warm mask s, median (min-max) | cold mask s "
        "(fresh process) | cold mask peak RSS MB | load 1/5/15 (warm) |"
    )
    print("|---:|---:|---:|---:|---:|---|")
    xs, ys = [], []
    for r in results:
        w, c = steady(r["mask_warm"]), r["mask_cold"]
        cold_s = ", ".join(f"{m['wall']:.2f}" for m in c) or "-"
        rss = ", ".join(_mb(m["maxrss"]) for m in c) or "-"
        print(
            f"| {r['sites']} | {r['sites'] - 1} | {_stats(w)} | {cold_s} | {rss} "
            f"| {r['mask_warm_load']} |"
        )
        if w:
            xs.append(r["sites"] - 1)
            ys.append(statistics.median(w))
    if len(set(xs)) >= 2:
        slope, intercept = np.polyfit(xs, ys, 1)
        words = results[0]["one_masked"] / 8
        print(
            f"\nWarm mask time = {intercept:.3f} s + {slope * 1e3:.2f} ms x peers (least "
            f"squares over the medians): {slope / words * 1e9:.2f} ns per word per peer."
        )


def report_dropout(full: dict, d: dict) -> None:
    a, u = d["aggregate"], d["unmask"]
    extra = u["wall"] - full["unmask"]["wall"]
    streams = d["removal_streams"]
    print(
        f"\n### Dropouts: {full['sites']} sites, {d['dropped']} dropped, "
        f"{d['survivors']} survivors\n"
    )
    print("| step | wall s | peak RSS MB | notes | load 1/5/15 |")
    print("|---|---:|---:|---|---|")
    print(
        f"| aggregate ({d['survivors']} inputs, closure) | {a['wall']:.2f} "
        f"| {a['maxrss'] / MB:,.0f} | closure {d['closure_bytes'] / 1e3:.1f} kB "
        f"| {a['load']} |"
    )
    rc = ", ".join(f"{m['wall']:.2f}" for m in d["reveal_cold"]) or "-"
    rc_rss = ", ".join(f"{m['maxrss'] / MB:,.0f}" for m in d["reveal_cold"]) or "-"
    print(
        f"| reveal, per survivor | warm {_stats(steady(d['reveal_warm']))}; cold {rc} | "
        f"{rc_rss} "
        f"| {d['dropped']} seeds each, file {d['reveal_bytes'] / 1e3:.1f} kB "
        f"| {d['reveal_warm_load']} |"
    )
    print(
        f"| unmask with {d['survivors']} reveals | {u['wall']:.2f} | {u['maxrss'] / MB:,.0f} "
        f"| {streams} removal streams; +{extra:.2f} s over no dropout = "
        f"{extra / streams * 1e3:.1f} ms per stream; max error {d['max_error']:.1e} "
        f"| {u['load']} |"
    )


def report_train(runs: list[dict], args) -> None:
    first = runs[0]["summary"]
    print(
        f"\n### train-local, {args.train_arch} at {IMAGE_SIZE[args.train_arch]} px, "
        f"sample_data/hospital-a ({first['examples']} images, {first['patients']} patients), "
        f"{args.train_epochs} epochs, DP\n"
    )
    print(
        "| threads | processes | rep | wall s (fresh process) | training s | DP steps "
        "| images/s (expected batch) | peak RSS MB (one process) | CPU s | load 1/5/15 |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    by: dict[tuple[int, int], list[float]] = {c: [] for c in args.train_configs}
    for r in runs:
        s = r["summary"]
        images = r["steps"] * args.train_batch
        by[r["threads"], r["nproc"]].append(s["seconds"])
        print(
            f"| {r['threads']} | {r['nproc']} | {r['rep']} | {r['wall']:.1f} "
            f"| {s['seconds']:.1f} | {r['steps']} | {images / s['seconds']:.1f} "
            f"| {r['maxrss'] / MB:,.0f} | {r['cpu']:.1f} | {r['load']} |"
        )
    ref = by.get((1, 1))
    for (threads, nproc), xs in by.items():
        if ref and xs and (threads, nproc) != (1, 1):
            best = min(ref) / min(xs)
            med = statistics.median(ref) / statistics.median(xs)
            print(f"\nSpeed of {threads} thread(s) x {nproc} process(es) over 1 x 1: "
                  f"{best:.2f}x (best runs), {med:.2f}x (medians).")  # fmt: skip


def _configs(text: str) -> list[tuple[int, int]]:
    return [tuple(int(v) for v in c.split("x")) for c in text.split(",") if c.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet18", choices=sorted(IMAGE_SIZE))
    ap.add_argument("--sites", default="10,50,100", help="site counts, comma-separated")
    ap.add_argument("--dropout-sites", type=int, default=50, help="site count for dropouts")
    ap.add_argument("--dropout-frac", type=float, default=0.1)
    ap.add_argument("--cold", type=int, default=2, help="sites whose mask/reveal run cold")
    ap.add_argument("--workdir", type=Path, help="for the files (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the federations' files")
    ap.add_argument("--no-train", action="store_true", help="skip train-local at 1/2 threads")
    ap.add_argument("--train-arch", default="smallcnn", choices=sorted(IMAGE_SIZE))
    ap.add_argument("--train-epochs", type=int, default=4)
    ap.add_argument("--train-batch", type=int, default=64, help="expected batch (init's default)")
    ap.add_argument("--train-reps", type=int, default=2)
    ap.add_argument(
        "--train-configs", default="1x1,2x1", type=_configs,
        help="THREADSxPROCESSES to compare, comma-separated (1x1 is the reference)",
    )  # fmt: skip
    ap.add_argument("--json", type=Path, help="also write every measurement here")
    ap.add_argument("--batch-child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.batch_child:
        _batch_child(*args.batch_child)
        return
    counts = [int(x) for x in args.sites.split(",") if x.strip()]
    with tempfile.TemporaryDirectory(prefix="bench-scaling-", dir=args.workdir) as d:
        root = Path(d)
        keys = root / "keys"
        names = make_keys(keys, max([*counts, 3]))
        base = baseline(args.arch) if counts else None
        results = [federation(root, keys, names, n, args) for n in counts]
        train = [] if args.no_train else train_threads(root, keys, names, args)
    report(results, base, train, args)
    if args.json:
        args.json.write_text(
            json.dumps(
                {"arch": args.arch, "baseline": base, "federations": results, "train": train},
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
