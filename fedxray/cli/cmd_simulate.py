"""simulate: a whole federation on this machine, through the same files as a real one."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from fedxray.cli.common import JsonOpt, QuietOpt, start
from fedxray.cli.render import render_report
from fedxray.errors import FedxrayError
from fedxray.simulation.runner import Simulation, SimulationConfig

# The simulation's defaults: the plan's, except where tuned for the bundled sample data.
DEFAULTS = {f.name: f.default for f in dataclasses.fields(SimulationConfig)}

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


def simulate(
    output: Annotated[Path, typer.Option("--output", "-o", help="Run folder (must be new).")],
    data: Annotated[
        Path | None,
        typer.Option("--data", help="Images to use. Default: the bundled sample_data/."),
    ] = None,
    sites: Annotated[
        int | None, typer.Option("--sites", help="Number of sites (for --data).")
    ] = None,
    rounds: Annotated[int, typer.Option("--rounds", help="Federated rounds.")] = DEFAULTS["rounds"],
    local_epochs: Annotated[
        int, typer.Option("--local-epochs", help="Epochs per round.")
    ] = DEFAULTS["local_epochs"],
    dp: Annotated[bool, typer.Option("--dp/--no-dp", help="Differential privacy.")] = True,
    strict: Annotated[bool, typer.Option("--strict", help="Double masking.")] = DEFAULTS["strict"],
    drop: Annotated[
        list[str] | None,
        typer.Option("--drop", metavar="SITE@ROUND", help="Drop SITE from ROUND (repeatable)."),
    ] = None,
    skew: Annotated[
        float | None,
        typer.Option("--skew", metavar="ALPHA", help="Dirichlet class skew across sites."),
    ] = None,
    model: Annotated[
        str, typer.Option("--model", help="Model: smallcnn, tinycnn or resnet18.")
    ] = DEFAULTS["model"],
    image_size: Annotated[int, typer.Option("--image-size", help="Input size.")] = DEFAULTS[
        "image_size"
    ],
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Expected batch size (DP: Poisson).")
    ] = DEFAULTS["batch_size"],
    lr: Annotated[float, typer.Option("--lr", help="Local learning rate.")] = DEFAULTS["lr"],
    epsilon: Annotated[
        float, typer.Option("--epsilon", help="Privacy budget per site.")
    ] = DEFAULTS["epsilon"],
    min_sites: Annotated[
        int, typer.Option("--min-sites", help="Fewest sites per round.")
    ] = DEFAULTS["min_sites"],
    server_opt: Annotated[
        str, typer.Option("--server-opt", help="fedavg, momentum or fedadam.")
    ] = DEFAULTS["server_opt"],
    bootstrap: Annotated[
        int, typer.Option("--bootstrap", help="Bootstrap resamples of the final report.")
    ] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Seed for data split and training.")] = 0,
    workers: Annotated[
        int | None, typer.Option("--workers", help="Decoding processes (default: all cores).")
    ] = None,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda.")] = "cpu",
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Run a whole federation on this machine: every site, the coordinator and the courier.

    Each party gets a folder in the run folder (its key, shard, ledger, updates); a courier
    step copies only the files that travel in a real federation and logs every trip in
    courier.log. Prints, per round, each site's loss and privacy spent, the time spent in
    training, mask, aggregate and unmask, and the global model's metrics on held-out data;
    ends with the evaluation report (also in RUNDIR/report.json).
    """
    ui = start(quiet, json_out)
    cfg = SimulationConfig(
        out=output,
        data=data,
        sites=sites,
        rounds=rounds,
        local_epochs=local_epochs,
        dp=dp,
        strict=strict,
        drops=_parse_drops(drop or []),
        skew=skew,
        seed=seed,
        model=model,
        image_size=image_size,
        batch_size=batch_size,
        lr=lr,
        epsilon=epsilon,
        min_sites=min_sites,
        server_opt=server_opt,
        bootstrap=bootstrap,
        workers=workers,
        device=device,
    )

    def on_event(kind: str, info: dict) -> None:
        if kind == "site":
            ui.info(f"{info['site']}: {info['images']} images, {info['patients']} patients")
        elif kind == "init":
            ui.info(f"federation ready: {', '.join(info['sites'])}")
        elif kind == "round":
            rows = []
            for name, s in info["sites"].items():
                eps = "-" if s["epsilon"] is None else f"{s['epsilon']:.2f}"
                state = "dropped" if s.get("dropped") else f"{s['seconds']:.1f}s"
                rows.append((name, f"{s['loss']:.4f}", eps, state))
            sec = info["seconds"]
            ui.table(
                f"round {info['round']}",
                rows,
                ("site", "loss", "epsilon", "train"),
            )
            ui.info(
                f"  mask {sec['mask']:.2f}s  aggregate {sec['aggregate']:.2f}s  "
                f"reveal {sec['reveal']:.2f}s  unmask {sec['unmask']:.2f}s  "
                f"courier {info['courier_bytes'] / 1e6:.1f} MB  |  held-out: "
                f"acc {_metric(info['metrics'], 'accuracy')}  "
                f"macro AUC {_metric(info['metrics'], 'macro_roc_auc')}  "
                f"MCC {_metric(info['metrics'], 'mcc')}"
            )

    result = Simulation(cfg, on_event).run()

    def render() -> None:
        render_report(ui, result["final_evaluation"], "final model on the held-out data")
        ui.info(f"every file of the run is in {output}; report: {output / 'report.json'}")

    ui.done(result, render)


def register(app: typer.Typer) -> None:
    app.command("simulate")(simulate)
