"""Non-private ceiling of a front end: converged L2 logistic regression on its features.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/research/ceiling.py \
        --size 64 --J 3 --pool 4 --seeds 0,1,2,3

The same per-example normalisation as the linear head (GroupNorm, unit norm), trained on all
training patients to convergence (L-BFGS, sklearn's C = 10, i.e. weak L2) and scored on the
patient hold-out. It shows what the features allow before any optimisation budget or DP
noise; the recipe's own non-private run (a) is stopped after the recipe's steps.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import dataset
import numpy as np
import torch
from experiment import add_front_end_args, features, front_end_from_args, scores
from heads import LinearHead

OUT = Path(__file__).resolve().parent / "ceilings.jsonl"


def main(argv=None):
    from sklearn.linear_model import LogisticRegression

    p = argparse.ArgumentParser()
    add_front_end_args(p)
    p.add_argument("--C", type=float, default=10.0)
    p.add_argument("--seeds", default="0,1")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    s = front_end_from_args(a)
    feats = features(s, 0)[0]
    head = LinearHead(s.output_shape)
    with torch.no_grad():
        z = torch.cat(
            [
                head.embed(torch.from_numpy(feats[i : i + 512].astype(np.float32)))
                for i in range(0, len(feats), 512)
            ]
        ).numpy()
    shard = dataset.shard_at(a.size)
    for seed in (int(x) for x in a.seeds.split(",")):
        split = dataset.make_split(seed)
        started = time.monotonic()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = LogisticRegression(C=a.C, max_iter=3000).fit(
                z[split.train], shard.labels[split.train]
            )
        probs = model.predict_proba(z[split.holdout])
        y = shard.labels[split.holdout].astype(np.int64)
        m = scores(y, probs, shard.classes, shard.patients[split.holdout])
        row = {"front": s.key(), "seed": seed, "C": a.C, "dim": int(z.shape[1])} | m
        row["seconds"] = round(time.monotonic() - started, 1)
        print(json.dumps(row), flush=True)
        with OUT.open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
