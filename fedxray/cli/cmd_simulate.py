"""simulate: a whole federation on this machine, through the same files as a real one."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from fedxray.cli.common import PLAN_OPTIONS, DeviceOpt, Run, Ui, command
from fedxray.cli.render import FEATURES_LABEL, epoch_of, render_audit_alert, render_report
from fedxray.errors import EXIT_ALERT, FedxrayError
from fedxray.simulation.runner import Simulation, SimulationConfig
from fedxray.training.accounting import epsilon_text

# The simulation's defaults: the plan's, except where tuned for the bundled sample data.
DEFAULTS = {f.name: f.default for f in dataclasses.fields(SimulationConfig)}
SIMULATE_OPTIONS = (
    "rounds", "local_epochs", "strict", "model", "image_size", "geometry", "batch_size", "lr",
    "epsilon", "min_sites", "server_opt", "full_batch", "centering", "privacy_unit",
    "class_weights", "augment", "ema", "average_last",
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
            min=0,
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
) -> int | None:
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
    epsilon the site's ledger says it spent; exit status 7 when the lower bound exceeds it.
    The canaries' images and coins stay in that site's folder; the courier never carries
    them.
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

    with _Reporter(run.ui, cfg) as on_event:
        result = Simulation(cfg, on_event).run()

    def render() -> None:
        render_report(run.ui, result["final_evaluation"], "final model on the held-out data")
        if result["canary_audit"] is not None:
            _render_canary_audit(run.ui, result["canary_audit"])
        run.ui.info(f"every file of the run is in {output}; report: {output / 'report.json'}")

    run.done(result, render)
    audit = result["canary_audit"]
    return EXIT_ALERT if audit is not None and audit["exceeds_accountant"] else None


LEGEND = (
    "epsilon: what each site has spent in this federation so far / the plan's budget",
    "MCC: Matthews correlation coefficient on the held-out data (1 perfect, 0 no better than "
    "chance)",
    "courier: the bytes carried between the parties this round (models, masked updates, "
    "closures, reveals: what a real federation exchanges)",
)


class _Reporter:
    """What simulate says while it runs: each site's training as it happens (a progress bar
    with the epoch and the time left on a terminal; a line per site everywhere), and a table
    per round."""

    def __init__(self, ui: Ui, cfg: SimulationConfig):
        self.ui = ui
        self.budget = cfg.epsilon if cfg.dp else None
        self.bar = ui.progress(unit="steps")
        self.task = None
        self.site = None
        self.centring = False  # this round releases the mean feature instead of training
        self.trained: list[float] = []  # this round's sites' training seconds
        self.sites: list[str] = []
        self.epochs = 1  # local epochs of the plan (the round-start event says)
        self.legend = True

    def __enter__(self):
        self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.stop()

    def __call__(self, kind: str, info: dict) -> None:
        handler = getattr(self, "_" + kind.replace("-", "_"), None)
        if handler is not None:
            handler(info)

    def _site(self, info: dict) -> None:
        self.ui.info(f"{info['site']}: {info['images']} images, {info['patients']} patients")

    def _canaries(self, info: dict) -> None:
        self.ui.info(
            f"{info['site']}: {info['canaries']} canary patients planted, "
            f"{info['included']} trained on (coins: {info['coins']}); their record stays "
            "in the site's folder"
        )

    def _init(self, info: dict) -> None:
        self.ui.info(f"federation ready: {', '.join(info['sites'])}")

    def _round_start(self, info: dict) -> None:
        self.sites, self.trained = list(info["sites"]), []
        self.centring = info.get("centring", False)
        what = (
            "release their mean feature with DP noise (centring, no training)"
            if self.centring
            else f"train {info['local_epochs']} epoch(s) each"
        )
        self.epochs = info["local_epochs"]
        self.ui.info(f"round {info['round']} of {info['rounds']}: {len(self.sites)} sites {what}")

    def _site_task(self, info: dict) -> None:
        """The bar of the site whose event this is (a new one when the site changes)."""
        if self.site != info["site"]:
            self.site = info["site"]
            if self.task is not None:
                self.bar.remove_task(self.task)
            self.task = self.bar.add_task(info["site"], total=info["total"])

    def _features(self, info: dict) -> None:
        self._site_task(info)
        self.bar.update(
            self.task, completed=info["done"], total=info["total"], unit="images",
            description=f"round {info['round']}, {info['site']}: {FEATURES_LABEL}",
        )  # fmt: skip

    def _training(self, info: dict) -> None:
        self._site_task(info)
        epoch = epoch_of(info["done"], info["total"], self.epochs)
        self.bar.update(
            self.task, completed=info["done"], total=info["total"], unit="steps",
            description=f"round {info['round']}, {info['site']}: epoch {epoch} of {self.epochs}",
        )  # fmt: skip

    def _site_round(self, info: dict) -> None:
        self.site = None
        if self.task is not None:
            self.bar.remove_task(self.task)
            self.task = None
        self.trained.append(info["seconds"])
        left = len(self.sites) - len(self.trained)
        eps = _epsilon(info["epsilon"], self.budget)
        if self.centring:
            line = f"  {info['site']}: released in {info['seconds']:.1f}s, epsilon {eps}"
        else:
            line = (
                f"  {info['site']}: trained {len(info['losses'])} epoch(s) in "
                f"{info['seconds']:.1f}s, loss {info['loss']:.4f}, epsilon {eps}"
            )
        if info.get("dropped"):
            line += "; drops out: its update is never delivered"
        if left:
            eta = sum(self.trained) / len(self.trained) * left
            work = "releases" if self.centring else "training"
            line += f"; about {eta:.0f}s of {work} left in this round"
        self.ui.info(line)

    def _round(self, info: dict) -> None:
        rows = []
        for name, s in info["sites"].items():
            state = "dropped" if s.get("dropped") else f"{s['seconds']:.1f}s"
            loss = "-" if self.centring else f"{s['loss']:.4f}"
            rows.append((name, loss, _epsilon(s["epsilon"], self.budget), state))
        sec = info["seconds"]
        self.ui.table(f"round {info['round']}", rows, ("site", "loss", "epsilon", "train"))
        self.ui.info(
            f"  mask {sec['mask']:.2f}s  aggregate {sec['aggregate']:.2f}s  "
            f"reveal {sec['reveal']:.2f}s  unmask {sec['unmask']:.2f}s  "
            f"courier {info['courier_bytes'] / 1e6:.1f} MB  |  held-out: "
            f"acc {_metric(info['metrics'], 'accuracy')}  "
            f"macro AUC {_metric(info['metrics'], 'macro_roc_auc')}  "
            f"MCC {_metric(info['metrics'], 'mcc')}"
        )
        if self.legend:
            for line in LEGEND:
                self.ui.info(f"  {line}")
            self.legend = False


def _epsilon(eps: float | None, budget: float | None) -> str:
    """'5.090 / 8': spent of the plan's budget; 'inf (no DP)' without DP."""
    if eps is None:
        return "inf (no DP)"
    return epsilon_text(eps) + ("" if budget is None else f" / {budget:g}")


def _render_canary_audit(ui: Ui, doc: dict) -> None:
    acc = doc["accountant"]
    spent = epsilon_text(acc["epsilon"], "infinite: trained without DP")
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
