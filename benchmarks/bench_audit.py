"""Privacy audit of models trained on the sample data: what leaks, next to the accountant's eps.

    .venv/bin/python benchmarks/bench_audit.py                   # ~5 min on 2 busy CPU cores
    .venv/bin/python benchmarks/bench_audit.py --runs o --reference-models 4   # a quick look

The audited site is hospital-a of sample_data/ (prepared at 32 px with a fixed pseudonym
secret). A share of its patients (--non-members, by patient, stratified) is held out as
non-members; --canaries of the remaining patients become canaries (labels flipped, each
included by a fair coin, fedxray.audit.canaries); the rest are the members. Three models:

  o  overfitted on purpose: hospital-a alone, no DP, Adam, 100 epochs, no augmentation;
  f  the sample federation (hospital-a, -b, -c through fedxray.simulation, SimulationConfig's
     defaults), without DP;
  d  the same federation with DP at the default budget (the accountant's eps is hospital-a's).

Each model gets the loss-threshold attack, offline LiRA with --reference-models local
reference models (trained without DP on halves of the non-members with the target's own
settings, from the same initial weights), and the one-run canary audit. The eps lower bounds
are at 95 % confidence, at the plan's delta. Timings are wall-clock seconds of each step.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fedxray.audit import (  # noqa: E402
    FedxrayTrainer,
    apply_canaries,
    audit_canaries,
    audit_membership,
    draw_canaries,
)
from fedxray.data.prep import prepare  # noqa: E402
from fedxray.data.shard import Shard  # noqa: E402
from fedxray.data.split import holdout_split, patient_keys, subset  # noqa: E402
from fedxray.models.registry import build_model, state_to_numpy  # noqa: E402
from fedxray.settings import DEFAULT_CLASSES  # noqa: E402
from fedxray.simulation.runner import Simulation, SimulationConfig  # noqa: E402
from fedxray.training.settings import TrainSettings  # noqa: E402

SAMPLE = REPO / "sample_data"
AUDITED = "hospital-a"
RUNS = {"o": "overfitted, no DP", "f": "federation, no DP", "d": "federation, DP"}


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _prep(folder: Path, size: int, seed: int) -> Shard:
    secret = hashlib.sha256(f"bench-audit/{folder.name}/{seed}".encode()).digest()
    shard, _ = prepare([folder], image_size=size, classes=DEFAULT_CLASSES, secret=secret,
                       workers=1)  # fmt: skip
    return shard


@dataclasses.dataclass
class Site:
    train: Shard  # members + included canaries (flipped labels)
    members: Shard
    non_members: Shard
    canary_shard: Shard
    canaries: object


def audited_site(shard: Shard, args) -> Site:
    pool, non = holdout_split(shard, args.non_members, args.seed)
    canaries = draw_canaries(pool, args.canaries, seed=args.seed)
    train, canary_shard = apply_canaries(pool, canaries)
    keep = ~np.isin(patient_keys(pool), canaries.patients)
    return Site(train, subset(pool, np.flatnonzero(keep)), non, canary_shard, canaries)


class _CanarySimulation(Simulation):
    """The runner, fed the benchmark's shards (hospital-a with its canaries) instead of prepping."""

    def __init__(self, cfg: SimulationConfig, sites: list[tuple[str, Shard]], held: Shard):
        super().__init__(cfg)
        self._sites, self._held = sites, held

    def _site_data(self):
        return self._sites, self._held


def _settings(cfg: SimulationConfig, **overrides) -> TrainSettings:
    base = TrainSettings(
        arch=cfg.model, image_size=cfg.image_size, classes=tuple(DEFAULT_CLASSES),
        local_epochs=cfg.local_epochs, rounds=cfg.rounds, batch_size=cfg.batch_size, lr=cfg.lr,
        target_epsilon=cfg.epsilon, delta=cfg.delta, max_grad_norm=cfg.clip_norm,
    )  # fmt: skip
    return dataclasses.replace(base, **overrides)


def train_overfit(site: Site, cfg: SimulationConfig, init: dict, seed: int):
    settings = _settings(cfg, optimizer="adam", lr=0.003, batch_size=32, local_epochs=100,
                         rounds=1, augment=False)  # fmt: skip
    return FedxrayTrainer(settings, init)(site.train, seed), settings, math.inf


def train_federation(site: Site, others, held, cfg: SimulationConfig, dp: bool, tmp: Path):
    from fedxray.steps.model import load_model

    cfg = dataclasses.replace(cfg, out=tmp / ("dp" if dp else "plain"), dp=dp, bootstrap=0)
    sim = _CanarySimulation(cfg, [(AUDITED, site.train), *others], held)
    summary = sim.run()
    acc = summary["final_evaluation"]["metrics"]["accuracy"]["value"]
    eps = summary["rounds"][-1]["sites"][AUDITED].get("epsilon")
    _log(f"  federation ({'DP' if dp else 'no DP'}): held-out accuracy {acc:.3f}, "
         f"{AUDITED} eps {eps}")  # fmt: skip
    model = load_model(summary["final_model"], sim.plan_path).module
    settings = _settings(cfg)
    return model, settings, (eps if dp else math.inf), acc


def audit(model, settings, init, site: Site, accountant: float, args) -> dict:
    out = {}
    t0 = time.perf_counter()
    loss = audit_membership(model, site.members, site.non_members, delta=settings.delta,
                            attack="loss-threshold", seed=args.seed,
                            accountant_epsilon=accountant)  # fmt: skip
    out["loss"] = dict(loss.to_dict(), seconds=time.perf_counter() - t0)
    if args.reference_models > 0:
        t0 = time.perf_counter()
        lira = audit_membership(model, site.members, site.non_members, delta=settings.delta,
                                attack="lira-offline", trainer=FedxrayTrainer(settings, init),
                                reference_models=args.reference_models, seed=args.seed,
                                accountant_epsilon=accountant)  # fmt: skip
        out["lira"] = dict(lira.to_dict(), seconds=time.perf_counter() - t0)
    t0 = time.perf_counter()
    can = audit_canaries(model, site.canary_shard, site.canaries, delta=settings.delta,
                         accountant_epsilon=accountant)  # fmt: skip
    out["canaries"] = dict(can.to_dict(), seconds=time.perf_counter() - t0)
    return out


def _f(x, digits=3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def table(results: dict) -> str:
    lines = [
        "| model | accountant eps | attack | AUC | TPR@0.1% | TPR@1% | TPR@10% "
        "| eps lower (95 %) | audit seconds |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run, res in results.items():
        acc = res["accountant_epsilon"]
        acc_s = "inf (no DP)" if acc is None else f"{acc:.2f}"
        for name in ("loss", "lira"):
            if name not in res["audit"]:
                continue
            a = res["audit"][name]
            t = {round(r["fpr"], 4): r for r in a["tpr_at_fpr"]}
            tprs = [
                f"{t[f]['tpr']:.3f}{'' if t[f]['resolved'] else '*'}" for f in (0.001, 0.01, 0.1)
            ]
            refs = f", {a['reference_models']} ref. models" if a["reference_models"] else ""
            lines.append(
                f"| ({run}) {RUNS[run]} | {acc_s} | {a['attack']} ({a['members']} vs "
                f"{a['non_members']} patients{refs}) "
                f"| {a['auc']:.3f} | {' | '.join(tprs)} | {_f(a['epsilon_lower_bound']['lower'])} "
                f"| {a['seconds']:.1f} |"
            )  # fmt: skip
        c = res["audit"]["canaries"]
        lines.append(
            f"| ({run}) {RUNS[run]} | {acc_s} | one-run canaries ({c['canaries']}, "
            f"{c['included']} in; {c['correct']}/{c['guesses']} guesses right) | - | - | - | - "
            f"| {_f(c['epsilon_lower'])} | {c['seconds']:.1f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    defaults = SimulationConfig(out=Path("unused"))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="ofd", help="which models: o, f, d (default ofd)")
    p.add_argument("--canaries", type=int, default=100)
    p.add_argument("--non-members", type=float, default=0.3, help="share of hospital-a's patients")
    p.add_argument("--reference-models", type=int, default=8, help="LiRA; 0 skips LiRA")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = dataclasses.replace(defaults, seed=args.seed)
    started = time.perf_counter()

    t0 = time.perf_counter()
    shards = {h: _prep(SAMPLE / h, cfg.image_size, args.seed)
              for h in ("hospital-a", "hospital-b", "hospital-c", "test")}  # fmt: skip
    site = audited_site(shards[AUDITED], args)
    _log(f"prepared the sample data in {time.perf_counter() - t0:.1f} s; {AUDITED}: "
         f"{site.members.num_patients} members, {site.non_members.num_patients} non-members, "
         f"{len(site.canaries)} canaries ({sum(site.canaries.included)} included)")  # fmt: skip
    others = [(h, shards[h]) for h in ("hospital-b", "hospital-c")]
    # Every model starts from the weights the federation's round-1 model has (seeded init).
    init = state_to_numpy(build_model(cfg.model, cfg.image_size, len(DEFAULT_CLASSES), 1,
                                      seed=cfg.seed))  # fmt: skip

    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as tmp:
        for run in args.runs:
            _log(f"({run}) {RUNS[run]}")
            t0 = time.perf_counter()
            held_acc = None
            if run == "o":
                model, settings, accountant = train_overfit(site, cfg, init, args.seed)
            else:
                model, settings, accountant, held_acc = train_federation(
                    site, others, shards["test"], cfg, run == "d", Path(tmp)
                )
            train_s = time.perf_counter() - t0
            res = audit(model, settings, init, site, accountant, args)
            results[run] = {
                "model": RUNS[run],
                "train_seconds": train_s,
                "held_out_accuracy": held_acc,
                "accountant_epsilon": None if math.isinf(accountant) else accountant,
                "audit": res,
            }
            _log(f"  trained in {train_s:.1f} s; audit: loss AUC {res['loss']['auc']:.3f}, "
                 f"canary eps >= {res['canaries']['epsilon_lower']:.3f}")  # fmt: skip
    total = time.perf_counter() - started
    print(table(results))
    print()
    for run, r in results.items():
        acc = (
            ""
            if r["held_out_accuracy"] is None
            else f", held-out accuracy {r['held_out_accuracy']:.3f}"
        )
        print(f"- ({run}) training {r['train_seconds']:.1f} s{acc}")  # fmt: skip
    cpu = platform.processor() or platform.machine()
    print(f"- total {total:.1f} s; torch threads {args.threads}; {cpu}")
    print("- `*`: target FPR below 1/non-members: read at FPR 0 (see fedxray.audit.roc)")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "seconds": total}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
