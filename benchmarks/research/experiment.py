"""Run one configuration: (a) central, (b) federated, (c) federated + DP; log every number.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/research/experiment.py \
        --tag recipe --seeds 0,1             # the recommended recipe (recipe.py) on splits 0 and 1
    ... --size 64 --pool 4 --tag x       # any option overrides one setting of the recipe

One JSON line per (run, seed) goes to benchmarks/research/results.jsonl: the settings, the
hold-out metrics of each released model (last global model, mean of the last K, EMA), the
robustness checks (hold-out re-weighted to the external class mix; hold-out under fixed
acquisition shifts) and the timings.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import dataset
import numpy as np
import recipe
import torch
from dp_step import SiteData, numpy_features, set_flat_params
from federation import Recipe, averaged, train
from heads import make_head, num_parameters
from scatter import FeatureCache, ScatterSettings, images_hash, reduce
from views import SHIFTS, augmented_view, shifted_view, to_float

from fedxray.evaluation.metrics import WeightedScorer
from fedxray.evaluation.report import evaluate

RESULTS = Path(__file__).resolve().parent / "results.jsonl"
CACHE = FeatureCache(dataset.CACHE / "features")
# Class mix of the official Kermany TEST split (public: Kermany et al. 2018): normal,
# bacterial, viral. Used only to re-weight the hold-out for the robustness check.
EXTERNAL_MIX = np.array([0.375, 0.388, 0.237])
RELEASES = ("last", "mean3", "mean5", "ema0.7")
# Class mix of the Kermany TRAIN split as published (1,341 / 2,530 / 1,345 images). A
# post-hoc prior correction to a uniform prior (label-shift Bayes rule, Saerens et al. 2002)
# multiplies the posteriors by (1/3) / TRAIN_MIX; evaluated as release "last-uniform".
TRAIN_MIX = np.array([1341, 2530, 1345]) / 5216
METRICS = ("accuracy", "macro_roc_auc", "binary_roc_auc", "mcc", "balanced_accuracy")


def _pooled(native: np.ndarray, settings: ScatterSettings) -> np.ndarray:
    """The cache keeps the full map; orientation and spatial pooling are applied here."""
    if settings == settings.native:
        return np.asarray(native)
    out = []
    for i in range(0, len(native), 1024):
        t = torch.from_numpy(np.asarray(native[i : i + 1024], dtype=np.float32))
        out.append(reduce(t, settings).numpy().astype(np.float16))
    return np.concatenate(out)


def features(settings: ScatterSettings, views: int, aug_seed: int = 0) -> np.ndarray:
    """[1 + views, N, K, P, P] float16 features of every image (view 0 clean)."""
    shard = dataset.shard_at(settings.image_size)
    pixels = images_hash(shard.images)
    native = settings.native
    out = [_pooled(CACHE.get(native, "clean", lambda: to_float(shard.images), pixels), settings)]
    for v in range(1, views + 1):
        feats = CACHE.get(
            native,
            f"aug{v}-seed{aug_seed}",
            lambda v=v: augmented_view(shard.images, v, aug_seed),
            pixels,
        )
        out.append(_pooled(feats, settings))
    return np.stack(out)


def shifted_features(settings: ScatterSettings, index: np.ndarray) -> dict[str, np.ndarray]:
    images = dataset.shard_at(settings.image_size).images[index]
    pixels = images_hash(images)
    native = settings.native
    return {
        k: _pooled(CACHE.get(native, k, lambda k=k: shifted_view(images, k), pixels), settings)
        for k in SHIFTS
    }


def site_data(feats: np.ndarray, index: np.ndarray, labels, patients) -> SiteData:
    pid, n = dataset.patient_index(patients[index])
    return SiteData(
        features=numpy_features(feats[:, index]),
        labels=torch.from_numpy(labels[index].astype(np.int64)),
        patient=torch.from_numpy(pid),
        n_patients=n,
    )


def predict(model, x: np.ndarray, prior_ratio: np.ndarray | None = None) -> np.ndarray:
    with torch.no_grad():
        logits = torch.cat([model(numpy_features(x[i : i + 512])) for i in range(0, len(x), 512)])
    if prior_ratio is not None:
        logits = logits + torch.log(torch.as_tensor(prior_ratio, dtype=torch.float32))
    return torch.softmax(logits, 1).numpy()


def scores(y, probs, classes, groups) -> dict:
    rep = evaluate(y, probs, classes, groups=groups, n_boot=0)
    out = {m: rep.value(m) for m in METRICS}
    # Re-weighted to the external class mix: each held-out image of class c gets weight
    # EXTERNAL_MIX[c] / (share of class c in the hold-out).
    share = np.bincount(y, minlength=len(classes)) / len(y)
    w = (EXTERNAL_MIX / share)[y]
    rw = WeightedScorer(y, probs, list(classes))(w[None])
    out |= {f"rw_{m}": float(rw[m][0]) for m in ("accuracy", "binary_roc_auc", "mcc")}
    return out


def first_image_per_patient(index: np.ndarray, patients: np.ndarray) -> np.ndarray:
    """Ablation: one (fixed) image per patient instead of all of them."""
    _, first = np.unique(patients[index], return_index=True)
    return np.sort(index[first])


def run_one(args, run: str, seed: int, feats, shifted, split, shard, head_shape) -> dict:
    labels, patients, classes = shard.labels, shard.patients, shard.classes
    parts = [split.train] if run == "a" else list(split.sites)
    if args.one_image:
        parts = [first_image_per_patient(p, patients) for p in parts]
    sites = [site_data(feats, p, labels, patients) for p in parts]
    torch.manual_seed(seed)
    model = make_head(args.head, head_shape)
    recipe = Recipe(
        rounds=args.rounds,
        local_steps=args.local_steps,
        lr=args.dp_lr if run == "c" else args.lr,
        momentum=args.momentum,
        keep_velocity=args.keep_velocity,
        clip=args.clip,
        sample_rate=args.sample_rate,
        target_epsilon=args.epsilon,
        server_lr=args.server_lr,
        bias_lr=args.bias_lr,
        weight_decay=args.wd,
        schedule=args.schedule,
        center_sigma=args.center_sigma or None,
    )
    cw = None if args.class_weights is None else torch.tensor(args.class_weights)
    started = time.monotonic()
    run_seed = seed + 1000 * args.noise_offset  # another noise draw on the same split
    log = train(model, sites, recipe, private=(run == "c"), run_seed=run_seed, class_weights=cw)
    wall = time.monotonic() - started
    y = labels[split.holdout].astype(np.int64)
    groups = patients[split.holdout]
    prior = None if args.prior_ratio is None else np.array(args.prior_ratio)
    result = {
        "tag": args.tag,
        "run": run,
        "seed": seed,
        "noise_offset": args.noise_offset,
        "front": asdict(args.settings),
        "head": args.head,
        "params": num_parameters(model),
        "views": args.views,
        "one_image_per_patient": args.one_image,
        "recipe": asdict(recipe),
        "class_weights": args.class_weights,
        "prior_ratio": args.prior_ratio,
        "sigma": log.sigma,
        "epsilon": log.epsilon,
        "wall_s": round(wall, 1),
        "s_per_site_round": round(float(np.mean(log.seconds_per_site_round)), 3),
        "n_train_patients": sum(s.n_patients for s in sites),
        "n_holdout": len(y),
    }
    if log.diagnostics:
        last = log.diagnostics[-len(sites) :]
        result["clipped_share_end"] = float(np.mean([d["clipped_share"] for d in last]))
        result["median_norm_end"] = float(np.mean([d["median_norm"] for d in last]))
    clean = feats[0, split.holdout]
    per_round = []
    for g in log.globals_[1:]:
        set_flat_params(model, g)
        per_round.append(round(scores(y, predict(model, clean), classes, groups)["accuracy"], 3))
    result["acc_per_round"] = per_round
    for how in (*RELEASES, "last-uniform"):
        ratio = prior
        if how == "last-uniform":
            ratio = (1 / 3) / TRAIN_MIX
        set_flat_params(model, averaged(log.globals_, how.split("-")[0]))
        result[how] = scores(y, predict(model, clean, ratio), classes, groups)
        result[how]["shift"] = {
            k: {
                m: v
                for m, v in scores(y, predict(model, x, ratio), classes, groups).items()
                if m in ("accuracy", "binary_roc_auc", "mcc")
            }
            for k, x in shifted.items()
        }
    return result


def summary_line(r: dict, how: str) -> str:
    m = r[how]
    sh = m["shift"]
    worst = min(v["accuracy"] for v in sh.values())
    mean_shift_acc = np.mean([v["accuracy"] for v in sh.values()])
    return (
        f"{r['tag']:<22} {r['run']} s{r['seed']} {how:<6} acc {m['accuracy']:.3f} "
        f"mAUC {m['macro_roc_auc']:.3f} bAUC {m['binary_roc_auc']:.4f} MCC {m['mcc']:.3f} | "
        f"rw acc {m['rw_accuracy']:.3f} MCC {m['rw_mcc']:.3f} | "
        f"shift acc mean {mean_shift_acc:.3f} worst {worst:.3f} | {r['wall_s']}s"
    )


def add_front_end_args(p: argparse.ArgumentParser) -> None:
    """The scattering front end's options (defaults: the recommended recipe)."""
    d = recipe.FRONT
    p.add_argument("--size", type=int, default=d.image_size)
    p.add_argument("--J", type=int, default=d.J)
    p.add_argument("--L", type=int, default=d.L)
    p.add_argument("--order", type=int, default=d.max_order)
    p.add_argument("--no-log", action="store_true")
    p.add_argument("--pool", type=int, default=d.pool)
    p.add_argument("--orientations", default=d.orientations)


def front_end_from_args(args) -> ScatterSettings:
    return ScatterSettings(
        image_size=args.size,
        J=args.J,
        L=args.L,
        max_order=args.order,
        log=not args.no_log,
        pool=args.pool,
        orientations=args.orientations,
    )


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--tag", required=True)
    add_front_end_args(p)
    r = recipe.RECIPE
    p.add_argument("--head", default=recipe.HEAD)
    p.add_argument("--views", type=int, default=0, help="augmented views per image")
    p.add_argument("--one-image", action="store_true", help="one image per patient only")
    p.add_argument("--rounds", type=int, default=r.rounds)
    p.add_argument("--local-steps", type=int, default=r.local_steps)
    p.add_argument("--lr", type=float, default=r.lr, help="(a) and (b)")
    p.add_argument("--dp-lr", type=float, default=r.lr, help="(c)")
    p.add_argument("--bias-lr", type=float, default=r.bias_lr)
    p.add_argument("--momentum", type=float, default=r.momentum)
    p.add_argument("--keep-velocity", action="store_true")
    p.add_argument("--clip", type=float, default=r.clip)
    p.add_argument("--sample-rate", type=float, default=r.sample_rate)
    p.add_argument("--epsilon", type=float, default=r.target_epsilon)
    p.add_argument("--server-lr", type=float, default=r.server_lr)
    p.add_argument("--wd", type=float, default=r.weight_decay)
    p.add_argument("--schedule", default=r.schedule)
    p.add_argument("--center-sigma", type=float, default=r.center_sigma, help="0: no centring")
    p.add_argument("--class-weights", type=float, nargs=3, default=None)
    p.add_argument("--prior-ratio", type=float, nargs=3, default=None)
    p.add_argument("--runs", default="a,b,c")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--noise-offset", type=int, default=0, help="draw other DP noise")
    p.add_argument("--no-log-file", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    args.settings = front_end_from_args(args)
    shard = dataset.shard_at(args.settings.image_size)
    t0 = time.monotonic()
    feats = features(args.settings, args.views)
    print(f"features {feats.shape} ready in {time.monotonic() - t0:.0f}s", flush=True)
    for seed in (int(s) for s in args.seeds.split(",")):
        split = dataset.make_split(seed)
        shifted = shifted_features(args.settings, split.holdout)
        for run in args.runs.split(","):
            r = run_one(args, run, seed, feats, shifted, split, shard, args.settings.output_shape)
            for how in ("last", "mean5"):
                print(summary_line(r, how), flush=True)
            print("   per round:", r["acc_per_round"], "sigma", r["sigma"], flush=True)
            if not args.no_log_file:
                with RESULTS.open("a") as f:
                    f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
