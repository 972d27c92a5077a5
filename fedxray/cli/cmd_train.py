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
    nproc_option,
    output_option,
    relaunch,
)
from fedxray.cli.render import FEATURES_LABEL, epoch_of
from fedxray.errors import FedxrayError
from fedxray.fsio import check_readable, shown
from fedxray.plan import load_plan
from fedxray.steps.privacy import PrivacyReport, privacy_report
from fedxray.training.accounting import epsilon_left_text, epsilon_text

EXAMPLES = {
    "train-local": [
        (
            "Train round 3 at hospital-a",
            "fedxray train-local round-0003.model --data hospital-a.shard --plan pneumo.plan "
            "--key hospital-a.key -o hospital-a-round-0003.update",
        ),
    ],
    "privacy": [
        ("Show what hospital-a has spent", "fedxray privacy hospital-a.ledger"),
        ("Set the site's own budget", "fedxray privacy hospital-a.ledger --set-budget 6"),
        (
            "Bring in a ledger of fedxray 0.x",
            "fedxray privacy hospital-a.ledger --import hospital-a-pneumo.ledger",
        ),
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
        typer.Option(
            "--ledger",
            help="Privacy ledger. Default: SITE.ledger beside KEY (one for every federation).",
        ),
    ] = None,
    device: DeviceOpt = "cpu",
    no_dp: Annotated[
        bool,
        typer.Option("--no-dp", help="Train without DP (baselines only; the plan must allow it)."),
    ] = False,
    max_epsilon: Annotated[
        float | None,
        typer.Option("--max-epsilon", help="A stricter cap for this federation than the plan's."),
    ] = None,
    new_ledger: Annotated[
        bool,
        typer.Option(
            "--new-ledger",
            help="Knowingly start a new ledger (or adopt this one) although the site's records "
            "show earlier training: that spending is forgotten.",
        ),
    ] = False,
    seed: Annotated[
        int | None,
        typer.Option(
            "--seed",
            help="Reproducible experiments only: a seed on the command line is visible to "
            "others and makes the noise recomputable.",
        ),
    ] = None,
    nproc: nproc_option("Train") = 1,
) -> None:
    """Train this site's round on its shard, with differential privacy, and sign the update.

    Verifies the global model (coordinator's signature, federation, round), checks the privacy
    budget BEFORE training (exit 4 when this round would take the federation's epsilon past
    the plan's, or the site's total over all federations past the site's budget; nothing is
    trained or written), records every epoch and the seed of its randomness in the site's
    privacy ledger before it runs, and writes the update (mode 0600): the weight difference,
    the number of examples and patients, and the privacy spent. The update stays at the site:
    `fedxray mask` turns it into the file that travels. After a crash, running the same
    command again resumes from the last finished epoch and replays an unfinished one with its
    recorded seed, so nothing is counted twice (it says so); run again for a lost update, it
    gives the same bytes. Ctrl-C prints the epsilon the ledger records for the federation so
    far (every epoch begun counts). A missing or different ledger is refused (exit 5) when
    the site has trained before.

    With --nproc N (or under torchrun --nproc-per-node N -m fedxray) N processes share each
    step: the same Poisson sample, each process clips its share of the patients, the clipped
    sums are added up and the noise is added once, so the update and the privacy spent are
    those of one process. Process 0 alone reads and writes the ledger, checkpoints and
    update. When a process dies or hangs, all stop (exit 6); running the command again
    resumes from the last finished epoch (docs/scaling.md).

    Warns when the shard has fewer than 50 patients: then a class has about 17 patients or
    fewer, and under DP each epoch is a single step over the whole shard with more than
    twice the noise of a large site at the same epsilon (docs/data.md).
    """
    from fedxray.steps.train_local import SEED_WARNING, check_processes, train_file

    check_processes(run.party.plan, not no_dp, nproc)
    if nproc > 1:  # here, before the processes start: their own errors would be cut short
        check_readable(model, "global model")
        check_readable(data, "shard")
    relaunch(nproc)
    notes = [SEED_WARNING] if seed is not None else []
    for note in notes:
        run.ui.info(f"warning: {note}")
    epochs = run.party.plan.settings.training.local_epochs
    try:
        with run.ui.progress(unit="steps") as bar:
            task = bar.add_task("checking the model, the shard and the ledger", total=None)
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
                new_ledger=new_ledger,
                progress=lambda done, total: bar.update(
                    task,
                    completed=done,
                    total=total,
                    description=_epoch(done, total, epochs),
                    unit="steps",
                ),
                features_progress=lambda done, total: bar.update(
                    task,
                    completed=done,
                    total=total,
                    description=f"{FEATURES_LABEL} (first round only)",
                    unit="images",
                ),
            )
    except KeyboardInterrupt:
        _say_spent(run, ledger)
        raise
    if local is None:  # a rank other than 0 under torchrun: rank 0 reports
        return
    summary = {"update": str(local.path), "ledger": str(local.ledger), **local.summary()}
    summary["warnings"] = [*notes, *summary["warnings"]]
    hint = run.next_command("mask", local.path)
    run.done(summary, lambda: _render_round(run.ui, summary, local, run.party, hint))


def _epoch(done: int, total: int, epochs: int) -> str:
    """The progress bar's label: which epoch of the round the step is in."""
    return f"training, epoch {epoch_of(done, total, epochs)} of {epochs}"


def _say_spent(run: Run, ledger: Path | None) -> None:
    """On Ctrl-C: what the ledger says this federation has spent, epochs begun included, and
    that the same command resumes."""
    from fedxray.steps.train_local import default_ledger_path

    path = ledger or default_ledger_path(run.party.key_path)
    plan = run.party.plan
    try:
        report = privacy_report(path, plan)
    except (FedxrayError, OSError):
        return  # interrupted before the ledger existed: nothing was spent
    spent = report.federations[0].epsilon if report.federations else 0.0
    run.ui.info(
        f"interrupted: federation {plan.name} has spent epsilon {epsilon_text(spent)} of "
        f"{plan.settings.dp.epsilon:g} at this site so far (every epoch begun counts); "
        "run the same command again to resume: finished epochs are not trained or counted "
        "twice"
    )


def _render_round(ui: Ui, summary: dict, local, me: Party, hint: str) -> None:
    for w in local.summary()["warnings"]:
        ui.info(f"warning: {w}")
    eps, total = summary["epsilon"], summary["site_epsilon"]
    privacy = "none (--no-dp)"
    if summary["dp"]:
        privacy = (
            f"epsilon {epsilon_text(eps)} of {me.plan.settings.dp.epsilon:g} spent so far "
            f"(delta {summary['delta']:g}, per {summary['unit']})"
        )
    losses = ", ".join(f"{v:.4f}" for v in summary["losses"])
    if summary["centring"]:  # round 1 of a centring plan trains nothing: no loss to show
        losses = "none: this round releases the mean feature (centring)"
    rows = {
        "examples / patients": f"{summary['examples']} / {summary['patients']}",
        "loss per epoch": losses,
        "privacy": privacy,
        "site total": "inf (no DP)"
        if total is None
        else f"epsilon {epsilon_text(total)}, all federations",
        "seconds": summary["seconds"],
    }
    resumed = _resumed(summary)
    if resumed:
        rows["resumed"] = resumed
        ui.info(f"resumed round {local.round}: {resumed}")
    ui.kv(f"round {local.round} at {me.identity.name}", rows)
    ui.info(f"wrote {shown(local.path)} (it stays here)")
    ui.info(f"next: {hint}")


def _resumed(summary: dict) -> str | None:
    """What a rerun took over from the interrupted one (None for a fresh round)."""
    start, replayed = summary["resumed_from_epoch"], summary["replayed_epochs"]
    if not start and not replayed:
        return None
    if start >= len(summary["losses"]) and not replayed:
        return "the round was already trained: its update was made again from the checkpoint"
    text = f"went on from epoch {start + 1}" if start else "started again at epoch 1"
    if replayed:
        text += f"; {replayed} unfinished epoch(s) replayed with their recorded seeds"
    return text + ": nothing was counted twice"


@command()
def privacy(
    run: Run,
    ledger: argument("LEDGER", "A site's privacy ledger (SITE.ledger)."),
    plan: PlanOpt = None,
    set_budget: Annotated[
        float | None,
        typer.Option(
            "--set-budget",
            metavar="EPSILON",
            help="Set the site's own cap on its total epsilon over all federations.",
        ),
    ] = None,
    budget_delta: Annotated[
        float | None,
        typer.Option("--budget-delta", help="The delta of the site's budget and total."),
    ] = None,
    imports: Annotated[
        list[Path] | None,
        typer.Option(
            "--import",
            metavar="OLD_LEDGER",
            help="Add the spending of an older ledger (e.g. SITE-PLAN.ledger); repeatable.",
        ),
    ] = None,
) -> None:
    """Show the privacy a site has spent: per federation and round, the total over every
    federation (at the site's delta), the site's budget and what remains.

    With --plan (or $FEDXRAY_PLAN), only that federation's rounds; the total stays the
    site's. The budget is the site's decision: it starts at the first federation's target and
    only --set-budget changes it. The ledger never leaves the site.
    """
    report = privacy_report(
        ledger,
        load_plan(plan) if plan is not None else None,
        set_budget=set_budget,
        budget_delta=budget_delta,
        imports=imports or [],
    )
    run.done(report.to_dict(), lambda: _render_privacy(run.ui, report))


def _render_privacy(ui: Ui, report: PrivacyReport) -> None:
    for line in report.changes:
        ui.info(line)
    for w in report.warnings:
        ui.info(f"warning: {w}")
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
    doc = report.to_dict()
    site_rows = [
        (f.name or f.federation[:12], _epsilon(f.to_dict()["epsilon"]), _target(f.budget_epsilon))
        for f in report.federations
    ]
    delta = "" if report.site_delta is None else f" at delta {report.site_delta:g}"
    site_rows.append((f"site total{delta}", _epsilon(doc["total_epsilon"]), _budget(report)))
    if report.budget is not None:
        left = epsilon_left_text(report.budget.epsilon, report.total_epsilon)
        site_rows.append(("remaining", left, ""))
    ui.table(
        f"site ledger {report.ledger.name} (id {report.ledger_id[:8]})",
        site_rows,
        ("federation", "epsilon", "budget"),
    )


def _epsilon(x: float | None) -> str:
    return epsilon_text(x, "inf (no DP)")


def _target(x: float | None) -> str:
    return "" if x is None else f"{x:g}"


def _budget(report: PrivacyReport) -> str:
    b = report.budget
    if b is None:
        return "not set"
    source = "set by the site" if b.source == "site" else f"from the {b.source}"
    return f"{b.epsilon:g} ({source})"


def register(app: typer.Typer) -> None:
    app.command("train-local")(train_local)
    app.command("privacy")(privacy)
