"""The recommended recipe's numbers: every logged run with exactly its settings, by run.

    .venv/bin/python benchmarks/research/recipe_numbers.py [RELEASE [128|64]]

Selects rows of results.jsonl by their settings (not by tag), so repeated runs under other
tags count too, and prints (a), (b), (c) per (split seed, noise draw) and their means, next
to the converged non-private ceiling of the same features (ceilings.jsonl).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from dataclasses import fields
from pathlib import Path

import numpy as np
from federation import Recipe
from recipe import FRONT, FRONT_64, HEAD, RECIPE
from scatter import ScatterSettings

HERE = Path(__file__).resolve().parent
KEYS = ("accuracy", "macro_roc_auc", "binary_roc_auc", "mcc", "rw_accuracy", "rw_mcc")


def settings_of(r: dict) -> tuple[ScatterSettings, Recipe] | None:
    """A logged run's front end and recipe; fields added later take their defaults, and a run
    with an option that no longer exists (set to anything but off) matches nothing."""
    known = {f.name for f in fields(Recipe)}
    if any(v for k, v in r["recipe"].items() if k not in known):
        return None
    recipe = Recipe(**{k: v for k, v in r["recipe"].items() if k in known})
    return ScatterSettings(**r["front"]), recipe


def matches(r: dict, front: ScatterSettings = FRONT) -> bool:
    got = settings_of(r)
    return (
        got == (front, RECIPE)
        and r["head"] == HEAD
        and r["views"] == 0
        and not r.get("one_image_per_patient", False)
        and r["class_weights"] is None
        and r["prior_ratio"] is None
    )


def shift_means(m: dict) -> tuple[float, float]:
    accs = [v["accuracy"] for v in m["shift"].values()]
    return float(np.mean(accs)), float(min(accs))


def main(release: str = "last", which: str = "128") -> None:
    front = FRONT if which == "128" else FRONT_64
    rows = [json.loads(x) for x in (HERE / "results.jsonl").read_text().splitlines()]
    runs: dict[str, dict] = defaultdict(dict)
    for r in (r for r in rows if matches(r, front)):
        runs[r["run"]][(r["seed"], r.get("noise_offset", 0))] = r  # later duplicates win
    ceil = defaultdict(list)
    for line in (HERE / "ceilings.jsonl").read_text().splitlines():
        c = json.loads(line)
        if c["front"] == front.key() and c["C"] == 10.0:
            ceil[c["seed"]] = c
    print(f"front end {front.key()}, release: {release}")
    print("run  seed noise   acc   mAUC   bAUC    MCC  rwAcc  rwMCC  shiftAcc worst  s/site/round")
    for run in ("a", "b", "c"):
        table = runs[run]
        for (seed, noise), r in sorted(table.items()):
            m = r[release]
            sm, sw = shift_means(m)
            vals = " ".join(f"{m[k]:.3f}" if k != "binary_roc_auc" else f"{m[k]:.4f}" for k in KEYS)
            print(
                f"{run}    {seed}    {noise}     {vals}  {sm:.3f} {sw:.3f}  {r['s_per_site_round']}"
            )
        mean = {k: np.mean([r[release][k] for r in table.values()]) for k in KEYS}
        sh = np.mean([shift_means(r[release]) for r in table.values()], axis=0)
        by_seed = defaultdict(list)
        for (seed, _), r in table.items():
            by_seed[seed].append(r[release]["accuracy"])
        print(
            f"{run} MEAN of {len(table)} runs: "
            + " ".join(f"{k} {v:.4f}" for k, v in mean.items())
            + f" shift {sh[0]:.3f}/{sh[1]:.3f}; acc by seed "
            + ", ".join(f"{s}: {np.mean(v):.3f}" for s, v in sorted(by_seed.items()))
            + (f"; sigma {next(iter(table.values()))['sigma']}" if run == "c" else "")
        )
    print("per shift (acc / binary AUC / MCC), mean over the runs above:")
    for run in ("a", "c"):
        table = list(runs[run].values())
        for k in table[0][release]["shift"]:
            vals = [
                np.mean([r[release]["shift"][k][m] for r in table])
                for m in ("accuracy", "binary_roc_auc", "mcc")
            ]
            print(f"  {run} {k:<12} {vals[0]:.3f} / {vals[1]:.4f} / {vals[2]:.3f}")
    if ceil:
        seeds = sorted(ceil)
        print(
            "converged non-private ceiling (L-BFGS), seeds "
            + ",".join(map(str, seeds))
            + ": "
            + " ".join(f"{k} {np.mean([ceil[s][k] for s in seeds]):.4f}" for k in KEYS)
        )


if __name__ == "__main__":
    main(*sys.argv[1:])
