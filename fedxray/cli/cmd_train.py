"""train-local and privacy: a site's differentially private round, and its privacy ledger."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedxray.cli.common import (
    DeviceOpt,
    Party,
    PlanOpt,
    Run,
    Ui,
    argument,
    command,
    output_option,
)
from fedxray.plan import load_plan
from fedxray.steps.privacy import PrivacyReport, privacy_report

EXAMPLES = {
    "train-local": [
        (
            "Train round 3 at hospital-a",
            "fedxray train-local round-0003.model --data hospital-a.shard --plan pneumo.plan "
            "--key hospital-a.key -o hospital-a-round-0003.update",
        ),
    ],
    "privacy": [
        ("Show what hospital-a has spent", "fedxray privacy hospital-a-pneumo.ledger"),
    ],
}


@command(acts_as="site", outputs=("output",))
def train_local(
    run: Run,
    model: argument("MODEL", "The round's global model."),
    data: Annotated[Path, typer.Option("--data", help="This site's shard (from prep).")],
    output: output_option("Update file. Default: SITE-round-NNNN.update beside MODEL.") = None,
    ledger: Annotated[
        Path | None,
        typer.Option("--ledger", help="Privacy ledger. Default: KEY-PLANNAME.ledger beside KEY."),
    ] = None,
    device: DeviceOpt = "cpu",
    no_dp: Annotated[
        bool,
        typer.Option("--no-dp", help="Train without DP (baselines only; the plan must allow it)."),
    ] = False,
    max_epsilon: Annotated[
        float | None,
        typer.Option("--max-epsilon", help="A stricter local privacy cap than the plan's."),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option("--seed", help="Deterministic run (keep it secret under DP)."),
    ] = None,
) -> None:
    """Train this site's round on its shard, with differential privacy, and sign the update.

    Verifies the global model (coordinator's signature, federation, round), checks the privacy
    budget BEFORE training (exit 4 when this round would exceed it; nothing is trained or
    written), records every epoch in the site's privacy ledger before it runs, and writes the
    update: the weight difference, the number of examples and patients, and the privacy spent.
    The update stays at the site: `fedxray mask` turns it into the file that travels. After a
    crash, running the same command again resumes from the last finished epoch.

    Warns when the shard has fewer than 50 patients: then a class has about 17 patients or
    fewer, and under DP each epoch is a single step over the whole shard with more than
    twice the noise of a large site at the same epsilon (docs/data.md).
    """
    from fedxray.steps.train_local import train_file

    with run.ui.progress() as bar:
        task = bar.add_task("training", total=None)
        local = train_file(
            model,
            data,
            run.party,
            output=output,
            ledger=ledger,
            force=run.force,
            dp=not no_dp,
            device=device,
            seed=seed,
            local_epsilon_cap=max_epsilon,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    summary = {"update": str(local.path), "ledger": str(local.ledger), **local.summary()}
    run.done(summary, lambda: _render_round(run.ui, summary, local, run.party))


def _render_round(ui: Ui, summary: dict, local, me: Party) -> None:
    for w in local.result.warnings:
        ui.info(f"warning: {w}")
    eps = summary["epsilon"]
    ui.kv(
        f"round {local.round} at {me.identity.name}",
        {
            "examples / patients": f"{summary['examples']} / {summary['patients']}",
            "loss per epoch": ", ".join(f"{v:.4f}" for v in summary["losses"]),
            "privacy": "none (--no-dp)"
            if not summary["dp"]
            else f"epsilon {eps:.3f} of {me.plan.settings.dp.epsilon:g} spent so far "
            f"(delta {summary['delta']:g}, per {summary['unit']})",
            "seconds": summary["seconds"],
        },
    )
    ui.info(f"wrote {local.path} (stays here; next: fedxray mask {local.path})")


@command()
def privacy(
    run: Run,
    ledger: argument("LEDGER", "A site's privacy ledger."),
    plan: PlanOpt = None,
) -> None:
    """Show the privacy a site has spent, round by round (epsilon at the plan's delta).

    With --plan (or $FEDXRAY_PLAN), only that federation; otherwise every federation the
    ledger records. The ledger never leaves the site.
    """
    report = privacy_report(ledger, load_plan(plan) if plan is not None else None)
    run.done(report.to_dict(), lambda: _render_privacy(run.ui, report))


def _render_privacy(ui: Ui, report: PrivacyReport) -> None:
    if report.plan is not None and not report.federations:
        ui.info(f"the ledger has no spending for federation {report.plan}")
    for fed in report.federations:
        title = f"federation {fed.name or fed.federation[:12]}"
        if fed.delta is not None:
            title += f" (delta {fed.delta:g}, per {fed.unit})"
        rows = fed.to_dict()["rounds"]
        ui.table(
            title,
            [
                (
                    r["round"],
                    r["epochs"],
                    r["steps"],
                    _epsilon(r["epsilon_spent"]),
                    _epsilon(r["epsilon_total"]),
                    "yes" if r["finished"] else "no",
                )
                for r in rows
            ],
            ("round", "epochs", "steps", "epsilon spent", "epsilon total", "finished"),
        )


def _epsilon(x: float | None) -> str:
    return "inf (no DP)" if x is None else f"{x:.3f}"


def register(app: typer.Typer) -> None:
    app.command("train-local")(train_local)
    app.command("privacy")(privacy)
