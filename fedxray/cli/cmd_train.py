"""train-local and privacy: a site's differentially private round, and its privacy ledger."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedxray.cli.common import PLAN_HINT, ForceOpt, JsonOpt, KeyOpt, PlanOpt, QuietOpt, Ui, require

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


def train_local(
    model: Annotated[Path, typer.Argument(metavar="MODEL", help="The round's global model.")],
    data: Annotated[Path, typer.Option("--data", help="This site's shard (from prep).")],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Update file. Default: SITE-round-NNNN.update beside MODEL."
        ),
    ] = None,
    plan: PlanOpt = None,
    key: KeyOpt = None,
    ledger: Annotated[
        Path | None,
        typer.Option("--ledger", help="Privacy ledger. Default: KEY-PLANNAME.ledger beside KEY."),
    ] = None,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda.")] = "cpu",
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
    force: ForceOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train this site's round on its shard, with differential privacy, and sign the update.

    Verifies the global model (coordinator's signature, federation, round), checks the privacy
    budget BEFORE training (exit 4 when this round would exceed it; nothing is trained or
    written), records every epoch in the site's privacy ledger before it runs, and writes the
    update: the weight difference, the number of examples and patients, and the privacy spent.
    The update stays at the site: `fedxray mask` turns it into the file that travels. After a
    crash, running the same command again resumes from the last finished epoch.
    """
    from fedxray.artifact import read_header
    from fedxray.fsio import check_writable, read_input, write_atomic
    from fedxray.keys import load_private_key
    from fedxray.plan import load_plan
    from fedxray.site_training import default_ledger_path, train_local

    ui = Ui(quiet, json_out)
    the_plan = load_plan(require(plan, "plan", PLAN_HINT))
    key_path = require(key, "key", "pass --key SITE.key or set FEDXRAY_KEY")
    ident = load_private_key(key_path)
    the_plan.require_site(ident)
    model_bytes = read_input(model, "global model")
    r = read_header(model_bytes, str(model)).round
    out = output or model.with_name(f"{ident.name}-round-{r:04d}.update")
    check_writable(out, force=force)
    ledger_path = ledger or default_ledger_path(key_path, the_plan)
    ckpt = Path(ledger_path).with_name(f".{ident.name}-checkpoints")
    with ui.progress() as bar:
        task = bar.add_task(f"round {r}", total=None)
        local = train_local(
            model_bytes,
            data,
            the_plan,
            ident,
            ledger_path=ledger_path,
            checkpoint_dir=ckpt,
            dp=not no_dp,
            device=device,
            seed=seed,
            local_epsilon_cap=max_epsilon,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    write_atomic(out, local.update, force=force)
    summary = {"update": str(out), "ledger": str(ledger_path), **local.summary()}
    if json_out:
        ui.emit_json(summary)
        return
    for w in local.result.warnings:
        ui.info(f"warning: {w}")
    eps = summary["epsilon"]
    ui.kv(
        f"round {r} at {ident.name}",
        {
            "examples / patients": f"{summary['examples']} / {summary['patients']}",
            "loss per epoch": ", ".join(f"{v:.4f}" for v in summary["losses"]),
            "privacy": "none (--no-dp)"
            if not summary["dp"]
            else f"epsilon {eps:.3f} of {the_plan.settings.dp.epsilon:g} spent so far "
            f"(delta {summary['delta']:g}, per {summary['unit']})",
            "seconds": summary["seconds"],
        },
    )
    ui.info(f"wrote {out} (stays here; next: fedxray mask {out})")


def privacy(
    ledger: Annotated[Path, typer.Argument(metavar="LEDGER", help="A site's privacy ledger.")],
    plan: PlanOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Show the privacy a site has spent, round by round (epsilon at the plan's delta).

    With --plan (or $FEDXRAY_PLAN), only that federation; otherwise every federation the
    ledger records. The ledger never leaves the site.
    """
    import math

    from fedxray.plan import load_plan
    from fedxray.training.ledger import Ledger, federation_ids

    ui = Ui(quiet, json_out)
    feds = federation_ids(ledger)
    names: dict[str, str] = {}
    budgets: dict[str, float] = {}
    if plan is not None:
        p = load_plan(plan)
        feds = [p.federation_id] if p.federation_id in feds else []
        names[p.federation_id], budgets[p.federation_id] = p.name, p.settings.dp.epsilon
        if not feds:
            ui.info(f"the ledger has no spending for federation {p.name}")
    doc = []
    for fid in feds:
        led = Ledger.load(ledger, fid)

        def num(x):
            return None if x is None or not math.isfinite(x) else round(x, 4)

        rows = [
            {
                "round": r.round,
                "epochs": r.epochs,
                "steps": r.steps,
                "dp": r.dp,
                "epsilon_spent": num(r.epsilon_spent),
                "epsilon_total": num(r.epsilon_total),
                "finished": r.finished,
            }
            for r in led.rounds()
        ]
        entry = {
            "federation": fid,
            "name": names.get(fid),
            "budget_epsilon": budgets.get(fid),
            "delta": led.delta,
            "unit": led.unit,
            "noise_multiplier": led.noise_multiplier,
            "rounds": rows,
        }
        doc.append(entry)
        if not json_out:
            title = f"federation {names.get(fid) or fid[:12]}"
            if led.delta is not None:
                title += f" (delta {led.delta:g}, per {led.unit})"

            def show(x):
                return "inf (no DP)" if x is None else f"{x:.3f}"

            ui.table(
                title,
                [
                    (
                        r["round"],
                        r["epochs"],
                        r["steps"],
                        show(r["epsilon_spent"]),
                        show(r["epsilon_total"]),
                        "yes" if r["finished"] else "no",
                    )
                    for r in rows
                ],
                ("round", "epochs", "steps", "epsilon spent", "epsilon total", "finished"),
            )
    if json_out:
        ui.emit_json({"ledger": str(ledger), "federations": doc})


def register(app: typer.Typer) -> None:
    app.command("train-local")(train_local)
    app.command("privacy")(privacy)
