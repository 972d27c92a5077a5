"""Centralised vs federated vs federated + DP on kermany224/train: a markdown table.

    .venv/bin/python benchmarks/bench_federation.py                 # CPU defaults (~5 min)
    .venv/bin/python benchmarks/bench_federation.py --gpu           # resnet18, 224 px, CUDA
    .venv/bin/python benchmarks/bench_federation.py --rounds 3 --runs ac --bootstrap 0 \
        --cache /tmp/k32.shard                                      # a quick look (~1 min)

The images are prepared once (with a fixed pseudonym secret, so that every invocation holds
out the same patients), 15% of the patients are held out (stratified,
fedxray.data.split.holdout_split) and the rest are split by patient over the sites
(split_sites). Every run starts from the same initial weights (those of the federation's
round-1 model) and makes the same number of passes, rounds x local epochs, over the data:

  a  centralised, non-private: one party trains on all training patients;
  b  federated over the sites, non-private (secure aggregation still on);
  c  federated with secure aggregation and patient-level DP, --epsilon/--delta per site;
  d  centralised with patient-level DP: splits the gap between c and a into the cost of DP
     and the cost of federation.

b and c run through fedxray.simulation (keys, plan, signed files, masking, aggregation,
unmasking, the per-round evaluation party), fed the very shards a and d train on; the held-out
shard a simulation evaluates is checked to hold the images a and d are evaluated on. Under DP
an epoch is one pass over the PATIENTS (one image each), as the privacy accounting requires.
DP runs get their own learning rate (--dp-lr): clipped gradients are smaller. The CPU
defaults (tinycnn, 6k parameters, at 32 px) gave the smallest gap in docs/benchmarks.md.
The --gpu preset has not been run on a GPU yet.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fedxray.data.prep import prepare  # noqa: E402
from fedxray.data.shard import Shard  # noqa: E402
from fedxray.data.shard_io import read_shard, write_shard  # noqa: E402
from fedxray.data.split import holdout_split, patient_keys  # noqa: E402
from fedxray.evaluation.inference import predict_proba  # noqa: E402
from fedxray.evaluation.report import evaluate  # noqa: E402
from fedxray.models.registry import build_model, load_numpy_state, state_to_numpy  # noqa: E402
from fedxray.settings import DEFAULT_CLASSES  # noqa: E402
from fedxray.simulation.runner import Simulation, SimulationConfig  # noqa: E402
from fedxray.simulation.split import split_sites  # noqa: E402
from fedxray.training.central import train_alone  # noqa: E402
from fedxray.training.settings import TrainSettings  # noqa: E402

SHARED = Path(os.environ.get("FEDXRAY_SHARED_DATA", REPO.parent / "shared" / "data"))
RUNS = {
    "a": "centralised",
    "b": "federated",
    "c": "federated + DP",
    "d": "centralised + DP",
}
METRICS = ("accuracy", "macro_roc_auc", "binary_roc_auc", "mcc")
# Settings that differ between the CPU default and --gpu; everything else is shared.
PRESETS = {
    "cpu": {"arch": "tinycnn", "image_size": 32, "device": "cpu"},
    "gpu": {"arch": "resnet18", "image_size": 224, "device": "cuda"},
}


@dataclass
class Outcome:
    run: str
    metrics: dict[str, dict]  # name -> {"value", and with bootstrap "low", "high"}
    seconds: float  # wall time of the whole run (training, secagg, evaluation)
    rounds: list[dict] = field(default_factory=list)  # federated: RoundRecord dicts
    epsilon: float | None = None  # largest epsilon any party spent
    noise_multiplier: float | None = None
    curve: list[float] = field(default_factory=list)  # held-out accuracy after each round
    variant: str | None = None  # e.g. "mean of the last 3 models"

    @property
    def label(self) -> str:
        name = f"({self.run}) {RUNS[self.run]}"
        return f"{name}, {self.variant}" if self.variant else name


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- data ----------------------------------------------------------------------------------
def prepared_shard(args) -> Shard:
    """kermany224/train prepared at the run's image size, read from --cache when it is there."""
    cache = Path(args.cache) if args.cache else None
    if cache is not None and cache.exists():
        shard = read_shard(cache)
        if shard.image_size != args.image_size:
            raise SystemExit(f"{cache} holds {shard.image_size} px images, not {args.image_size}")
        _log(f"read {len(shard)} prepared images from {cache}")
        return shard
    # A fixed pseudonym secret: patients then sort the same way every time, so the held-out
    # patients (and the sites' patients) are the same from one invocation to the next.
    secret = hashlib.sha256(f"bench-federation/{args.seed}".encode()).digest()
    t0 = time.perf_counter()
    shard, report = prepare(
        [args.data],
        image_size=args.image_size,
        classes=DEFAULT_CLASSES,
        secret=secret,
        workers=args.workers,
    )
    _log(
        f"prepared {len(shard)} images of {report.files_seen} files "
        f"({sum(report.skipped_counts().values())} skipped) in {time.perf_counter() - t0:.1f} s"
    )
    if cache is not None:
        write_shard(cache, shard)
    return shard


def split(shard: Shard, args) -> tuple[Shard, list[Shard], Shard]:
    """(all training patients, one shard per site, held-out patients), all by patient."""
    train, held = holdout_split(shard, args.holdout, args.seed)
    parts = split_sites(train, args.sites, args.seed, None)
    # The sites together hold exactly the centralised party's images; nobody holds a
    # held-out patient.
    site_ids = np.sort(np.concatenate([p.image_ids for p in parts]))
    if not np.array_equal(site_ids, np.sort(train.image_ids)):
        raise RuntimeError("the sites' images are not the centralised party's images")
    if set(patient_keys(train)) & set(patient_keys(held)):
        raise RuntimeError("a patient is both in training and held out")
    return train, parts, held


def describe(name: str, s: Shard) -> str:
    counts = np.bincount(s.labels, minlength=len(s.classes))
    per_class = ", ".join(f"{c} {n}" for c, n in zip(s.classes, counts, strict=True))
    return f"{name}: {len(s)} images, {s.num_patients} patients ({per_class})"


# --- runs ----------------------------------------------------------------------------------
def _lr(args, dp: bool) -> float:
    return args.dp_lr if dp and args.dp_lr is not None else args.lr


def _settings(args, epochs: int, dp: bool) -> TrainSettings:
    return TrainSettings(
        arch=args.arch,
        image_size=args.image_size,
        classes=tuple(DEFAULT_CLASSES),
        local_epochs=epochs,
        rounds=1,
        batch_size=args.batch_size,
        lr=_lr(args, dp),
        target_epsilon=args.epsilon,
        delta=args.delta,
        max_grad_norm=args.clip,
    )


def _evaluate(state: dict[str, np.ndarray], held: Shard, args) -> dict[str, dict]:
    """The reported metrics of the model with weights ``state`` on the held-out patients."""
    model = build_model(args.arch, args.image_size, len(DEFAULT_CLASSES), 1)
    load_numpy_state(model, state)
    model.eval()
    probs = predict_proba(model, held.images, device=args.device)
    report = evaluate(
        held.labels, probs, DEFAULT_CLASSES, groups=held.patients, n_boot=args.bootstrap,
        seed=args.seed,
    )  # fmt: skip
    d = report.to_dict()["metrics"]
    return {m: d[m] for m in METRICS}


def _initial_state(args) -> dict[str, np.ndarray]:
    """The weights every run starts from: those `fedxray init` gives the round-1 model."""
    model = build_model(args.arch, args.image_size, len(DEFAULT_CLASSES), 1, seed=args.seed)
    return state_to_numpy(model)


def run_central(train: Shard, held: Shard, args, dp: bool) -> Outcome:
    """One party, all training patients, rounds x local_epochs epochs from the round-1 weights."""
    t0 = time.perf_counter()
    init = _initial_state(args)
    settings = _settings(args, args.rounds * args.local_epochs, dp)
    res = train_alone(init, train, settings, name="central", device=args.device, seed=args.seed,
                      dp=dp)  # fmt: skip
    return Outcome(
        run="d" if dp else "a",
        metrics=_evaluate({k: init[k] + res.delta[k] for k in init}, held, args),
        seconds=time.perf_counter() - t0,
        epsilon=None if math.isinf(res.epsilon) else res.epsilon,
        noise_multiplier=res.noise_multiplier,
    )


class _PresplitSimulation(Simulation):
    """The runner, fed the benchmark's own shards instead of prepping and splitting itself.

    The runner preps with a random pseudonym secret, so its own hold-out would pick other
    patients on every invocation; handing it the shards guarantees the runs compare alike.
    """

    def __init__(self, cfg: SimulationConfig, parts: list[Shard], held: Shard, on_event=None):
        super().__init__(cfg, on_event)
        self._parts, self._held = parts, held

    def _site_data(self):
        return [(f"site-{i + 1}", p) for i, p in enumerate(self._parts)], self._held


def run_federated(parts: list[Shard], held: Shard, args, dp: bool, out: Path) -> list[Outcome]:
    """The simulation's final model, then the mean of its last k models for each --average k."""
    same = ("rounds", "local_epochs", "seed", "image_size", "epsilon", "delta", "batch_size",
            "server_opt", "server_lr", "holdout", "bootstrap", "workers", "device")  # fmt: skip
    cfg = SimulationConfig(
        out=out, data=Path(args.data), sites=len(parts), dp=dp, model=args.arch,
        lr=_lr(args, dp), clip_norm=args.clip, **{k: getattr(args, k) for k in same},
    )  # fmt: skip

    def event(kind: str, info: dict) -> None:
        if kind == "round":
            m = info["metrics"]["metrics"]
            eps = [s.get("epsilon") for s in info["sites"].values()]
            _log(
                f"  round {info['round']}: acc {m['accuracy']['value']:.3f} "
                f"macro AUC {m['macro_roc_auc']['value']:.3f} "
                f"eps {max(eps) if dp else '-'} secs {info['seconds']}"
            )

    t0 = time.perf_counter()
    sim = _PresplitSimulation(cfg, parts, held, event)
    summary = sim.run()
    seconds = time.perf_counter() - t0
    # The simulation evaluated on the held-out shard it wrote: check it is the same patients.
    evaluated = read_shard(out / "evaluation" / "test.shard")
    if not np.array_equal(np.sort(evaluated.image_ids), np.sort(held.image_ids)):
        raise RuntimeError("the simulation evaluated other images than the held-out ones")
    # ... and started from the weights the centralised runs start from.
    first = _model_state(sim, 1)
    init = _initial_state(args)
    if any(not np.array_equal(first[k], init[k]) for k in init):
        raise RuntimeError("the federation's round-1 model differs from the centralised start")
    final = summary["final_evaluation"]["metrics"]
    last = summary["rounds"][-1]["sites"].values()
    eps = [s["epsilon"] for s in last if s.get("epsilon") is not None]
    sigmas = [s["noise_multiplier"] for s in last if s.get("noise_multiplier") is not None]
    main = Outcome(
        run="c" if dp else "b",
        metrics={m: final[m] for m in METRICS},
        seconds=seconds,
        rounds=summary["rounds"],
        epsilon=max(eps) if eps else None,
        noise_multiplier=max(sigmas) if sigmas else None,
        curve=[r["metrics"]["metrics"]["accuracy"]["value"] for r in summary["rounds"]],
    )
    outcomes = [main]
    for k in args.average:
        if not 1 < k <= args.rounds:
            continue
        t0 = time.perf_counter()
        metrics = _evaluate(_mean_of_last(sim, args.rounds + 1, k), held, args)
        outcomes.append(
            Outcome(
                run=main.run,
                metrics=metrics,
                seconds=seconds + time.perf_counter() - t0,
                rounds=main.rounds,
                epsilon=main.epsilon,
                noise_multiplier=main.noise_multiplier,
                variant=f"mean of the last {k} models",
            )
        )
    return outcomes


def _mean_of_last(sim: Simulation, last: int, k: int) -> dict[str, np.ndarray]:
    """Mean weights of the global models of rounds last-k+1 .. last, as the coordinator has them.

    Only the released models are used, so under DP this is post-processing: it costs no
    privacy. (Tail averaging of the iterates damps the noise the last rounds added.)
    """
    states = [_model_state(sim, r) for r in range(last - k + 1, last + 1)]
    return {name: np.mean([s[name] for s in states], axis=0) for name in states[0]}


def _model_state(sim: Simulation, round_number: int) -> dict[str, np.ndarray]:
    """The weights of the coordinator's model for ``round_number``, verified against the plan."""
    from fedxray.filenames import round_file
    from fedxray.steps.model import load_model

    path = sim.coord_dir / round_file("model", round_number)
    return state_to_numpy(load_model(path, sim.plan_path).module)


# --- report --------------------------------------------------------------------------------
def _fmt(est: dict) -> str:
    v = est.get("value")
    if v is None:
        return "n/a"
    if est.get("low") is not None and est.get("high") is not None:
        return f"{v:.3f} ({est['low']:.3f}-{est['high']:.3f})"
    return f"{v:.3f}"


def _value(o: Outcome, metric: str) -> float | None:
    return o.metrics[metric].get("value")


def _round_times(o: Outcome, args) -> tuple[str, str, str, str, str]:
    """(s per round, train s per site, mask %, aggregate %, unmask %) for the table."""
    if not o.rounds:
        per_round = o.seconds / args.rounds
        return f"{per_round:.1f}*", "-", "-", "-", "-"
    totals = [sum(r["seconds"].values()) for r in o.rounds]
    parts = {k: sum(r["seconds"][k] for r in o.rounds) for k in ("mask", "aggregate", "unmask")}
    parts["unmask"] += sum(r["seconds"]["reveal"] for r in o.rounds)  # dropouts only
    site_train = [s["seconds"] for r in o.rounds for s in r["sites"].values()]
    whole = sum(totals)
    return (
        f"{whole / len(totals):.1f}",
        f"{np.mean(site_train):.1f}",
        *(f"{100 * parts[k] / whole:.2f}" for k in ("mask", "aggregate", "unmask")),
    )


def table(outcomes: list[Outcome], args) -> str:
    lines = [
        "| run | DP (per site) | accuracy | macro AUC | binary AUC | MCC | wall s | "
        "s/round | train s/site/round | mask % | aggregate % | unmask % |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for o in outcomes:
        dp = "no"
        if o.epsilon is not None:
            dp = f"ε={o.epsilon:.2f}, δ={args.delta:g}, σ={o.noise_multiplier:.2f}"
        cells = [o.label, dp, *(_fmt(o.metrics[m]) for m in METRICS)]
        cells += [f"{o.seconds:.0f}", *_round_times(o, args)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(SHARED / "kermany224" / "train"))
    ap.add_argument("--runs", default="abcd", help="which of a, b, c, d to run, in order")
    ap.add_argument("--gpu", action="store_true", help="resnet18 at 224 px on CUDA (preset)")
    ap.add_argument("--device", help="cpu or cuda (default: cpu; cuda with --gpu)")
    ap.add_argument("--arch", help="a registered model (default: tinycnn; resnet18 with --gpu)")
    ap.add_argument("--image-size", type=int, help="pixels (default: 32; 224 with --gpu)")
    ap.add_argument("--sites", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--local-epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64, help="expected batch under DP")
    ap.add_argument("--lr", type=float, default=0.05, help="local SGD learning rate")
    ap.add_argument("--dp-lr", type=float, default=0.2, help="learning rate of the DP runs")
    ap.add_argument("--clip", type=float, default=1.0, help="per-patient clipping norm (DP)")
    ap.add_argument("--epsilon", type=float, default=8.0)
    ap.add_argument("--delta", type=float, default=1e-5)
    ap.add_argument("--server-opt", default="fedavg", choices=("fedavg", "momentum", "fedadam"))
    ap.add_argument("--server-lr", type=float, default=1.0)
    ap.add_argument(
        "--average",
        type=int,
        nargs="*",
        default=[3],
        metavar="K",
        help="also evaluate the mean of the last K global models of b and c (default 3)",
    )
    ap.add_argument("--holdout", type=float, default=0.15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bootstrap", type=int, default=200, help="patient resamples (0: no CIs)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (shared machine: 1)")
    ap.add_argument("--workers", type=int, default=1, help="prep processes")
    ap.add_argument("--cache", help="prepared-shard file to reuse (written when missing)")
    ap.add_argument("--keep", help="keep the simulations' run folders under this folder")
    ap.add_argument("--json", help="also write the results here as JSON")
    args = ap.parse_args(argv)
    preset = PRESETS["gpu" if args.gpu else "cpu"]
    for k, v in preset.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    bad = set(args.runs) - set(RUNS)
    if bad or not args.runs:
        ap.error(f"--runs takes letters from {''.join(RUNS)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("CUDA is not available here; drop --gpu/--device cuda")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    shard = prepared_shard(args)
    train, parts, held = split(shard, args)
    for name, s in [("training", train), *((f"site-{i + 1}", p) for i, p in enumerate(parts))]:
        _log(describe(name, s))
    _log(describe("held out", held))

    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        for run in args.runs:
            _log(f"run ({run}) {RUNS[run]} ...")
            if run in "ad":
                new = [run_central(train, held, args, dp=run == "d")]
            else:
                new = run_federated(parts, held, args, dp=run == "c", out=root / f"run-{run}")
            for o in new:
                _log(
                    f"  {o.label}, {o.seconds:.0f} s: "
                    + ", ".join(_fmt(o.metrics[m]) for m in METRICS)
                )
            outcomes += new

    passes = args.rounds * args.local_epochs
    print(
        f"kermany224/train, held-out {len(held)} images / {held.num_patients} patients "
        f"({args.holdout:.0%} of patients), {args.sites} sites; {args.arch} at "
        f"{args.image_size} px on {args.device} ({args.threads} torch thread(s), "
        f"{platform.machine()}, {os.cpu_count()} CPUs); {args.rounds} rounds x "
        f"{args.local_epochs} local epochs = {passes} passes for every run; batch "
        f"{args.batch_size}, lr {args.lr:g} (DP runs {_lr(args, True):g}), clip "
        f"{args.clip:g}, server {args.server_opt} "
        f"(lr {args.server_lr:g}); bootstrap {args.bootstrap} patient resamples; "
        f"total {time.perf_counter() - started:.0f} s\n"
    )
    print(table(outcomes, args))
    print(
        "\n*centralised: whole run / rounds. Federated s/round: training of all sites one "
        "after another + secure aggregation; mask/aggregate/unmask % are shares of it."
    )
    central = next((o for o in outcomes if o.run == "a"), None)
    for o in outcomes:
        if central is None or o.run != "c":
            continue
        gap = ", ".join(
            f"{m} {_value(o, m) - _value(central, m):+.3f}"
            for m in METRICS
            if _value(o, m) is not None and _value(central, m) is not None
        )
        print(f"\ngap {o.label} - (a): {gap}")
    curves = [o for o in outcomes if o.curve]
    if curves:
        print("\nheld-out accuracy after each round: ")
        for o in curves:
            print(f"- ({o.run}) " + " ".join(f"{a:.3f}" for a in o.curve))
    if args.json:
        Path(args.json).write_text(
            json.dumps({"settings": vars(args), "outcomes": [o.__dict__ for o in outcomes]},
                       indent=1, default=str) + "\n"
        )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
