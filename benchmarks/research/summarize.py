"""Table of results.jsonl: one line per (tag, run, release), averaged over seeds.

.venv/bin/python benchmarks/research/summarize.py [TAG_PREFIX ...] [--release last,mean5]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results.jsonl"


def rows(prefixes, releases, results=RESULTS):
    groups = defaultdict(list)
    for line in results.read_text().splitlines():
        r = json.loads(line)
        if prefixes and not any(r["tag"].startswith(p) for p in prefixes):
            continue
        groups[(r["tag"], r["run"])].append(r)
    for (tag, run), rs in groups.items():
        for how in releases:
            if any(how not in r for r in rs):
                continue
            m = [r[how] for r in rs]

            def mean(key, m=m):
                return float(np.mean([x[key] for x in m]))

            shift = [np.mean([v["accuracy"] for v in x["shift"].values()]) for x in m]
            worst = [min(v["accuracy"] for v in x["shift"].values()) for x in m]
            shift_b = [np.mean([v["binary_roc_auc"] for v in x["shift"].values()]) for x in m]
            yield {
                "tag": tag,
                "setting": describe(rs[0]),
                "run": run,
                "release": how,
                "seeds": ",".join(str(r["seed"]) for r in rs),
                "acc": mean("accuracy"),
                "acc_by_seed": "/".join(f"{x['accuracy']:.3f}" for x in m),
                "macro_auc": mean("macro_roc_auc"),
                "binary_auc": mean("binary_roc_auc"),
                "mcc": mean("mcc"),
                "rw_acc": mean("rw_accuracy"),
                "rw_mcc": mean("rw_mcc"),
                "shift_acc": float(np.mean(shift)),
                "shift_worst": float(np.mean(worst)),
                "shift_bauc": float(np.mean(shift_b)),
                "wall_s": float(np.mean([r["wall_s"] for r in rs])),
                "sigma": rs[0]["sigma"],
            }


def describe(r: dict) -> str:
    """What differs from the recommended recipe (recipe.FRONT / recipe.RECIPE)."""
    from recipe import FRONT, HEAD, RECIPE
    from recipe_numbers import settings_of

    got = settings_of(r)
    if got is None:
        extra = {k: v for k, v in r["recipe"].items() if k not in asdict(RECIPE) and v}
        return f"removed option {extra}"
    front, recipe = got
    out = [f"{k}={v}" for k, v in asdict(front).items() if asdict(FRONT)[k] != v]
    if r["head"] != HEAD:
        out.append(f"head={r['head']}")
    if r["views"]:
        out.append(f"views=1+{r['views']}")
    if r.get("one_image_per_patient"):
        out.append("one image per patient")
    out += [f"{k}={v}" for k, v in asdict(recipe).items() if asdict(RECIPE)[k] != v]
    if r.get("noise_offset"):
        out.append(f"noise draw {r['noise_offset']}")
    return ", ".join(out) or "recommended recipe"


def markdown(table) -> None:
    print(
        "| tag | setting (vs the recipe) | run | release | seeds | acc (per seed) | macro AUC "
        "| binary AUC | MCC | rw acc | rw MCC | shift acc (mean / worst) | shift bAUC | s |"
    )
    print("|---|---|---|---|---|---|---:|---:|---:|---:|---:|---|---:|---:|")
    for r in table:
        print(
            f"| {r['tag']} | {r['setting']} | {r['run']} | {r['release']} | {r['seeds']} "
            f"| {r['acc']:.3f} "
            f"({r['acc_by_seed']}) | {r['macro_auc']:.3f} | {r['binary_auc']:.4f} | "
            f"{r['mcc']:.3f} | {r['rw_acc']:.3f} | {r['rw_mcc']:.3f} | {r['shift_acc']:.3f} / "
            f"{r['shift_worst']:.3f} | {r['shift_bauc']:.4f} | {r['wall_s']:.0f} |"
        )


def ceiling_table(path: Path) -> None:
    """Markdown table of ceilings.jsonl: mean over seeds per front end (last entry wins)."""
    latest: dict = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        latest[(r["front"], r["C"], r["seed"])] = r
    fronts = defaultdict(list)
    for (front, c, _), r in latest.items():
        fronts[(front, c)].append(r)
    print("| front end | features | seeds | acc (per seed) | macro AUC | binary AUC | MCC |")
    print("|---|---:|---|---|---:|---:|---:|")
    for (front, _), rs in fronts.items():
        rs.sort(key=lambda r: r["seed"])
        acc = "/".join(f"{r['accuracy']:.3f}" for r in rs)

        def mean(k, rs=rs):
            return np.mean([r[k] for r in rs])

        print(
            f"| {front} | {rs[0]['dim']} | {','.join(str(r['seed']) for r in rs)} | "
            f"{mean('accuracy'):.3f} ({acc}) | {mean('macro_roc_auc'):.3f} | "
            f"{mean('binary_roc_auc'):.4f} | {mean('mcc'):.3f} |"
        )


def main():
    p = argparse.ArgumentParser()
    p.add_argument("prefix", nargs="*")
    p.add_argument("--release", default="last,mean5")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--ceilings", action="store_true", help="table of ceilings.jsonl")
    a = p.parse_args()
    if a.ceilings:
        ceiling_table(a.results.with_name("ceilings.jsonl"))
        return
    if a.markdown:
        markdown(rows(a.prefix, a.release.split(","), a.results))
        return
    head = (
        f"{'tag':<34} run {'release':<7} seeds {'acc':>6} ({'per seed':<11}) {'mAUC':>6} "
        f"{'bAUC':>6} {'MCC':>6} | {'rwAcc':>6} {'rwMCC':>6} | {'shAcc':>6} {'worst':>6} "
        f"{'shbAUC':>6} | {'wall':>5}"
    )
    print(head)
    for r in rows(a.prefix, a.release.split(","), a.results):
        print(
            f"{r['tag']:<34} {r['run']:<3} {r['release']:<7} {r['seeds']:<5} {r['acc']:.3f} "
            f"({r['acc_by_seed']:<11}) {r['macro_auc']:.3f} {r['binary_auc']:.4f} {r['mcc']:.3f}"
            f" | {r['rw_acc']:.3f} {r['rw_mcc']:.3f} | {r['shift_acc']:.3f} "
            f"{r['shift_worst']:.3f} {r['shift_bauc']:.4f} | {r['wall_s']:5.0f}"
        )


if __name__ == "__main__":
    main()
