"""simulate: a whole federation on this machine, through the same files as a real one."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from fedxray.cli.common import PLAN_OPTIONS, DeviceOpt, Run, Ui, command
from fedxray.cli.render import render_audit_alert, render_report
from fedxray.errors import FedxrayError
from fedxray.simulation.runner import Simulation, SimulationConfig

# The simulation's defaults: the plan's, except where tuned for the bundled sample data.
DEFAULTS = {f.name: f.default for f in dataclasses.fields(SimulationConfig)}
SIMULATE_OPTIONS = (
    "rounds", "local_epochs", "strict", "model", "image_size", "batch_size", "lr", "epsilon",
    "min_sites", "server_opt", "full_batch", "centering",
)  # fmt: skip

EXAMPLES = {
    "simulate": [
        (
            "The sample federation (3 hospitals, DP and secure aggregation)",
            "fedxray simulate -o run1",
        ),
        (
            "hospital-b drops out of round 2, strict mode",
            "fedxray simulate -o run2 --strict --drop hospital-b@2",
        ),
        (
            "Audit the final model with 40 canary patients at hospital-a (one run)",
            "fedxray simulate -o run4 --audit-canaries 40",
        ),
        (
            "Your own images split across 4 sites with class skew",
            "fedxray simulate --data ~/xrays --sites 4 --skew 0.5 -o run3",
        ),
    ]
}


def _parse_drops(values: list[str]) -> dict[int, set[str]]:
    drops: dict[int, set[str]] = {}
    for v in values:
        site, sep, rnd = v.rpartition("@")
        if not sep or not site or not rnd.isdigit() or int(rnd) < 1:
            raise FedxrayError(f"--drop {v!r}: expected SITE@ROUND, e.g. hospital-b@2")
        drops.setdefault(int(rnd), set()).add(site)
    return drops


def _metric(m: dict, name: str) -> str:
    v = m.get("metrics", {}).get(name, {})
    value = v.get("value") if isinstance(v, dict) else v
    return "-" if value is None else f"{value:.3f}"


@command(
    plan_options={name: PLAN_OPTIONS[name] for name in SIMULATE_OPTIONS},
    plan_defaults=DEFAULTS,
)
def simulate(
    run: Run,
    output: Annotated[Path, typer.Option("--output", "-o", help="Run folder (must be new).")],
    data: Annotated[
        Path | None,
        typer.Option("--data", help="Images to use. Default: the bundled sample_data/."),
    ] = None,
    sites: Annotated[
        int | None, typer.Option("--sites", help="Number of sites (for --data).")
    ] = None,
    plan_options: dict | None = None,  # the plan settings, by the decorator
    dp: Annotated[bool, typer.Option("--dp/--no-dp", help="Differential privacy.")] = True,
    drop: Annotated[
        list[str] | None,
        typer.Option("--drop", metavar="SITE@ROUND", help="Drop SITE from ROUND (repeatable)."),
    ] = None,
    skew: Annotated[
        float | None,
        typer.Option("--skew", metavar="ALPHA", help="Dirichlet class skew across sites."),
    ] = None,
    bootstrap: Annotated[
        int, typer.Option("--bootstrap", help="Bootstrap resamples of the final report.")
    ] = 1000,
    seed: Annotated[
        int | None,
        typer.Option(
            "--seed",
            help="Seed for data split and training (default 0); given, it also draws the canaries.",
            show_default=False,
        ),
    ] = None,
    audit_canaries: Annotated[
        int,
        typer.Option(
            "--audit-canaries",
            min=0,
            metavar="K",
            help="Plant K canary patients (wrong labels, each trained on or not by a fair coin) "
            "at the first site, and audit the final model with them there.",
        ),
    ] = 0,
    workers: Annotated[
        int | None, typer.Option("--workers", help="Decoding processes (default: all cores).")
    ] = None,
    device: DeviceOpt = "cpu",
    init_weights: Annotated[
        Path | None,
        typer.Option(
            "--init",
            help="Pretrained weights, as for fedxray init (for resnet18-frozen / "
            "densenet121-frozen: torchvision's state dict).",
        ),
    ] = None,
) -> None:
    """Run a whole federation on this machine: every site, the coordinator and the courier.

    Each party gets a folder in the run folder (its key, shard, ledger, updates); a courier
    step copies only the files that travel in a real federation and logs every trip in
    courier.log. Prints, per round, each site's loss and privacy spent, the time spent in
    training, mask, aggregate and unmask, and the global model's metrics on held-out data;
    ends with the evaluation report (also in RUNDIR/report.json).

    With --audit-canaries K, K patients of the first site become canaries: all their images
    get a wrong label, and each is trained on or left out by a fair coin from the operating
    system's entropy (from --seed when given). After the last round that site audits the
    final model with them (Steinke, Nasr & Jagielski 2023: privacy auditing with one training
    run) and the report shows the epsilon the audit proves (a lower bound, 95%) next to the
    epsilon the site's ledger says it spent. The canaries' images and coins stay in that
    site's folder; the courier never carries them.
    """
    cfg = SimulationConfig(
        out=output,
        data=data,
        sites=sites,
        dp=dp,
        drops=_parse_drops(drop or []),
        skew=skew,
        seed=0 if seed is None else seed,
        bootstrap=bootstrap,
        workers=workers,
        device=device,
        audit_canaries=audit_canaries,
        canary_seed=seed,
        init_weights=init_weights,
        **plan_options,
    )

    def on_event(kind: str, info: dict) -> None:
        if kind == "site":
            run.ui.info(f"{info['site']}: {info['images']} images, {info['patients']} patients")
        elif kind == "canaries":
            run.ui.info(
                f"{info['site']}: {info['canaries']} canary patients planted, "
                f"{info['included']} trained on (coins: {info['coins']}); their record stays "
                "in the site's folder"
            )
        elif kind == "init":
            run.ui.info(f"federation ready: {', '.join(info['sites'])}")
        elif kind == "round":
            rows = []
            for name, s in info["sites"].items():
                eps = "-" if s["epsilon"] is None else f"{s['epsilon']:.2f}"
                state = "dropped" if s.get("dropped") else f"{s['seconds']:.1f}s"
                rows.append((name, f"{s['loss']:.4f}", eps, state))
            sec = info["seconds"]
            run.ui.table(
                f"round {info['round']}",
                rows,
                ("site", "loss", "epsilon", "train"),
            )
            run.ui.info(
                f"  mask {sec['mask']:.2f}s  aggregate {sec['aggregate']:.2f}s  "
                f"reveal {sec['reveal']:.2f}s  unmask {sec['unmask']:.2f}s  "
                f"courier {info['courier_bytes'] / 1e6:.1f} MB  |  held-out: "
                f"acc {_metric(info['metrics'], 'accuracy')}  "
                f"macro AUC {_metric(info['metrics'], 'macro_roc_auc')}  "
                f"MCC {_metric(info['metrics'], 'mcc')}"
            )

    result = Simulation(cfg, on_event).run()

    def render() -> None:
        render_report(run.ui, result["final_evaluation"], "final model on the held-out data")
        if result["canary_audit"] is not None:
            _render_canary_audit(run.ui, result["canary_audit"])
        run.ui.info(f"every file of the run is in {output}; report: {output / 'report.json'}")

    run.done(result, render)


def _render_canary_audit(ui: Ui, doc: dict) -> None:
    acc = doc["accountant"]
    spent = "infinite: trained without DP" if acc["epsilon"] is None else f"{acc['epsilon']:.2f}"
    ui.table(
        f"canary audit of {doc['model']} at {doc['site']} (one training run)",
        [
            ("canaries", f"{doc['canaries']}, {doc['included']} trained on"),
            ("guesses", f"{doc['correct']} of {doc['guesses']} right"),
            (
                f"epsilon, lower bound ({100 * doc['confidence']:g}%)",
                f"{doc['epsilon_lower']:.2f}  (at most {doc['max_possible']:.2f} with "
                f"{doc['canaries']} canaries)",
            ),
            ("epsilon, accountant", f"{spent}  (spent by {doc['site']}, its ledger)"),
        ],
    )
    render_audit_alert(ui, doc)


def register(app: typer.Typer) -> None:
    app.command("simulate")(simulate)
