"""inspect and verify: look at any fedxray file, and check where it came from."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from fedxray.cli.common import KeyOpt, PlanOpt, Run, Ui, argument, command
from fedxray.fsio import read_input
from fedxray.keys import load_private_key
from fedxray.steps import inspection
from fedxray.training.accounting import epsilon_text

EXAMPLES = {
    "inspect": [
        ("Show a file's header", "fedxray inspect round-0002.model"),
        ("Machine-readable", "fedxray inspect hospital-a.masked --json | jq .round"),
    ],
    "verify": [
        (
            "Check a plan and this site's place in it",
            "fedxray verify pneumo.plan --key hospital-a.key",
        ),
        (
            "Check a model in a script",
            "fedxray verify round-0002.model --plan pneumo.plan || exit 1",
        ),
    ],
}


@command()
def inspect(
    run: Run,
    file: argument("FILE", "Any fedxray file, or - for standard input.", str),
) -> None:
    """Show a file's header: kind, federation, round, sender, parent, checksums.

    The signature is NOT checked here; use `fedxray verify` for that.
    """
    info = inspection.describe(read_input(file), file)

    def render() -> None:
        if info.get("kind") == "ledger":
            _render_ledger(run.ui, file, info)
            return
        rows = {k: _text(v) for k, v in info.items() if k != "meta"}
        rows.update(_privacy_rows(info.get("meta")))
        run.ui.kv(file, rows)
        if info.get("meta"):
            run.ui.info("meta: " + json.dumps(info["meta"], indent=1, default=str)[:4000])

    run.done(info, render)


def _text(value) -> str:
    """A value of a file's summary as a table cell: ``normal 170, viral 150`` for a mapping."""
    if isinstance(value, dict):
        return ", ".join(f"{k} {_text(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(map(_text, value))
    return str(value)


def _eps(value) -> str:
    """An epsilon from a file, as fedxray shows epsilon everywhere (the raw value is in the
    meta and in --json)."""
    return epsilon_text(value) if isinstance(value, int | float) else _text(value)


def _privacy_rows(meta) -> dict:
    """The privacy an update reports, or the sites' in a model's provenance, rounded as
    everywhere else."""
    if not isinstance(meta, dict):
        return {}
    rows = {}
    if "epsilon" in meta:
        rows["epsilon"] = _eps(meta["epsilon"]) if meta.get("dp", True) else "inf (no DP)"
    reported = (meta.get("provenance") or {}).get("epsilon") if isinstance(
        meta.get("provenance"), dict) else None  # fmt: skip
    if isinstance(reported, dict) and reported:
        rows["epsilon reported"] = ", ".join(f"{s} {_eps(v)}" for s, v in reported.items())
    return rows


def _render_ledger(ui: Ui, file: str, info: dict) -> None:
    ui.info(f"{file}: {info['note']}")
    site = {"ledger id": info.get("ledger_id")}
    for part in ("budget", "total"):
        for k, v in (info.get(part) or {}).items():
            site[f"{part} {k}"] = _eps(v) if (part, k) == ("total", "epsilon") else v
    ui.kv("site", site)
    for fed in info["federations"]:
        title = f"federation {fed['federation']}" + (f" ({fed['name']})" if fed.get("name") else "")
        ui.kv(title, {**fed["calibration"],
              "epochs recorded": fed["epochs_recorded"]})  # fmt: skip
        rows = [(r, v.get("epochs"), _eps(v.get("epsilon_after")), v.get("finished"))
                for r, v in fed["rounds"].items()]  # fmt: skip
        ui.table(None, rows, ("round", "epochs", "epsilon after", "finished"))


@command()
def verify(
    run: Run,
    file: argument("FILE", "The file to check, or - for standard input.", str),
    plan: PlanOpt = None,
    kind: Annotated[
        str | None, typer.Option("--kind", help="Expected kind (default: from the file name).")
    ] = None,
    round_number: Annotated[int | None, typer.Option("--round", help="Expected round.")] = None,
    sender: Annotated[str | None, typer.Option("--sender", help="Expected sender.")] = None,
    key: KeyOpt = None,
    fingerprint: Annotated[
        str | None,
        typer.Option("--fingerprint", help="Expected coordinator fingerprint (for a plan)."),
    ] = None,
) -> None:
    """Check a file's signature and provenance against the plan; the exit code is the verdict.

    Exit 0: valid. Exit 3: verification failed (the reason is printed). For a plan, --key checks
    that this site's card is in it; compare the printed coordinator fingerprint by phone.
    """
    plan_data = read_input(plan, "plan") if plan is not None else None
    site_key = load_private_key(key) if key is not None else None
    v = inspection.verify_file(
        read_input(file),
        file,
        plan_data=plan_data,
        kind=kind,
        round_number=round_number,
        sender=sender,
        site_key=site_key,
        fingerprint=fingerprint,
    )

    def render() -> None:
        run.ui.info(f"OK: {v.message}")
        for k, val in v.details.items():
            if isinstance(val, dict):
                run.ui.info(f"  {k}:")
                for name, x in val.items():
                    run.ui.info(f"    {name}: {_text(x)}")
            else:
                run.ui.info(f"  {k}: {_text(val)}")

    run.done(v.to_dict(), render)


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect)
    app.command("verify")(verify)
