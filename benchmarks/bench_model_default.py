"""The default model (scatter-linear, issue 10's recipe) on a patient hold-out of kermany224.

docs/benchmarks.md section 4. Per seed: 15 % of patients held out (stratified), the rest
split across 3 sites by patient; then

* (a) central, non-private: the same recipe on all training patients at once (train_round
  with dp=False: exact centring round, then 10 rounds x 5 full-batch steps);
* (b) federated, non-private: the whole file protocol (fedxray.simulation: train-local, mask,
  aggregate, unmask) with --no-dp;
* (c) federated + secure aggregation + DP, epsilon 8 per site (the centring release counted).

Images are prepared once (128 px) and their scattering features computed once (the product's
feature cache); the simulation's sites find their features in their own caches, so that the
file protocol is timed without recomputing them. Metrics: the final model on the hold-out.
Nothing is tuned here: the recipe's settings are the plan's defaults.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_model_default.py \
        --data ../shared/data/kermany224/train --seeds 0,1 --out /tmp/bench-model
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import time
from pathlib import Path

import numpy as np
import torch

from fedxray.data.shard_io import read_shard, write_shard
from fedxray.data.split import holdout_split
from fedxray.evaluation.metrics import compute_metrics
from fedxray.filenames import round_file
from fedxray.fsio import read_input
from fedxray.modelfile import load_model_artifact
from fedxray.models.registry import build_model, load_numpy_state, state_to_numpy
from fedxray.plan import load_plan
from fedxray.settings import DEFAULT_CLASSES, make_settings
from fedxray.simulation.courier import INBOX
from fedxray.simulation.runner import Simulation, SimulationConfig
from fedxray.simulation.split import split_sites
from fedxray.steps.site_memory import SiteFiles
from fedxray.training.features import cache_path, shard_features
from fedxray.training.loop import train_round
from fedxray.training.settings import TrainSettings

METRICS = ("accuracy", "macro_roc_auc", "binary_roc_auc", "mcc")


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


class Features:
    """Every image's features, found by its pixels."""

    def __init__(self, images: np.ndarray, feats: np.ndarray):
        self.feats = feats
        self.row = {hashlib.sha1(im.tobytes()).digest(): i for i, im in enumerate(images)}

    def of(self, images: np.ndarray) -> np.ndarray:
        return self.feats[[self.row[hashlib.sha1(im.tobytes()).digest()] for im in images]]


class PresplitSimulation(Simulation):
    """The product's simulation on shards split here, with each site's feature cache filled."""

    def __init__(self, config, parts, held, features: Features):
        super().__init__(config)
        self.parts, self.held, self.features = parts, held, features

    def _site_data(self):
        return [(f"site-{i + 1}", p) for i, p in enumerate(self.parts)], self.held

    def setup(self):
        super().setup()
        front = build_model("scatter-linear", self.image_size, 3).front_end
        for name, part in zip(self.site_names, self.parts, strict=True):
            folder = SiteFiles.beside_key(self._site_dir(name) / f"{name}.key").features
            folder.mkdir(mode=0o700, exist_ok=True)
            buf = io.BytesIO()
            np.save(buf, self.features.of(part.images).astype(np.float32))
            cache_path(folder, front, part.images).write_bytes(buf.getvalue())

    def evaluate(self, model_path, n_boot):
        return {}  # scored below, on the cached features of the hold-out


def score(state: dict, held, features: Features, image_size: int) -> dict:
    model = build_model("scatter-linear", image_size, 3)
    load_numpy_state(model, state)
    with torch.no_grad():
        logits = model.head(torch.from_numpy(features.of(held.images)))
    probs = torch.softmax(logits.double(), 1).numpy()
    m = compute_metrics(np.asarray(held.labels), probs, list(DEFAULT_CLASSES))
    return {k: m.values[k] for k in METRICS}


def central(train, held, features, settings: TrainSettings, seed: int, out: Path) -> dict:
    state = state_to_numpy(build_model(settings.arch, settings.image_size, 3, seed=0))
    cache = out / "central-features"
    cache.mkdir(exist_ok=True)
    buf = io.BytesIO()
    np.save(buf, features.of(train.images).astype(np.float32))
    front = build_model(settings.arch, settings.image_size, 3).front_end
    cache_path(cache, front, train.images).write_bytes(buf.getvalue())
    for r in range(1, settings.rounds + 1):
        res = train_round(state, train, settings, ledger_path=out / f"central-{seed}.ledger",
                          federation_id=f"central-{seed}", round_number=r, seed=seed * 100 + r,
                          dp=False, features_dir=cache)  # fmt: skip
        state = {k: state[k] + res.delta[k] for k in state}
    return state


def final_state(sim: Simulation) -> dict:
    path = sim.eval_dir / INBOX / round_file("model", sim.total_rounds + 1)
    plan = load_plan(sim.plan_path)
    return dict(load_model_artifact(read_input(path), plan).tensors)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench-model"))
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--runs", default="a,b,c")
    args = ap.parse_args()
    torch.set_num_threads(1)
    plan = make_settings({"model": {"image_size": args.image_size}} if args.image_size else {})
    size = plan.model.image_size
    args.out.mkdir(parents=True, exist_ok=True)
    shard_file = args.out / f"kermany-{size}.shard"
    t0 = time.perf_counter()
    if shard_file.exists():
        shard = read_shard(shard_file)
    else:
        from fedxray.data.prep import prepare

        secret = hashlib.sha256(b"fedxray-benchmark/model").digest()
        shard, _ = prepare([args.data], image_size=size, classes=DEFAULT_CLASSES,
                           secret=secret, workers=2)  # fmt: skip
        write_shard(shard_file, shard)
    t_prep = time.perf_counter() - t0
    log(f"{len(shard)} images, {shard.num_patients} patients at {size} px ({t_prep:.0f} s)")
    t0 = time.perf_counter()
    front = build_model("scatter-linear", size, 3).front_end
    feats = shard_features(front, shard.images, args.out / "features")
    t_feat = time.perf_counter() - t0
    log(f"features {feats.shape} ({t_feat:.0f} s, {1000 * t_feat / len(shard):.1f} ms/image)")
    features = Features(shard.images, feats)
    settings = TrainSettings.from_plan(plan)
    results = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        train, held = holdout_split(shard, 0.15, seed)
        parts = split_sites(train, 3, seed)
        for run in args.runs.split(","):
            t0 = time.perf_counter()
            if run == "a":
                state = central(train, held, features, settings, seed, args.out)
            else:
                folder = args.out / f"sim-{run}-{seed}"
                cfg = SimulationConfig(out=folder, sites=3, seed=seed, dp=run == "c",
                                       image_size=size, bootstrap=0)  # fmt: skip
                if folder.exists():
                    raise SystemExit(f"{folder} exists: remove it or choose another --out")
                sim = PresplitSimulation(cfg, parts, held, features)
                summary = sim.run()
                state = final_state(sim)
                eps = {n: s["epsilon"] for n, s in summary["rounds"][-1]["sites"].items()}
            seconds = time.perf_counter() - t0
            row = {"run": run, "seed": seed, "seconds": round(seconds, 1),
                   **score(state, held, features, size)}  # fmt: skip
            if run == "c":
                row["epsilon"] = max(eps.values())
            results.append(row)
            log(json.dumps(row))
    doc = {"image_size": size, "images": len(shard), "patients": shard.num_patients,
           "prep_seconds": round(t_prep, 1), "feature_seconds": round(t_feat, 1),
           "settings": dataclasses.asdict(settings), "results": results}  # fmt: skip
    (args.out / "results.json").write_text(json.dumps(doc, indent=1))
    for run in args.runs.split(","):
        rows = [r for r in results if r["run"] == run]
        mean = {k: float(np.mean([r[k] for r in rows])) for k in METRICS}
        log(run, {k: round(v, 4) for k, v in mean.items()},
            f"{np.mean([r['seconds'] for r in rows]):.0f} s per run")  # fmt: skip


if __name__ == "__main__":
    main()
