"""audit: how much a global model leaks about this site's patients (membership inference)."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from fedxray.cli.common import DeviceOpt, PlanOpt, Run, Ui, argument, command
from fedxray.cli.render import render_audit_alert
from fedxray.errors import EXIT_ALERT
from fedxray.training.accounting import epsilon_text

EXAMPLES = {
    "audit": [
        (
            "Prepare the site's images with 20% of its patients held out, train as usual, then "
            "audit the final model against the ledger",
            "fedxray prep /data/xray/train --plan pneumo.plan --key hospital-a.key "
            "--holdout 0.2 && fedxray audit round-0006.model --members hospital-a.shard "
            "--non-members hospital-a.holdout.shard --ledger hospital-a.ledger",
        ),
        (
            "The stronger, slower attack (offline LiRA, 16 reference models), as JSON",
            "fedxray audit round-0006.model --members hospital-a.shard --non-members "
            "hospital-a.holdout.shard --attack lira --reference-models 16 --json "
            "| jq .epsilon_lower_bound.lower",
        ),
    ],
}

_ATTACK_NAMES = {"loss-threshold": "loss threshold", "lira-offline": "offline LiRA"}


class Attack(enum.StrEnum):
    loss = "loss"
    lira = "lira"


@command()
def audit(
    run: Run,
    model: argument("MODEL", "The global model (.model) to audit."),
    members: Annotated[
        Path,
        typer.Option(
            "--members",
            metavar="SHARD",
            help="Patients of this site the model was trained on: its training shard.",
            show_default=False,
        ),
    ],
    non_members: Annotated[
        Path,
        typer.Option(
            "--non-members",
            metavar="SHARD",
            help="Patients of this site the model never saw, e.g. the shard made by "
            "`fedxray prep --holdout`.",
            show_default=False,
        ),
    ],
    plan: PlanOpt = None,
    attack: Annotated[
        Attack,
        typer.Option(
            "--attack",
            help="loss: the loss-threshold attack (fast); lira: offline LiRA, which first "
            "trains reference models here on halves of the non-members (slower).",
        ),
    ] = Attack.loss,
    reference_models: Annotated[
        int,
        typer.Option(
            "--reference-models", min=1, metavar="N", help="Reference models for --attack lira."
        ),
    ] = 8,
    ledger: Annotated[
        Path | None,
        typer.Option(
            "--ledger",
            metavar="LEDGER",
            help="This site's privacy ledger: compare with the epsilon it spent on the model. "
            "Default: the plan's target epsilon.",
            show_default=False,
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            "--seed",
            metavar="N",
            help="Seed of the audit's random halves (and reference models), to repeat an "
            "audit exactly. Default: fresh; the report shows the one used.",
            show_default=False,
        ),
    ] = None,
    device: DeviceOpt = "cpu",
) -> int | None:
    """Audit what a model leaks about this site's patients, next to what DP promises.

    Runs locally, at the site: nothing is written and nothing leaves this machine. The model
    is first verified against its plan (--plan, $FEDXRAY_PLAN, or the *.plan next to the
    model that names its federation). A membership-inference attack scores each patient of
    --members (trained on) and --non-members (never seen) and tries to tell them apart.

    Reports the attack's ROC AUC, its true-positive rate at 0.1%, 1% and 10% false
    positives, and the epsilon that the attack proves at least (a lower bound, 95%
    confidence), next to the accountant's epsilon (an upper bound): what this site spent on
    the model according to --ledger, or else the plan's target. A lower bound above the
    accountant's epsilon means a bug in training or accounting: the report says so, and
    exceeds_accountant is true in --json, and the exit status is 7. A lower bound of 0 does
    not prove a model private; with few patients no audit can show much (the report gives
    the largest bound it could have shown). See docs/privacy.md, "Auditing what a model
    leaks".
    """
    from fedxray.steps.audit import audit_files

    with run.ui.progress(enough_work=attack == Attack.lira) as bar:
        task = bar.add_task("training reference models", total=reference_models)
        res = audit_files(
            model,
            members,
            non_members,
            plan_path=plan,
            ledger=ledger,
            attack=attack.value,
            reference_models=reference_models,
            seed=seed,
            device=device,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    doc = res.to_dict()
    run.done(doc, lambda: _render(run.ui, res))
    return EXIT_ALERT if doc["exceeds_accountant"] else None


def _eps(x: float | None) -> str:
    return epsilon_text(x, "infinite: trained without DP")


def _render(ui: Ui, res) -> None:
    doc = res.to_dict()
    m = res.model
    attack = _ATTACK_NAMES.get(doc["attack"], doc["attack"])
    if doc["reference_models"]:
        attack += f", {doc['reference_models']} reference models"
    bound = doc["epsilon_lower_bound"]
    rows = [
        ("attack", attack),
        ("patients", f"{doc['members']} members, {doc['non_members']} non-members"),
        ("ROC AUC (0.5: a coin)", f"{doc['auc']:.3f}"),
    ]
    for t in doc["tpr_at_fpr"]:
        note = "" if t["resolved"] else "  (too few non-members: read at FPR 0)"
        rows.append((f"TPR at FPR {100 * t['fpr']:g}%", f"{t['tpr']:.3f}{note}"))
    confidence = f"{100 * bound['confidence']:g}%"
    rows += [
        (
            f"epsilon, lower bound ({confidence})",
            f"{bound['lower']:.2f}  (at most {bound['max_possible']:.2f} with these patients)",
        ),
        (
            "epsilon, accountant",
            f"{_eps(res.accountant.epsilon)}  ({res.accountant.describe()})",
        ),
        ("delta", f"{doc['accountant_delta']:g}"),
    ]
    title = f"audit of {Path(m.path).name} (round {m.round} of {m.plan.name}), seed {res.seed}"
    ui.table(escape(title), [(a, escape(b)) for a, b in rows])
    render_audit_alert(ui, doc)
    for w in doc["warnings"]:
        ui.info(escape(f"warning: {w}"))
    ui.info("nothing was written or sent: the audit ran at this site only")


def register(app: typer.Typer) -> None:
    app.command("audit")(audit)
